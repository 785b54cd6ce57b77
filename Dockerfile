# bids-connectome: fMRIPrep derivatives -> denoised region signals -> connectomes (BIDS-App).
#
#   docker build -t bids-connectome .
#   docker run --rm -v /data/fmriprep:/data:ro -v /data/connectomes:/out bids-connectome /data /out participant
#
# Works read-only and as any user (Apptainer/Singularity): everything the app writes at run time goes to
# OUTPUT_DIR, --work-dir or $TMPDIR (/tmp). See docs/container.md.
#
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (it is not stored in the image):
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt -t bids-connectome .

# ---- base: Debian's Python 3.11 ----
FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log

# ---- build: a venv with the package and its dependencies (binary wheels; no compiler installed) ----
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first (with the dask extra, for --dask-scheduler, and the atlases extra, for
# bids-connectome-atlases fetch), from pyproject.toml alone: editing the code does not
# reinstall numpy & co.
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dask"] + p["optional-dependencies"]["atlases"]))' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY configs/ configs/
COPY bids_app/ bids_app/
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install --no-deps . \
 && pip check \
 && python -m compileall -q /opt/venv/lib \
 && bids-connectome --version \
 && bids-connectome-demo --help >/dev/null \
 && bids-connectome-atlases --help >/dev/null

# Atlases baked into the image (TemplateFlow layout in /opt/templateflow; the image then needs
# no network to use them). Queries and/or configurations, e.g.
#   docker build --build-arg ATLASES="tpl-MNI152NLin2009cAsym_res-02_atlas-Schaefer2018_desc-400Parcels7Networks_dseg" .
#   docker build --build-arg ATLAS_CONFIGS="configs/my.yaml" .   (a configuration in configs/)
# See docs/atlases.md. Default: none.
ARG ATLASES=""
ARG ATLAS_CONFIGS=""
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export SSL_CERT_FILE=/run/secrets/pip_ca; fi \
 && mkdir -p /opt/templateflow \
 && if [ -n "${ATLASES}${ATLAS_CONFIGS}" ]; then \
      set -- ; for q in ${ATLASES}; do set -- "$@" --query "$q"; done; \
      bids-connectome-atlases fetch ${ATLAS_CONFIGS} "$@" --to /opt/templateflow \
      && { [ -z "${ATLAS_CONFIGS}" ] || TEMPLATEFLOW_HOME=/opt/templateflow bids-connectome-atlases list ${ATLAS_CONFIGS}; }; \
    fi \
 && chmod -R a+rX /opt/templateflow

# ---- runtime: base + the venv; no pip cache, no sources, no build tools ----
FROM base
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/templateflow /opt/templateflow

# Any uid, read-only root: nothing is written outside /tmp, OUTPUT_DIR and --work-dir.
ENV PATH=/opt/venv/bin:$PATH \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Last, so that a new version label does not invalidate the layers above.
ARG VERSION=unknown
LABEL org.opencontainers.image.title="bids-connectome" \
      org.opencontainers.image.description="BIDS-App: denoise fMRIPrep BOLD, extract region signals and compute connectomes as BIDS derivatives" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bids-connectome/bids-connectome" \
      org.opencontainers.image.url="https://github.com/bids-connectome/bids-connectome" \
      org.opencontainers.image.documentation="https://github.com/bids-connectome/bids-connectome/blob/main/docs/container.md" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

WORKDIR /tmp

# The app; the synthetic demo dataset builder is `--entrypoint bids-connectome-demo`.
ENTRYPOINT ["bids-connectome"]
CMD ["--help"]

"""Writing outputs: atomic, byte-reproducible writers for TSV, JSON, NumPy and NIfTI files,
and the writer of a run's (or an aggregated unit's) files.

Every file is written to a temporary name in its destination folder and then
renamed over the destination, so a crash never leaves a half-written output. The
temporary name (``.<name>.~<host>-<pid>-<random>.tmp``) says which process wrote it,
so a later run can remove what a killed one left behind (:mod:`bids_app.state`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import naming

if TYPE_CHECKING:
    import pandas as pd

    from .discover import RunInputs
    from .engine import RunContext, RunRecord, UnitRecord

NA = "n/a"
TEMP_MARKER = ".~"
STAGING_PREFIX = ".staging-"  # + <host>-<pid>: a group run's files before they are committed


def host_tag() -> str:
    """This host's name, letters and digits only (part of temporary file names)."""
    return "".join(ch for ch in socket.gethostname() if ch.isalnum()) or "host"


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp_path = dest.with_name(f".{dest.name}{TEMP_MARKER}{tag}.tmp")
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(dest: Path, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: Path, text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


def write_if_changed(dest: Path, content: str | bytes) -> Path:
    """Write ``content`` unless ``dest`` already holds exactly it (dataset-level files that
    several jobs may write at once: the content is the same, so only one rename happens)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        if Path(dest).read_bytes() == data:
            return Path(dest)
    except OSError:
        pass
    return write_bytes(dest, data)


def to_json_text(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(dest: Path, obj: Any) -> Path:
    return write_text(dest, to_json_text(obj))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return None if not np.isfinite(value) else value
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def matrix_text(values: np.ndarray, columns: list[str], float_format: str = "%.10g") -> str:
    """A float array as TSV text: header row of ``columns``, ``n/a`` for NaN."""
    columns = [str(c) for c in columns]
    if any(ch in n for n in columns for ch in '\t\n\r"'):  # names that need CSV quoting
        import pandas as pd

        buf = io.StringIO()
        pd.DataFrame(np.asarray(values, dtype=np.float64), columns=columns).to_csv(
            buf, sep="\t", index=False, na_rep=NA, float_format=float_format, lineterminator="\n"
        )
        return buf.getvalue()
    values = np.asarray(values, dtype=np.float64)
    lines = ["\t".join(columns)]
    if values.shape[1:] == (0,):
        lines += [""] * values.shape[0]
    else:
        row_format = "\t".join([float_format] * values.shape[1])  # one C-level call per row
        # NaN formats as "nan" (no number does): n/a
        lines += [(row_format % tuple(row)).replace("nan", NA) for row in values.tolist()]
    return "\n".join(lines) + "\n"


def tsv_text(frame: pd.DataFrame, float_format: str = "%.10g") -> str:
    """Tab-separated, header row, no index column, missing values as ``n/a``."""
    names = [str(c) for c in frame.columns]
    if len(names) and all(dt.kind == "f" for dt in frame.dtypes):
        return matrix_text(frame.to_numpy(dtype=np.float64), names, float_format)
    buf = io.StringIO()
    frame.to_csv(
        buf, sep="\t", index=False, na_rep=NA, float_format=float_format, lineterminator="\n"
    )
    return buf.getvalue()


def write_tsv(dest: Path, frame: pd.DataFrame, float_format: str = "%.10g") -> Path:
    return write_text(dest, tsv_text(frame, float_format))


def read_tsv(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values=[NA], keep_default_na=False)


def read_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    """A numeric TSV written by :func:`matrix_text`: (column names, float64 values).

    Parsed straight into one array (no DataFrame): the group level reads thousands.
    """
    import warnings

    from .errors import InputDataError

    try:
        header, _, body = Path(path).read_bytes().partition(b"\n")
        columns = header.decode("utf-8").rstrip("\r").split("\t")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(
                io.BytesIO(body.replace(NA.encode(), b"nan")),
                delimiter="\t",
                dtype=np.float64,
                comments=None,
                ndmin=2,
            )
    except (OSError, ValueError, UnicodeDecodeError) as err:
        reason = str(err).split(";")[0]  # numpy's advice on `usecols` is not for our users
        raise InputDataError(f"{path}: cannot read the table: {reason}") from None
    if values.size == 0:
        values = values.reshape(0, len(columns))
    if values.shape[1] != len(columns):
        raise InputDataError(
            f"{path}: cannot read the table: {values.shape[1]} values a row, "
            f"{len(columns)} column names"
        )
    return columns, values


def write_npy(dest: Path, array: np.ndarray) -> Path:
    """``numpy.save`` format, streamed to the temporary file (no copy of the array in memory)."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    return Path(dest)


def nifti_bytes(img: Any, gzipped: bool, compresslevel: int = 6) -> bytes:
    """A nibabel image as file bytes; gzipped with a zero timestamp (reproducible)."""
    raw = img.to_bytes()
    if not gzipped:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(
        fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=compresslevel
    ) as gz:
        gz.write(raw)
    return buf.getvalue()


def write_nifti(dest: Path, img: Any, compresslevel: int = 6) -> Path:
    """Write a nibabel image; ``.nii.gz`` is gzipped with a zero timestamp (reproducible)."""
    return write_bytes(dest, nifti_bytes(img, str(dest).endswith(".gz"), compresslevel))


# --- the run writer -------------------------------------------------------------------------


def input_uris(run: RunInputs, bids_dir: Path) -> list[str]:
    """``bids:fmriprep:<path>`` of the BOLD, its brain mask and its confounds."""
    out = []
    for path in (run.bold, run.mask, run.confounds):
        if path is not None:
            out.append(naming.bids_uri(Path(path).relative_to(bids_dir), naming.INPUT_DATASET))
    return out


def _relmat_files(
    out: Path,
    entities: dict[str, str],
    atlas: str,
    regions: list[str],
    matrices: dict[tuple[str, str], np.ndarray],
    ctx: RunContext,
    sources: list[str],
    volumes: int,
    aggregate: dict[str, Any] | None = None,
) -> list[Path]:
    several = len(ctx.config.connectivity.estimator) > 1
    files = []
    for (measure, estimator), matrix in matrices.items():
        path = naming.participant_path(
            out,
            entities,
            "relmat",
            ".tsv",
            atlas=atlas,
            meas=naming.measure_label(measure, estimator, several),
            desc=ctx.desc,
        )
        files.append(write_text(path, matrix_text(matrix, regions)))
        sidecar = naming.relmat_sidecar(
            measure=measure,
            estimator=estimator,
            atlas=atlas,
            sources=sources,
            volumes=volumes,
            config_hash=ctx.config_hash,
            aggregate=aggregate,
        )
        files.append(write_json(path.with_suffix(".json"), sidecar))
    return files


def _cifti_files(ts_path: Path, atlas: Any, t_r: float, ctx: RunContext) -> list[Path]:
    """``*_timeseries.ptseries.nii`` and ``*_relmat.pconn.nii`` (CIFTI-2, read by Workbench)."""
    from .extract.cifti_io import pconn_bytes, ptseries_bytes

    files = [
        write_bytes(
            ts_path.with_name(ts_path.name.replace(".tsv", ".ptseries.nii")),
            ptseries_bytes(atlas.cleaned, atlas.parcels, step=t_r),
        )
    ]
    several = len(ctx.config.connectivity.estimator) > 1
    for (measure, estimator), matrix in atlas.matrices.items():
        name = naming.build_name(
            {
                **naming.parse_name(ts_path.name)[0],
                "meas": naming.measure_label(measure, estimator, several),
            },
            "relmat",
            ".pconn.nii",
        )
        files.append(write_bytes(ts_path.with_name(name), pconn_bytes(matrix, atlas.parcels)))
    return files


def write_run(record: RunRecord, run: RunInputs, ctx: RunContext) -> list[Path]:
    """Write every file of one run (each atomically); returns the files written."""
    out, desc, ents = ctx.output_dir, ctx.desc, record.entities
    sources = input_uris(run, ctx.bids_dir)
    files: list[Path] = []
    for atlas in record.atlases:
        ts_path = naming.participant_path(
            out, ents, "timeseries", ".tsv", atlas=atlas.name, desc=desc
        )
        cov_path = naming.participant_path(
            out, ents, "coverage", ".tsv", atlas=atlas.name, desc=desc
        )
        files.append(write_text(ts_path, matrix_text(atlas.cleaned, atlas.regions)))
        files.append(write_tsv(cov_path, atlas.coverage))
        if atlas.parcels is not None:  # CIFTI runs: the same, as Workbench files
            files += _cifti_files(ts_path, atlas, record.t_r, ctx)
        sidecar = naming.timeseries_sidecar(
            atlas=atlas.name,
            kind=atlas.kind,
            regions=atlas.regions,
            missing=atlas.missing,
            t_r=record.t_r,
            sources=sources,
            coverage_file=cov_path.name,
            denoise=ctx.config.denoise.model_dump(mode="json"),
            sample_mask=record.sample_mask.tolist(),
            provenance=record.provenance,
            config_hash=ctx.config_hash,
        )
        files.append(write_json(ts_path.with_suffix(".json"), sidecar))
        rel = naming.bids_uri(ts_path.relative_to(out))
        files += _relmat_files(
            out, ents, atlas.name, atlas.regions, atlas.matrices, ctx, [rel], record.n_kept
        )
    qc = naming.qc_sidecar(
        n_volumes=record.n_volumes,
        n_kept=record.n_kept,
        provenance=record.provenance,
        t_r=record.t_r,
        excluded=record.excluded,
        sources=sources,
        config_hash=ctx.config_hash,
    )
    files.append(write_json(naming.participant_path(out, ents, "qc", ".json", desc=desc), qc))
    return files


def write_unit(record: UnitRecord, ctx: RunContext) -> list[Path]:
    """Write the session / subject connectomes of one unit; returns the files written."""
    files: list[Path] = []
    for src in ctx.sources:
        matrices = record.matrices.get(src.name)
        if not matrices:
            continue
        members = record.members[src.name]
        uris = [naming.bids_uri(m["timeseries"]) for m in members]
        aggregate = {
            "Aggregate": ctx.config.connectivity.aggregate,
            "Runs": [
                {"timeseries": u, "volumes": m["volumes"]}
                for u, m in zip(uris, members, strict=True)
            ],
            "ExcludedRuns": record.excluded,
        }
        volumes = sum(m["volumes"] for m in members)
        files += _relmat_files(
            ctx.output_dir,
            record.entities,
            src.name,
            src.region_names,
            matrices,
            ctx,
            uris,
            volumes,
            aggregate,
        )
    return files

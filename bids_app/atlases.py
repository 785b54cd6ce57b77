"""Atlases by name: TemplateFlow queries, BIDS-Atlas datasets and files, and their template.

The configuration calls :func:`resolve_atlas` once per atlas entry. An entry names its
atlas in one of three ways::

    {name: S400, kind: labels, image: atlas.nii.gz, labels: atlas.tsv}           # a file
    {name: S400, kind: labels,
     templateflow: {atlas: Schaefer2018, desc: 400Parcels7Networks, resolution: 2}}
    {name: S400, kind: labels, dataset: /atlases, atlas: Schaefer2018, desc: ...}  # BIDS-Atlas

and gets back a :class:`ResolvedAtlas`: the image, its lookup table, the template the
atlas is in (or None when nothing says) and the facts for ``atlas-<A>_description.json``.
:func:`check_space` then compares that template with the BOLD space.

Offline by construction: TemplateFlow files are looked up with our own scan of the
TemplateFlow home (its folder layout: ``tpl-<T>/[cohort-<c>/]tpl-<T>_..._<suffix>.<ext>``),
not with the ``templateflow`` client, which may write a skeleton into the home on import
and downloads on ``get``. Nothing here imports ``templateflow``, opens a socket or writes a
file; a query missing from the home is a :class:`~bids_app.errors.ConfigError` naming the
query, the folder searched and the command that fetches it (:mod:`bids_app.fetch`). Only
``allow_network=True`` downloads (through :mod:`bids_app.fetch`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

FETCH_COMMAND = "bids-connectome-atlases"
S3_ROOT = "https://templateflow.s3.amazonaws.com"
IMAGE_EXTENSIONS = (".nii.gz", ".nii")
# TemplateFlow / BIDS suffix of each atlas kind's image.
DEFAULT_SUFFIX = {"labels": "dseg", "maps": "probseg", "regions": "probseg"}
SOURCE_KEYS = ("image", "templateflow", "dataset")
DATASET_SELECTORS = ("desc", "seg", "scale", "res")

# TemplateFlow's templates (its archive's tpl-* folders).
TEMPLATEFLOW_TEMPLATES = frozenset(
    {
        "Fischer344",
        "MNI152Lin",
        "MNI152NLin2009aAsym",
        "MNI152NLin2009aSym",
        "MNI152NLin2009bAsym",
        "MNI152NLin2009bSym",
        "MNI152NLin2009cAsym",
        "MNI152NLin2009cSym",
        "MNI152NLin6Asym",
        "MNI152NLin6Sym",
        "MNI305",
        "MNIColin27",
        "MNIInfant",
        "MNIPediatricAsym",
        "MouseIn",
        "NKI",
        "NMT31Sym",
        "OASIS30ANTs",
        "PNC",
        "RESILIENT",
        "SUIT",
        "UNCInfant",
        "VALiDATe29",
        "WHS",
        "dhcpAsym",
        "dhcpSym",
        "dhcpVol",
        "fsLR",
        "fsaverage",
        "onavg",
    }
)
# Template identifiers recognised in ``space-`` entities: TemplateFlow's and the BIDS
# standard templates. A ``tpl-`` entity is taken as it is, whatever its label.
KNOWN_TEMPLATES = TEMPLATEFLOW_TEMPLATES | {
    "ICBM452AirSpace",
    "ICBM452Warp5Space",
    "IXI549Space",
    "NIHPD",
    "OASIS30Atropos",
    "Talairach",
    "fsaverage3",
    "fsaverage4",
    "fsaverage5",
    "fsaverage6",
    "fsaverageSym",
}
# Other spellings of the same template. FSL's MNI152 (the ``MNI152_T1_*`` images, what
# neuroparc calls ``space-MNI152NLin6``) is TemplateFlow's MNI152NLin6Asym; BIDS's list
# of standard templates spells that one ``MNI152NLin6ASym``.
TEMPLATE_ALIASES = {"MNI152NLin6": "MNI152NLin6Asym", "MNI152NLin6ASym": "MNI152NLin6Asym"}

Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$", min_length=1)]


class TemplateFlowQuery(BaseModel):
    """The ``templateflow:`` mapping of an atlas entry (TemplateFlow's entity names).

    ``template`` defaults to the BOLD space and ``suffix`` to the kind's (``dseg`` for
    labels, ``probseg`` for maps). ``resolution`` is TemplateFlow's ``res-`` index
    (``2`` matches ``res-02``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    atlas: Label
    desc: Label | None = None
    resolution: Annotated[int, Field(ge=0)] | Label | None = None
    template: Label | None = None
    cohort: Label | None = None
    suffix: Literal["dseg", "probseg", "mask"] | None = None


# --- small helpers ----------------------------------------------------------------------------


def default_templateflow_home(env: Mapping[str, str] | None = None) -> Path:
    """The TemplateFlow home the ``templateflow`` client would use.

    ``$TEMPLATEFLOW_HOME``, else the user cache folder (``$XDG_CACHE_HOME/templateflow``,
    by default ``~/.cache/templateflow``; on macOS ``~/Library/Caches/templateflow``).
    """
    env = os.environ if env is None else env
    if env.get("TEMPLATEFLOW_HOME"):
        return Path(env["TEMPLATEFLOW_HOME"]).expanduser().absolute()
    try:  # what the client itself uses (a dependency of templateflow)
        from platformdirs import user_cache_dir

        if env is os.environ:
            return Path(user_cache_dir("templateflow")).absolute()
    except ImportError:
        pass
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")) / ".cache")
    return (Path(cache).expanduser() / "templateflow").absolute()


def canonical_template(label: str) -> str:
    """One spelling per template (``MNI152NLin6`` -> ``MNI152NLin6Asym``); others unchanged."""
    return TEMPLATE_ALIASES.get(label, label)


_TPL = re.compile(r"(?:^|_)tpl-([A-Za-z0-9]+)(?=[_.])")
_SPACE = re.compile(r"(?:^|_)space-([A-Za-z0-9]+)(?=[_.])")


def template_from_name(path: Path | str) -> tuple[str | None, str | None]:
    """``(template, entity)`` from a file name's ``tpl-`` or ``space-`` entity.

    A ``tpl-`` label is taken as it is; a ``space-`` label only when it is a known
    template or alias (``space-MNI152NLin6`` -> ``MNI152NLin6Asym``). ``entity`` is what
    was read (``"tpl-X"``, ``"space-X"``), also when it was not understood (template None).
    """
    name = Path(str(path)).name
    m = _TPL.search(name)
    if m:
        return canonical_template(m.group(1)), f"tpl-{m.group(1)}"
    m = _SPACE.search(name)
    if m:
        label = canonical_template(m.group(1))
        return (label if label in KNOWN_TEMPLATES else None), f"space-{m.group(1)}"
    return None, None


def sha256(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def _norm(key: str, value: Any) -> str:
    """Entity value as compared: resolutions and cohorts as numbers (``02`` == ``2``)."""
    text = str(value)
    if key in ("res", "cohort") and text.isdigit():
        return str(int(text))
    return text


# --- file names -------------------------------------------------------------------------------

_ENTITY = re.compile(r"^([A-Za-z]+)-([A-Za-z0-9]+)$")


@dataclass(frozen=True)
class _File:
    """A BIDS-named file of an index (on disk, or in TemplateFlow's remote listing)."""

    rel: PurePosixPath  # relative to the root of its TemplateFlow home or dataset
    entities: dict[str, str]
    suffix: str
    extension: str
    size: int = -1  # bytes on disk; 0 is a TemplateFlow placeholder; -1 unknown (remote)

    @property
    def present(self) -> bool:
        return self.size > 0

    def get(self, key: str) -> str | None:
        value = self.entities.get(key)
        return None if value is None else _norm(key, value)


def parse_name(rel: PurePosixPath | str, size: int = -1) -> _File | None:
    """A file of the index, or None if its name is not ``key-value_..._suffix.ext``."""
    rel = PurePosixPath(rel)
    stem, dot, ext = rel.name.partition(".")
    chunks = stem.split("_")
    if len(chunks) < 2 or "-" in chunks[-1] or not chunks[-1]:
        return None
    entities = {}
    for chunk in chunks[:-1]:
        m = _ENTITY.match(chunk)
        if m is None:
            return None
        entities[m.group(1)] = m.group(2)
    return _File(rel, entities, chunks[-1], dot + ext, size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size  # follows symlinks; a broken (DataLad) link is absent
    except OSError:
        return 0


def _scan(root: Path, folders: Iterable[Path], depth: int) -> list[_File]:
    """BIDS-named files under ``folders`` (down to ``depth`` levels), relative to ``root``."""
    out = []
    for top in folders:
        if not top.is_dir():
            continue
        base = len(top.parts)
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".")
                and not d.startswith("sub-")
                and d not in ("code", "sourcedata", "derivatives", "scripts")
                and len(here.parts) - base < depth
            )
            for name in sorted(filenames):
                f = parse_name((here / name).relative_to(root).as_posix(), _size(here / name))
                if f is not None:
                    out.append(f)
    return out


def templateflow_index(home: Path, template: str) -> list[_File]:
    """Files of ``tpl-<template>/`` in a TemplateFlow home (placeholders have size 0)."""
    return _scan(home, [home / f"tpl-{template}"], depth=1)


def _template_of(f: _File) -> str | None:
    if "tpl" in f.entities:
        return canonical_template(f.entities["tpl"])
    if "space" in f.entities:
        return canonical_template(f.entities["space"])
    for part in f.rel.parts[:-1]:
        if part.startswith("tpl-"):
            return canonical_template(part[4:])
    return None


# --- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtlasRequest:
    """What to look for: an atlas image by entities, in one template (or any)."""

    atlas: str
    suffix: str
    template: str | None
    selectors: dict[str, str] = field(default_factory=dict)  # entity -> wanted value
    prefer: dict[str, str] = field(default_factory=dict)  # entity -> preferred value

    def describe(self, keys: Mapping[str, str]) -> str:
        """``{template: X, atlas: Y, ...}`` with the config's key names."""
        items = {"tpl": self.template, "atlas": self.atlas, **self.selectors}
        items["suffix"] = self.suffix
        return "{" + ", ".join(f"{keys.get(k, k)}: {v}" for k, v in items.items() if v) + "}"

    def stem(self) -> str:
        """The request as a TemplateFlow-style name (``tpl-X_atlas-Y_desc-Z_res-2_dseg``):
        the form ``bids-connectome-atlases fetch --query`` takes."""
        parts = [f"tpl-{self.template}"] if self.template else []
        parts.append(f"atlas-{self.atlas}")
        parts += [f"{k}-{v}" for k, v in self.selectors.items()]
        return "_".join(parts + [self.suffix])


def parse_request(stem: str) -> AtlasRequest:
    """Inverse of :meth:`AtlasRequest.stem` (``--query`` of the fetch command)."""
    chunks = stem.strip().split("_")
    suffix = "dseg"
    if chunks and "-" not in chunks[-1]:
        suffix = chunks.pop()
    entities: dict[str, str] = {}
    for chunk in chunks:
        m = _ENTITY.match(chunk)
        if m is None:
            raise ConfigError(
                f"not a query of the form tpl-X_atlas-Y[_desc-Z][_res-N]_dseg: {stem!r}"
            )
        entities[m.group(1)] = m.group(2)
    if "atlas" not in entities or "tpl" not in entities:
        raise ConfigError(f"a query needs tpl-<template> and atlas-<label>: {stem!r}")
    template = canonical_template(entities.pop("tpl"))
    atlas = entities.pop("atlas")
    return AtlasRequest(atlas, suffix, template, {k: _norm(k, v) for k, v in entities.items()})


class _NoMatch(Exception):
    """No file, or several (``ambiguous``), for a request; the message says which."""

    def __init__(self, message: str, candidates: list[_File] | None = None, ambiguous=False):
        super().__init__(message)
        self.candidates = candidates or []
        self.ambiguous = ambiguous


def _varying(files: list[_File], keys: Mapping[str, str]) -> str:
    """``resolution: 1 | 2; desc: A | B``: the entities that tell ``files`` apart."""
    names = sorted({k for f in files for k in f.entities} - {"atlas"})
    hints = []
    for k in names:
        values = sorted({f.get(k) or "(none)" for f in files})
        if len(values) > 1:
            hints.append(f"{keys.get(k, k)}: {' | '.join(values)}")
    return "; ".join(hints)


def select_image(
    files: list[_File], request: AtlasRequest, keys: Mapping[str, str], where: str
) -> _File:
    """The one image of ``files`` that ``request`` names.

    An entity the request does not give matches any value, but files without it are
    preferred (``desc`` not given: the file without ``desc-``, if there is one), then
    files with the ``prefer`` values (the BOLD ``res``). Raises :class:`_NoMatch` with
    the reason (nothing, or several files, with the keys that tell them apart).
    """
    atlas_files = [f for f in files if f.entities.get("atlas") == request.atlas]
    images = [
        f for f in atlas_files if f.suffix == request.suffix and f.extension in IMAGE_EXTENSIONS
    ]
    if request.template is not None:
        images = [f for f in images if _template_of(f) == request.template]
    matches = [
        f for f in images if all(f.get(k) == _norm(k, v) for k, v in request.selectors.items())
    ]
    if not matches:
        have = [f for f in atlas_files if f.extension in IMAGE_EXTENSIONS]
        if not have:
            raise _NoMatch(f"no atlas-{request.atlas} image in {where}")
        listed = ", ".join(sorted(f.rel.name for f in have)[:12])
        more = f" (+{len(have) - 12} more)" if len(have) > 12 else ""
        raise _NoMatch(
            f"no atlas-{request.atlas} {request.suffix} image matches in {where}; "
            f"atlas-{request.atlas} images there: {listed}{more}",
            have,
        )
    if len(matches) > 1:
        for k in sorted({k for f in matches for k in f.entities} - set(request.selectors)):
            without = [f for f in matches if k not in f.entities]
            if without and len(without) < len(matches):
                matches = without
    for k, v in request.prefer.items():
        preferred = [f for f in matches if f.get(k) == _norm(k, v)]
        if preferred and len(preferred) < len(matches):
            matches = preferred
    if len(matches) > 1:
        raise _NoMatch(
            f"{len(matches)} files in {where} match: "
            f"{', '.join(f.rel.name for f in matches)}; choose one with {_varying(matches, keys)}",
            matches,
            ambiguous=True,
        )
    return matches[0]


def companion(
    files: list[_File], image: _File, extension: str, suffixes: tuple[str, ...]
) -> _File | None:
    """The ``.tsv`` / ``.json`` that goes with ``image`` (BIDS inheritance).

    Its entities are a subset of the image's, its folder is the image's or above it;
    the most specific wins (then the first of ``suffixes``).
    """
    best, best_key = None, None
    for f in files:
        if f.extension != extension or f.suffix not in suffixes or "atlas" not in f.entities:
            continue
        if any(image.get(k) != f.get(k) for k in f.entities):
            continue
        folder = f.rel.parent
        if folder != PurePosixPath(".") and folder not in (image.rel.parent, *image.rel.parents):
            continue
        key = (len(f.entities), -suffixes.index(f.suffix), -len(folder.parts))
        if best_key is None or key > best_key:
            best, best_key = f, key
    return best


# --- resolved atlases -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedAtlas:
    """Where one configured atlas comes from, ready for ``extract.load_atlas``.

    Attributes
    ----------
    name, kind
        From the entry.
    image
        The image to load (None for ``spheres``).
    labels
        Its lookup table (the entry's ``labels:``, else the source's ``_dseg.tsv``), or None.
    template
        The template the atlas is in (canonical spelling), None when nothing says.
    template_from
        Where ``template`` comes from: ``templateflow``, ``dataset``, ``file name <entity>``
        (``file name tpl-MNI152NLin6Asym``) or ``space key``; None with ``template``.
    source
        ``templateflow``, ``dataset``, ``file`` or ``coordinates``.
    provenance
        The facts for ``atlas-<A>_description.json`` (:func:`description_sidecar`).
    files
        Every file the atlas was read from (image, table, sidecar, description).
    request
        The TemplateFlow / dataset request (for the fetch command), or None.
    """

    name: str
    kind: str
    image: Path | None
    labels: Path | None
    template: str | None
    template_from: str | None
    source: str
    provenance: dict[str, Any]
    files: tuple[Path, ...] = ()
    request: AtlasRequest | None = None


def _entry_dict(entry: Any) -> dict[str, Any]:
    if isinstance(entry, Mapping):
        return dict(entry)
    if hasattr(entry, "model_dump"):
        return {k: getattr(entry, k) for k in type(entry).model_fields}
    return dict(vars(entry))


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    return value


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_DESCRIPTION_FIELDS = (
    "Description",
    "Authors",
    "Curators",
    "Funding",
    "License",
    "ReferencesAndLinks",
    "Species",
    "AtlasSampleSize",
    "RRID",
    "DerivedFrom",
    "LevelType",
)


def _facts(*sources: Mapping[str, Any]) -> dict[str, Any]:
    """Atlas-description fields from the first source that has each (``Name`` -> AtlasName)."""
    out: dict[str, Any] = {}
    for src in sources:
        name = src.get("AtlasName") or src.get("Name")
        if name and "AtlasName" not in out:
            out["AtlasName"] = name
        for key in _DESCRIPTION_FIELDS:
            if key in src and key not in out and src[key] not in (None, ""):
                out[key] = src[key]
        if "IsDerivedFrom" in src and "DerivedFrom" not in out:
            out["DerivedFrom"] = src["IsDerivedFrom"]
    return out


def _spatial_reference(template: str | None) -> dict[str, Any]:
    if template is None:
        return {}
    out: dict[str, Any] = {"Template": template}
    if template in TEMPLATEFLOW_TEMPLATES:
        out["SpatialReference"] = f"https://github.com/templateflow/tpl-{template}"
    return out


def _where(name: str, key: str) -> str:
    return f"atlases.{name}.{key}"


_TF_KEYS = {"tpl": "template", "res": "resolution"}
_DS_KEYS = {"tpl": "space"}


def templateflow_request(
    query: Any, kind: str, bold_space: str, bold_res: str | None = None, space: str | None = None
) -> AtlasRequest:
    """The :class:`AtlasRequest` of a ``templateflow:`` mapping (template: the query's,
    else the entry's ``space:``, else the BOLD space)."""
    q = _plain(query)
    if not isinstance(q, Mapping):
        raise ConfigError("templateflow must be a mapping such as {atlas: Schaefer2018, ...}")
    q = dict(q)
    if isinstance(query, Mapping):
        try:
            q = TemplateFlowQuery.model_validate(q).model_dump(exclude_none=True)
        except ValueError as err:
            raise ConfigError(f"invalid templateflow query {dict(query)}: {err}") from None
    template = canonical_template(str(q.get("template") or space or bold_space))
    selectors = {}
    if q.get("cohort") is not None:
        selectors["cohort"] = _norm("cohort", q["cohort"])
    if q.get("desc") is not None:
        selectors["desc"] = str(q["desc"])
    if q.get("resolution") is not None:
        selectors["res"] = _norm("res", q["resolution"])
    prefer = {"res": _norm("res", bold_res)} if bold_res and "res" not in selectors else {}
    suffix = str(q.get("suffix") or DEFAULT_SUFFIX.get(kind, "dseg"))
    return AtlasRequest(str(q["atlas"]), suffix, template, selectors, prefer)


def fetch_hint(request: AtlasRequest, home: Path, config_path: Path | str | None = None) -> str:
    """The command that fetches ``request`` into ``home`` (where a network exists)."""
    target = f"--to {home}"
    if config_path is not None:
        return f"{FETCH_COMMAND} fetch {config_path} {target}"
    return f"{FETCH_COMMAND} fetch --query {request.stem()} {target}"


def find_templateflow(
    request: AtlasRequest, files: list[_File], where: str
) -> tuple[_File, _File | None, _File | None]:
    """``(image, table, sidecar)`` of a TemplateFlow request among ``files`` (one template)."""
    image = select_image(files, request, _TF_KEYS, where)
    suffixes = (request.suffix, "dseg", "probseg")
    table = companion(files, image, ".tsv", suffixes)
    sidecar = companion(files, image, ".json", suffixes)
    return image, table, sidecar


def _resolve_templateflow(
    e: dict[str, Any],
    bold_space: str,
    bold_res: str | None,
    home: Path,
    allow_network: bool,
    config_path: Path | str | None,
) -> ResolvedAtlas:
    name, kind = str(e["name"]), str(e["kind"])
    key = _where(name, "templateflow")
    space = e.get("space")
    query = _plain(e["templateflow"])
    if not isinstance(query, Mapping):
        raise ConfigError(f"{key}: must be a mapping such as {{atlas: Schaefer2018, desc: ...}}")
    tf_template = query.get("template")
    if space and tf_template and canonical_template(space) != canonical_template(tf_template):
        raise ConfigError(
            f"{_where(name, 'space')}: {space}, but {key}.template is {tf_template}; give one"
        )
    request = templateflow_request(e["templateflow"], kind, bold_space, bold_res, space)
    folder = home / f"tpl-{request.template}"
    fetch = fetch_hint(request, home, config_path)
    for attempt in (1, 2):
        files = templateflow_index(home, request.template)
        try:
            image, table, sidecar = find_templateflow(request, files, str(folder))
        except _NoMatch as err:
            if err.ambiguous:
                raise ConfigError(f"{key}: {err}") from None
            missing = (
                f"{key}: {request.describe(_TF_KEYS)} is not in the local TemplateFlow home\n"
                f"  searched: {folder} (the TemplateFlow home is $TEMPLATEFLOW_HOME, "
                f"else ~/.cache/templateflow)\n"
                f"  {err}\n"
                f"  fetch it where a network exists: {fetch}\n"
                f"  then run with TEMPLATEFLOW_HOME pointing to that folder"
            )
            if allow_network and attempt == 1:
                _download([request], home)
                continue
            raise ConfigError(missing) from None
        absent = [f for f in (image, table, sidecar) if f is not None and not f.present]
        if not absent:
            break
        if allow_network and attempt == 1:
            _download([request], home)
            continue
        listed = ", ".join(str(home / f.rel) for f in absent)
        raise ConfigError(
            f"{key}: {request.describe(_TF_KEYS)} is in the local TemplateFlow home only as "
            f"an empty placeholder (not downloaded): {listed}\n"
            f"  fetch it where a network exists: {fetch}"
        )
    paths = {"image": home / image.rel}
    if table is not None:
        paths["labels"] = home / table.rel
    labels = Path(e["labels"]) if e.get("labels") else paths.get("labels")
    sidecar_path = home / sidecar.rel if sidecar is not None else None
    facts = _facts(_read_json(sidecar_path))
    source = {
        "Type": "TemplateFlow",
        "Query": {_TF_KEYS.get(k, k): v for k, v in request.selectors.items()}
        | {"template": request.template, "atlas": request.atlas, "suffix": request.suffix},
        "Files": {k: p.relative_to(home).as_posix() for k, p in paths.items()},
        "URL": f"{S3_ROOT}/{image.rel.as_posix()}",
        "Digests": {k: sha256(p) for k, p in paths.items()},
    }
    if labels is not None and labels != paths.get("labels"):
        source["LabelsFile"] = {"File": labels.name, "Digest": sha256(labels)}
    return ResolvedAtlas(
        name=name,
        kind=kind,
        image=paths["image"],
        labels=labels,
        template=request.template,
        template_from="templateflow",
        source="templateflow",
        provenance={**facts, **_spatial_reference(request.template), "Source": source},
        files=tuple(p for p in (paths["image"], labels, sidecar_path) if p is not None),
        request=request,
    )


def _download(requests: list[AtlasRequest], home: Path) -> None:
    from . import fetch  # network code, only with allow_network

    fetch.fetch_requests(requests, home)


def dataset_index(root: Path, atlas: str) -> list[_File]:
    """BIDS-named files of an atlas dataset: the root, ``tpl-*/`` (BIDS 1.11) and
    ``atlas-<A>/`` (BEP038 drafts, XCP-D's AtlasPack)."""
    folders = [p for p in sorted(root.glob("tpl-*")) if p.is_dir()]
    folders.append(root / f"atlas-{atlas}")
    files = _scan(root, folders, depth=3)
    files += [
        f
        for f in (parse_name(p.name, _size(p)) for p in sorted(root.iterdir()) if p.is_file())
        if f is not None
    ]
    return files


def _description_file(root: Path, image: _File, atlas: str) -> Path | None:
    name = f"atlas-{atlas}_description.json"
    for folder in (image.rel.parent, *image.rel.parents):
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    return None


def _resolve_dataset(
    e: dict[str, Any], bold_space: str, bold_res: str | None, base_dir: Path
) -> ResolvedAtlas:
    name, kind = str(e["name"]), str(e["kind"])
    root = Path(str(e["dataset"])).expanduser()
    root = root if root.is_absolute() else (base_dir / root)
    if not root.is_dir():
        raise ConfigError(f"{_where(name, 'dataset')}: not a folder: {root}")
    label = e.get("atlas")
    if not label:
        raise ConfigError(
            f"{_where(name, 'atlas')}: required with dataset: the atlas-<label> to read "
            f"from {root}{_atlas_labels(root)}"
        )
    files = dataset_index(root, str(label))
    if not any(f.entities.get("atlas") == label for f in files):
        raise ConfigError(
            f"{_where(name, 'atlas')}: no atlas-{label} in the atlas dataset {root}"
            f"{_atlas_labels(root, files)}"
        )
    selectors = {k: _norm(k, e[k]) for k in DATASET_SELECTORS if e.get(k) is not None}
    space = canonical_template(str(e["space"])) if e.get("space") else None
    suffix = DEFAULT_SUFFIX.get(kind, "dseg")
    prefer = {"res": _norm("res", bold_res)} if bold_res and "res" not in selectors else {}
    request = AtlasRequest(
        str(label), suffix, space or canonical_template(bold_space), selectors, prefer
    )
    where = f"the atlas dataset {root}"
    key = _where(name, "dataset")
    try:
        image = select_image(files, request, _DS_KEYS, where)
    except _NoMatch as err:
        if space is not None or err.ambiguous:
            raise ConfigError(f"{key}: {err}") from None
        # Not in the BOLD space: the atlas's own template, if the dataset has only one
        # (the space check then says what is wrong, or allow_space_mismatch lets it be).
        anywhere = AtlasRequest(str(label), suffix, None, selectors, prefer)
        try:
            image = select_image(files, anywhere, _DS_KEYS, where)
        except _NoMatch as err2:
            raise ConfigError(f"{key}: {err2}") from None
    suffixes = (suffix, "dseg", "probseg")
    table = companion(files, image, ".tsv", suffixes)
    sidecar = companion(files, image, ".json", suffixes)
    image_path = root / image.rel
    table_path = root / table.rel if table is not None else None
    sidecar_path = root / sidecar.rel if sidecar is not None else None
    desc_path = _description_file(root, image, str(label))
    dataset_description = _read_json(root / "dataset_description.json")
    facts = _facts(_read_json(desc_path), _read_json(sidecar_path))
    if "License" not in facts and dataset_description.get("License"):
        facts["License"] = dataset_description["License"]
    template = _template_of(image)
    labels = Path(e["labels"]) if e.get("labels") else table_path
    paths = {"image": image_path} | ({"labels": table_path} if table_path else {})
    source = {
        "Type": "BIDS-Atlas dataset",
        "Dataset": dataset_description.get("Name") or root.name,
        "Atlas": str(label),
        "Entities": {k: v for k, v in image.entities.items() if k != "atlas"},
        "Files": {k: p.relative_to(root).as_posix() for k, p in paths.items()},
        "Digests": {k: sha256(p) for k, p in paths.items()},
    }
    if desc_path is not None:
        source["Description"] = desc_path.relative_to(root).as_posix()
    if dataset_description.get("DatasetDOI"):
        source["DatasetDOI"] = dataset_description["DatasetDOI"]
    if labels is not None and labels != table_path:
        source["LabelsFile"] = {"File": labels.name, "Digest": sha256(labels)}
    return ResolvedAtlas(
        name=name,
        kind=kind,
        image=image_path,
        labels=labels,
        template=template,
        template_from="dataset" if template else None,
        source="dataset",
        provenance={**facts, **_spatial_reference(template), "Source": source},
        files=tuple(p for p in (image_path, labels, sidecar_path, desc_path) if p is not None),
        request=request,
    )


def _atlas_labels(root: Path, files: list[_File] | None = None) -> str:
    """``; atlases there: A, B`` (the ``atlas-`` labels a dataset holds)."""
    if files is None:
        files = _scan(root, [p for p in sorted(root.glob("tpl-*")) if p.is_dir()], depth=3)
        files += [f for f in (parse_name(p.name) for p in root.iterdir()) if f is not None]
    labels = {f.entities["atlas"] for f in files if "atlas" in f.entities}
    labels |= {p.name[6:] for p in root.glob("atlas-*") if p.is_dir()}
    if not labels:
        return "; it holds no atlas-<label> file"
    return f"; atlases there: {', '.join(sorted(labels))}"


def _resolve_file(e: dict[str, Any]) -> ResolvedAtlas:
    name, kind = str(e["name"]), str(e["kind"])
    image = Path(str(e["image"]))
    labels = Path(str(e["labels"])) if e.get("labels") else None
    named, entity = template_from_name(image)
    space = canonical_template(str(e["space"])) if e.get("space") else None
    if space and named and space != named:
        raise ConfigError(
            f"{_where(name, 'space')}: {e['space']}, but the file name says {entity} "
            f"({image.name}); remove space: or give the right one"
        )
    template = space or named
    origin = "space key" if space else (f"file name {entity}" if named else None)
    paths = {"image": image} | ({"labels": labels} if labels else {})
    source: dict[str, Any] = {
        "Type": "file",
        "Files": {k: p.name for k, p in paths.items()},
        "Digests": {k: sha256(p) for k, p in paths.items() if p.is_file()},
    }
    if entity and not named:
        source["UnrecognisedSpaceEntity"] = entity
    facts = {"AtlasName": name}
    return ResolvedAtlas(
        name=name,
        kind=kind,
        image=image,
        labels=labels,
        template=template,
        template_from=origin,
        source="file",
        provenance={**facts, **_spatial_reference(template), "Source": source},
        files=tuple(paths.values()),
    )


def _resolve_coordinates(e: dict[str, Any]) -> ResolvedAtlas:
    name = str(e["name"])
    coords = str(e.get("coordinates"))
    space = canonical_template(str(e["space"])) if e.get("space") else None
    path = Path(coords)
    source: dict[str, Any] = {"Type": "coordinates"}
    if path.is_file():
        source |= {"File": path.name, "Digest": sha256(path)}
    else:
        source["BuiltIn"] = coords
    return ResolvedAtlas(
        name=name,
        kind=str(e["kind"]),
        image=None,
        labels=None,
        template=space,
        template_from="space key" if space else None,
        source="coordinates",
        provenance={"AtlasName": name, **_spatial_reference(space), "Source": source},
        files=(path,) if path.is_file() else (),
    )


def source_error(entry: Any) -> str | None:
    """Why an entry's source keys do not fit together, or None (for a pydantic validator).

    Exactly one of ``image``, ``templateflow`` and ``dataset``; ``atlas`` and the
    selectors (``desc``, ``seg``, ``scale``, ``res``) only with ``dataset``.
    """
    e = _entry_dict(entry)
    if e.get("kind") == "spheres":
        return None
    given = [k for k in SOURCE_KEYS if e.get(k) is not None]
    if len(given) != 1:
        return (
            f"give exactly one of image, templateflow, dataset (got {', '.join(given)})"
            if given
            else "give the atlas as image: (a file), templateflow: (a query) or dataset: "
            "(a BIDS-Atlas dataset folder, with atlas:)"
        )
    if e.get("kind") == "regions" and given[0] != "image":
        return "a regions atlas takes image: (a statistical map)"
    stray = [k for k in ("atlas", *DATASET_SELECTORS) if e.get(k) is not None]
    if stray and given[0] != "dataset":
        where = "inside templateflow:" if given[0] == "templateflow" else "with dataset:"
        return f"{', '.join(stray)} only go {where}"
    if given[0] == "dataset" and not e.get("atlas"):
        return "dataset: needs atlas: (the atlas-<label> to read)"
    return None


def resolve_atlas(
    entry: Any,
    *,
    bold_space: str,
    templateflow_home: Path | str | None = None,
    allow_network: bool = False,
    bold_res: str | None = None,
    base_dir: Path | str | None = None,
    config_path: Path | str | None = None,
) -> ResolvedAtlas:
    """Resolve one atlas entry of the configuration.

    Parameters
    ----------
    entry
        The entry: a mapping or a config model (``name``, ``kind``, and one of ``image``,
        ``templateflow``, ``dataset`` + ``atlas``; optional ``labels``, ``space``,
        ``desc``/``seg``/``scale``/``res`` for a dataset).
    bold_space
        The configured BOLD space: the default template of a TemplateFlow query and the
        preferred one in a dataset.
    templateflow_home
        The TemplateFlow home to read (default :func:`default_templateflow_home`).
    allow_network
        Download a TemplateFlow query missing from the home into it (otherwise a
        :class:`ConfigError` says how to fetch it).
    bold_res
        The configured BOLD ``res`` label: preferred when the entry gives no resolution.
    base_dir
        Folder relative ``dataset`` paths are taken from (default: the current folder).
    config_path
        The configuration file, named in the fetch command of error messages.

    Raises
    ------
    ConfigError
        With the key path (``atlases.<name>.templateflow``...), what was looked for,
        where, and what to do.
    """
    e = _entry_dict(entry)
    error = source_error(e)
    name = str(e.get("name"))
    if error is not None:
        raise ConfigError(f"atlases.{name}: {error}")
    if e.get("kind") == "spheres":
        return _resolve_coordinates(e)
    if e.get("templateflow") is not None:
        home = (
            Path(templateflow_home).expanduser().absolute()
            if templateflow_home is not None
            else default_templateflow_home()
        )
        return _resolve_templateflow(e, bold_space, bold_res, home, allow_network, config_path)
    if e.get("dataset") is not None:
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        return _resolve_dataset(e, bold_space, bold_res, base)
    return _resolve_file(e)


def check_space(
    resolved: ResolvedAtlas, bold_space: str, *, allow_mismatch: bool = False
) -> str | None:
    """Compare the atlas's template with the BOLD space.

    Returns None when they agree, or a message to log once as a warning: the template is
    unknown (a labels/maps/regions atlas with no ``tpl-``/``space-`` entity and no
    ``space:`` key), or they differ and ``allow_mismatch`` is set. Raises
    :class:`ConfigError` naming both when they differ otherwise.
    """
    name = resolved.name
    if resolved.template is None:
        if resolved.kind == "spheres":
            return None
        return (
            f"atlases.{name}: the template of {resolved.image.name if resolved.image else name} "
            f"is unknown (no tpl-/space- entity in its name, no space: key); it is applied to "
            f"{bold_space} BOLD unchecked. Add space: <template> to the entry to check it."
        )
    bold = canonical_template(bold_space)
    if resolved.template == bold:
        return None
    origin = resolved.template_from or ""
    said = {
        "templateflow": "its TemplateFlow query",
        "dataset": "its atlas dataset",
        "space key": "its space: key",
    }.get(origin, f"{origin.removeprefix('file name ')} in its file name")
    what = f"atlases.{name}: the atlas is in {resolved.template} (from {said})"
    if allow_mismatch:
        return (
            f"{what} and the BOLD in {bold_space}; applied anyway (allow_space_mismatch: true): "
            "it is resampled to the BOLD grid, not transformed between templates"
        )
    fix = (
        f"use the atlas in {bold_space} (templateflow: {{template: {bold_space}, ...}}, or a "
        f"file in {bold_space})"
    )
    raise ConfigError(
        f"{what}, but the BOLD is in {bold_space}. Resampling does not move an atlas from one "
        f"template to another: {fix}, or set allow_space_mismatch: true on the entry to "
        "apply it anyway."
    )


# Keys of an entry that name where the atlas comes from (cleared by as_file_entry).
_SOURCE_ONLY_KEYS = ("templateflow", "dataset", "atlas", *DATASET_SELECTORS)


def as_file_entry(entry: Any, resolved: ResolvedAtlas) -> Any:
    """The entry as if the user had given the resolved files by path.

    ``image`` and ``labels`` become the resolved files (``space`` stays as the user gave
    it: the template found is in ``resolved.template``); ``templateflow``, ``dataset``,
    ``atlas`` and the dataset selectors are cleared. A
    pydantic model gives a model (``model_copy``: only its own fields), a mapping a dict.
    So a query and the same files given by path make the same configuration (same
    digests, same ``ConfigurationHash``); the query itself is kept in
    ``resolved.provenance`` for ``atlas-<A>_description.json``.
    """
    if resolved.image is None:  # spheres: nothing to replace
        return entry
    update: dict[str, Any] = {k: None for k in _SOURCE_ONLY_KEYS}
    update |= {"image": resolved.image, "labels": resolved.labels}
    if hasattr(entry, "model_copy"):
        fields = type(entry).model_fields
        return entry.model_copy(update={k: v for k, v in update.items() if k in fields})
    out = dict(entry)
    for k, v in update.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v if k not in ("image", "labels") else str(v)
    return out


def resolve_entries(
    entries: Iterable[Any],
    *,
    bold_space: str,
    bold_res: str | None = None,
    templateflow_home: Path | str | None = None,
    allow_network: bool = False,
    base_dir: Path | str | None = None,
    config_path: Path | str | None = None,
) -> tuple[list[tuple[Any, ResolvedAtlas]], list[str]]:
    """Resolve and space-check every entry: ``([(file entry, resolved)], warnings)``.

    Every entry is tried before failing, so one :class:`ConfigError` lists all problems
    (missing queries, space mismatches...). ``warnings`` are for the caller to log once
    (unknown templates, mismatches allowed by ``allow_space_mismatch``).
    """
    done, warnings, errors = [], [], []
    for entry in entries:
        e = _entry_dict(entry)
        try:
            resolved = resolve_atlas(
                e,
                bold_space=bold_space,
                templateflow_home=templateflow_home,
                allow_network=allow_network,
                bold_res=bold_res,
                base_dir=base_dir,
                config_path=config_path,
            )
            note = check_space(
                resolved, bold_space, allow_mismatch=bool(e.get("allow_space_mismatch"))
            )
        except ConfigError as err:
            errors.append(str(err))
            continue
        if note:
            warnings.append(note)
        done.append((as_file_entry(entry, resolved), resolved))
    if errors:
        where = f"invalid configuration {config_path}:\n" if config_path else ""
        raise ConfigError(where + "\n".join(errors))
    return done, warnings

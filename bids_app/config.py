"""Run configuration: a YAML file validated with pydantic.

The key names are a contract (external tools write configs with them). Every
model forbids unknown keys, so a typo fails before any work with the dotted
path of the bad key and what is allowed there.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .atlases import ResolvedAtlas, TemplateFlowQuery, resolve_entries, source_error
from .errors import ConfigError
from .presets import unused_overrides
from .vocabulary import (
    AGGREGATES,
    ATLAS_KINDS,
    BUILTIN_COORDINATES,
    ESTIMATORS,
    GROUP_MEASURES,
    MEASURES,
    STRATEGIES,
    grid_of_space,
    normalize_measure,
)

log = logging.getLogger(__name__)

Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$", min_length=1)]
Model = Literal["basic", "power2", "derivatives", "full"]
CompCor = Literal[
    "anat_combined",
    "anat_separated",
    "temporal",
    "temporal_anat_combined",
    "temporal_anat_separated",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DenoiseConfig(_Strict):
    """Confound selection (nilearn ``load_confounds_strategy`` meanings) and cleaning."""

    name: Label = "simple"
    strategy: Literal[STRATEGIES] = "simple"
    # Overrides of the preset, with nilearn's names and meanings; None keeps the preset value.
    motion: Model | None = None
    wm_csf: Model | None = None
    global_signal: Model | None = None
    scrub: Annotated[int, Field(ge=0)] | None = None
    fd_threshold: Annotated[float, Field(gt=0)] | None = None
    std_dvars_threshold: Annotated[float, Field(gt=0)] | None = None
    compcor: CompCor | None = None
    n_compcor: Annotated[int, Field(ge=1)] | Literal["all"] | None = None
    ica_aroma: Literal["full", "basic"] | None = None
    demean: bool | None = None
    # Extra confound columns: exact names or regular expressions (full match).
    confounds: list[str] = Field(default_factory=list)
    # Signal cleaning (nilearn.signal.clean meanings).
    detrend: bool = True
    standardize: Literal["zscore_sample", "psc"] | None = "zscore_sample"
    standardize_confounds: bool = True
    filter: Literal["butterworth", "cosine"] = "butterworth"
    low_pass: Annotated[float, Field(gt=0)] | None = None
    high_pass: Annotated[float, Field(gt=0)] | None = None
    smoothing_fwhm: Annotated[float, Field(ge=0)] | None = None
    # Minimum data: a run keeping fewer volumes than this is excluded.
    # None: number of confound regressors + min_dof.
    min_volumes: Annotated[int, Field(ge=1)] | None = None
    min_dof: Annotated[int, Field(ge=0)] = 10
    min_seconds: Annotated[float, Field(ge=0)] | None = None

    @field_validator("confounds")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"{pattern!r} is neither a column name nor a valid regular expression ({err})"
                ) from None
        return value

    @model_validator(mode="after")
    def _check_band(self) -> DenoiseConfig:
        if self.low_pass is not None and self.high_pass is not None:
            if self.high_pass >= self.low_pass:
                raise ValueError(
                    f"high_pass ({self.high_pass} Hz) must be lower than low_pass ({self.low_pass} Hz)"
                )
        if self.filter == "cosine" and self.low_pass is not None:
            raise ValueError("filter 'cosine' is a high-pass only: set low_pass to null")
        return self

    def clean_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`bids_app.clean.clean` this section sets."""
        keys = (
            "detrend",
            "standardize",
            "standardize_confounds",
            "filter",
            "low_pass",
            "high_pass",
        )
        return {k: getattr(self, k) for k in keys}


class _AtlasBase(_Strict):
    name: Label
    # Regions whose fraction of voxels inside the brain mask is below this are n/a.
    min_coverage: Annotated[float, Field(ge=0, le=1)] | None = None
    # The template the atlas is in (checked against the BOLD space; see docs/atlases.md).
    space: Label | None = None
    allow_space_mismatch: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)  # for atlas-<A>_description.json

    @property
    def grid(self) -> str:
        """``volume``, ``cifti`` or ``gifti``: the kind of runs this atlas applies to."""
        return "volume"


Selector = Annotated[int, Field(ge=0)] | Label


class _ImageAtlas(_AtlasBase):
    """An atlas given by a file (``image``), a TemplateFlow query or a BIDS-Atlas dataset."""

    image: Path | None = None
    labels: Path | None = None
    templateflow: TemplateFlowQuery | None = None
    dataset: Path | None = None
    atlas: Label | None = None
    desc: Label | None = None
    seg: Label | None = None
    scale: Selector | None = None
    res: Selector | None = None
    # Surfaces: the right hemisphere of a .label.gii / .annot pair (``image`` is the left),
    # midthickness meshes (left, right) for region centres.
    image_right: Path | None = None
    mesh: Annotated[list[Path], Field(min_length=2, max_length=2)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _ImageAtlas:
        problem = source_error(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def grid(self) -> str:
        """``volume``, ``cifti`` or ``gifti``: the kind of runs this atlas applies to."""
        name = str(self.image or "").lower()
        if name.endswith((".dlabel.nii", ".dscalar.nii")):
            return "cifti"
        if name.endswith((".label.gii", ".annot", ".func.gii", ".shape.gii")):
            return "gifti"
        return "volume"


class LabelsAtlas(_ImageAtlas):
    kind: Literal["labels"]
    strategy: Literal[
        "mean", "median", "minimum", "maximum", "sum", "variance", "standard_deviation"
    ] = "mean"
    background_label: int = 0
    mask: Path | None = None
    map: Annotated[int, Field(ge=0)] | str = 0  # which map of a multi-map .dlabel.nii


class MapsAtlas(_ImageAtlas):
    kind: Literal["maps"]
    allow_overlap: bool = True


class SpheresAtlas(_AtlasBase):
    kind: Literal["spheres"]
    coordinates: str
    # mm for every seed; "table": each seed's own radius, from the table's radius column
    radius: Annotated[float, Field(gt=0)] | Literal["table"] | None = 5.0
    allow_overlap: bool = False


FILE_KEYS = ("image", "image_right", "labels", "mask", "coordinates")
_PERCENT = re.compile(r"^\d+(\.\d+)?%$")


class RegionsAtlas(_AtlasBase):
    kind: Literal["regions"]
    image: Path
    two_sided: bool = True  # before threshold: its validator reads two_sided
    threshold: float | str = 1.0  # a number is a value; a string is a percentile ("97%")
    cluster_threshold: Annotated[int, Field(ge=0)] = 0
    extract_type: Literal["connected_components", "local_regions"] = "local_regions"
    min_region_size: Annotated[float, Field(ge=0)] = 1350.0
    smoothing_fwhm: Annotated[float, Field(ge=0)] = 6.0
    allow_overlap: bool = True

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(
                f"must be a number (a value) or a percentile such as '97%'; got {value!r}"
            )
        if isinstance(value, str) and not _PERCENT.match(value.strip()):
            raise ValueError(
                f"the string {value!r} is not a percentile: write a number for a value "
                "(threshold: 3.1) or a percentage for a percentile (threshold: '97%')"
            )
        if isinstance(value, str) and float(value.strip()[:-1]) > 100:
            raise ValueError(f"the percentile {value!r} must be between 0% and 100%")
        if not isinstance(value, str) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value.strip() if isinstance(value, str) else float(value)

    @field_validator("threshold")
    @classmethod
    def _threshold_sign(cls, value: float | str, info: ValidationInfo) -> float | str:
        if isinstance(value, float) and value < 0 and info.data.get("two_sided", False):
            raise ValueError(
                f"{value:g} is negative, but with two_sided: true the threshold applies to "
                "absolute values: give a positive value, or set two_sided: false to keep the "
                f"values at or below {value:g}"
            )
        return value


AtlasConfig = Annotated[
    LabelsAtlas | MapsAtlas | SpheresAtlas | RegionsAtlas, Field(discriminator="kind")
]


class ConnectivityConfig(_Strict):
    measures: list[str] = Field(default_factory=lambda: ["correlation"], min_length=1)
    estimator: list[Literal[ESTIMATORS]] = Field(
        default_factory=lambda: ["ledoit_wolf"], min_length=1
    )
    aggregate: Literal[AGGREGATES] = "run"

    @field_validator("measures", mode="before")
    @classmethod
    def _measures(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value  # pydantic reports "must be a list"
        out = []
        for item in value:
            key = normalize_measure(item)
            if key not in MEASURES:
                close = difflib.get_close_matches(key, MEASURES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown measure {item!r}{hint}; allowed: {', '.join(MEASURES)}")
            if key not in out:
                out.append(key)
        return out

    @field_validator("estimator", mode="before")
    @classmethod
    def _estimator(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Config(_Strict):
    space: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] = "MNI152NLin2009cAsym"
    res: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] | None = None
    den: Label | None = None  # surface density; fsLR runs: 91k unless given
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    atlases: list[AtlasConfig] = Field(min_length=1)
    connectivity: ConnectivityConfig = Field(default_factory=ConnectivityConfig)
    _resolved: dict[str, ResolvedAtlas] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_density(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("space") == "fsLR" and data.get("den") is None:
            data = {**data, "den": "91k"}
        return data

    @property
    def grid(self) -> str:
        """``volume``, ``cifti`` or ``gifti``: the kind of runs of the configured space."""
        return grid_of_space(self.space)

    @property
    def applicable_atlases(self) -> list:
        """The atlases for runs of this space (volume atlases for volume runs, ...)."""
        return [a for a in self.atlases if a.grid == self.grid]

    @property
    def resolved(self) -> dict[str, ResolvedAtlas]:
        """Where each applicable atlas came from (TemplateFlow, dataset, file), by name."""
        return self._resolved

    @model_validator(mode="after")
    def _surface_options(self) -> Config:
        if self.grid != "volume" and self.denoise.smoothing_fwhm:
            raise ValueError(
                f"denoise.smoothing_fwhm: smoothing is done on volumes; space {self.space} has "
                "surface runs (fMRIPrep's surface outputs are already sampled on the mesh)"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [a.name for a in self.atlases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"atlas names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def participant_measures(self) -> list[str]:
        """The measures computed per run / session / subject (tangent is group-level only)."""
        return [m for m in self.connectivity.measures if m not in GROUP_MEASURES]

    def files(self) -> list[str]:
        """Every file the configuration names (atlas images, tables, masks, coordinates)."""
        out = []
        for atlas in self.atlases:
            for key in FILE_KEYS:
                value = getattr(atlas, key, None)
                if value is not None and not (
                    key == "coordinates" and value in BUILTIN_COORDINATES
                ):
                    out.append(str(value))
        return out

    def canonical(
        self, participant_only: bool = False, recorded: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The configuration as plain data, every file replaced by the digest of its content.

        Two configurations that use the same files from different folders are equal
        here. ``participant_only`` leaves out what only the group level uses (tangent).
        ``recorded`` is the canonical form the participant level recorded
        (``code/bids-connectome/desc-<D>_config.json``): a file that no longer exists takes
        the digest recorded for the same atlas and key (the group level needs no atlas file).
        """
        data = self.model_dump(mode="json")
        before = {
            a.get("name"): a for a in (recorded or {}).get("atlases", []) if isinstance(a, dict)
        }
        for i, atlas in enumerate(data["atlases"]):
            unresolved = (atlas.get("templateflow") or atlas.get("dataset")) and not atlas.get(
                "image"
            )
            if unresolved and atlas["name"] in before:  # resolved by the participant level
                data["atlases"][i] = dict(before[atlas["name"]])
                continue
            for key in FILE_KEYS:
                value = atlas.get(key)
                if value is None or (key == "coordinates" and value in BUILTIN_COORDINATES):
                    continue
                old = before.get(atlas["name"], {}).get(key)
                if not Path(value).is_file() and isinstance(old, str) and old.startswith("sha256:"):
                    atlas[key] = old
                else:
                    atlas[key] = file_digest(value)
        if participant_only:
            data["connectivity"]["measures"] = self.participant_measures
        return data

    def digest(self, participant_only: bool = False, recorded: dict[str, Any] | None = None) -> str:
        """SHA-256 of :meth:`canonical` (the ``ConfigurationHash`` recorded in the outputs)."""
        text = json.dumps(
            self.canonical(participant_only, recorded), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes (remembered per path, size and mtime)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the atlas file: {err.strerror}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = f"sha256:{h.hexdigest()}"
    return _DIGESTS[key]


def presets_dir() -> Path:
    """``configs/``: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "default.yaml").is_file():
            return candidate
    raise ConfigError(
        f"the packaged configs/ folder is missing from {here}: reinstall bids-connectome"
    )


def packaged_config(name: str = "default") -> Path:
    """Path of a preset shipped in ``configs/`` (``default``, ``scrubbing``, ...)."""
    return presets_dir() / f"{name}.yaml"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _model_at(loc: list, data: Any) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for close-match suggestions)."""
    if not loc:
        return Config
    if loc[0] in ("denoise", "connectivity"):
        return DenoiseConfig if loc[0] == "denoise" else ConnectivityConfig
    if loc[0] == "atlases" and len(loc) > 1:
        if len(loc) > 3 and loc[3] == "templateflow":
            return TemplateFlowQuery
        kind = loc[2] if len(loc) > 2 else None
        return {
            "labels": LabelsAtlas,
            "maps": MapsAtlas,
            "spheres": SpheresAtlas,
            "regions": RegionsAtlas,
        }.get(kind)
    return None


def _where(loc: tuple, data: Any) -> tuple[str, list]:
    """The key path shown to users, and the location of the model that owns the key.

    ``atlases.<name>.<key>`` instead of pydantic's ``atlases.<index>.<kind>.<key>``; the
    other list items (and atlases without a name) are ``#<n>``, counted from 1.
    """
    parts = list(loc)
    owner = parts[:-1]
    if parts[:1] == ["atlases"] and len(parts) > 1 and isinstance(parts[1], int):
        entries = data.get("atlases")
        entry = entries[parts[1]] if isinstance(entries, list) and parts[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        rest = parts[2:]
        kind = rest[0] if rest and rest[0] in ATLAS_KINDS else None
        if kind:
            rest = rest[1:]
        owner = ["atlases", parts[1]] + ([kind] if kind else []) + rest[:-1]
        parts = ["atlases", name if isinstance(name, str) and name else parts[1]] + rest
    else:
        node: Any = data
        for i, p in enumerate(parts):
            if isinstance(p, int) and not isinstance(node, list):
                parts[i] = None  # a single value given for a list (estimator: x)
            if isinstance(node, dict):
                node = node.get(p)
            elif isinstance(node, list) and isinstance(p, int) and p < len(node):
                node = node[p]
            else:
                node = None
    shown = [f"#{p + 1}" if isinstance(p, int) else str(p) for p in parts if p is not None]
    return ".".join(shown) or "(top level)", owner


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters (an atlas entry can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _did_you_mean(value: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.7)
    return f"did you mean {close[0]!r}?" if close else ""


_TYPE_WORDS = {
    "list_type": "must be a list (one '- item' per line, or [a, b])",
    "dict_type": "must be a mapping (one 'key: value' per line, or {key: value})",
    "model_type": "must be a mapping (one 'key: value' per line, or {key: value})",
    "model_attributes_type": "must be a mapping (one 'key: value' per line, or {key: value})",
    "string_type": "must be text",
    "path_type": "must be a file path",
    "finite_number": "must be a finite number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}


def _message(e: dict, owner: type[BaseModel] | None, key: str) -> str:
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint}" + (
            f" (allowed: {', '.join(allowed)})" if allowed and not close else ""
        )
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _did_you_mean(value, allowed)
        return f"got {_short(value)}; " + (hint or f"allowed: {', '.join(allowed)}")
    if kind == "string_pattern_mismatch":
        return f"must be letters and digits only (a BIDS label), got {_short(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[kind]
        bound = next(iter(ctx.values()), "")
        return f"must be {words} {bound}, got {_short(value)}"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]}, got {_short(value)}"
    if kind == "missing":
        return "required key missing"
    if kind == "union_tag_not_found":
        return f"required key missing (one of {', '.join(ATLAS_KINDS)})"
    if kind == "union_tag_invalid":
        tag = ctx.get("tag", "")
        hint = _did_you_mean(tag, list(ATLAS_KINDS))
        return f"kind must be one of {', '.join(ATLAS_KINDS)} (got {tag!r})" + (
            f"; {hint}" if hint else ""
        )
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least <= 1 else f"must have at least {least} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    return e["msg"].removeprefix("Value error, ")


def _format_errors(err: ValidationError, source: str, data: Any) -> str:
    lines = [f"invalid configuration {source}:"]
    seen: dict[str, list[tuple[str, dict]]] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p or p in _TAGS))
        if e["type"] == "union_tag_not_found":
            loc += (e.get("ctx", {}).get("discriminator", "kind").strip("'"),)
        where, owner_loc = _where(loc, data if isinstance(data, dict) else {})
        owner = _model_at(owner_loc, data)
        key = str(loc[-1]) if loc else ""
        seen.setdefault(where, []).append((_message(e, owner, key), e))
    for where, items in seen.items():
        # a union (e.g. a number or "table"): keep the branches of the input's own type
        if len(items) > 1:
            typed = [
                m
                for m, e in items
                if not (e["type"] == "literal_error" and not isinstance(e.get("input"), str))
            ]
            items = [(m, {}) for m in (typed or [m for m, _ in items])]
        lines.append(f"  {where}: {'; or '.join(m for m, _ in items)}")
    return "\n".join(lines)


_TAGS = (
    "constrained-float",
    "constrained-int",
    "constrained-str",
    "function-after",
    "str",
    "int",
    "float",
    "bool",
)


def _resolve(value: Any, base: Path) -> Any:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def parse_config(data: dict[str, Any], base_dir: Path, source: str = "<dict>") -> Config:
    """Validate a config mapping; relative paths are taken relative to ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping")
    data = json.loads(json.dumps(data, default=str))
    atlases = data.get("atlases")
    for atlas in atlases if isinstance(atlases, list) else []:
        if not isinstance(atlas, dict):
            continue
        for key in ("image", "labels", "mask", "dataset", "image_right"):
            if atlas.get(key) is not None:
                atlas[key] = str(_resolve(atlas[key], base_dir))
        if isinstance(atlas.get("mesh"), list):
            atlas["mesh"] = [str(_resolve(m, base_dir)) for m in atlas["mesh"]]
        coords = atlas.get("coordinates")
        if coords is not None and str(coords).lower() not in BUILTIN_COORDINATES:
            atlas["coordinates"] = str(_resolve(coords, base_dir))
        elif coords is not None:
            atlas["coordinates"] = str(coords).lower()
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, data)) from None


def resolve_atlases(
    config: Config,
    source: str | Path | None = None,
    templateflow_home: Path | str | None = None,
    allow_network: bool = False,
) -> Config:
    """The configuration with every applicable atlas resolved to files (TemplateFlow
    queries and BIDS-Atlas datasets looked up; see :mod:`bids_app.atlases`) and checked
    against the BOLD space. Atlases of another kind of grid (a volume atlas in a
    surface configuration, or the reverse) are left as they are and skipped, with one
    warning."""
    skipped = [a.name for a in config.atlases if a.grid != config.grid]
    if skipped:
        log.warning(
            "atlases %s: not for %s runs (space %s); skipped",
            ", ".join(skipped),
            config.grid,
            config.space,
        )
    applicable = config.applicable_atlases
    if not applicable:
        raise ConfigError(
            f"invalid configuration {source}: no atlas applies to space {config.space} "
            f"({config.grid} runs); atlases: {', '.join(a.name for a in config.atlases)}"
        )
    done, warnings = resolve_entries(
        applicable,
        bold_space=config.space,
        bold_res=config.res,
        templateflow_home=templateflow_home,
        allow_network=allow_network,
        config_path=source,
    )
    for warning in warnings:
        log.warning("%s", warning)
    by_name = {entry.name: (entry, resolved) for entry, resolved in done}
    atlases = [by_name[a.name][0] if a.name in by_name else a for a in config.atlases]
    out = config.model_copy(update={"atlases": atlases})
    out._resolved = {name: resolved for name, (_, resolved) in by_name.items()}
    return out


def load_config(
    path: Path | str | None = None,
    space: str | None = None,
    check_files: bool = True,
    templateflow_home: Path | str | None = None,
    allow_network: bool = False,
) -> Config:
    """Read and validate a YAML config (default: the packaged ``default.yaml``).

    ``space`` (from the command line) overrides the file's ``space``. With
    ``check_files`` (the participant level) atlases are resolved to files
    (:func:`resolve_atlases`) and every file must exist; the group level reads none.
    """
    path = packaged_config() if path is None else Path(path)
    if not path.is_file():
        presets = list_presets()
        close = difflib.get_close_matches(path.stem, presets, n=1)
        hint = f"; did you mean the preset {close[0]!r}?" if close else ""
        raise ConfigError(
            f"configuration file not found: {path} (give a YAML file or a shipped preset: "
            f"{', '.join(presets)}){hint}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"configuration file {path} is not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"configuration file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} "
            f"at offset {err.start}): save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"configuration file {path} cannot be read: {err.strerror}") from None
    if isinstance(data, dict) and space is not None:
        data["space"] = space
    config = parse_config(data, path.resolve().parent, str(path))
    if check_files:
        config = resolve_atlases(config, path, templateflow_home, allow_network)
    for atlas in config.applicable_atlases if check_files else []:
        for key in ("image", "labels", "mask", "image_right"):
            p = getattr(atlas, key, None)
            if p is not None and not Path(p).is_file():
                raise ConfigError(
                    f"invalid configuration {path}: atlases.{atlas.name}.{key}: file not found: {p}"
                )
        coords = getattr(atlas, "coordinates", None)
        if coords is not None and coords not in BUILTIN_COORDINATES and not Path(coords).is_file():
            raise ConfigError(
                f"invalid configuration {path}: atlases.{atlas.name}.coordinates: not a file and "
                f"not a built-in set ({', '.join(BUILTIN_COORDINATES)}): {coords}"
            )
    unused = unused_overrides(config.denoise)
    if unused:  # nilearn's load_confounds_strategy ignores them too, with a warning
        log.warning(
            "%s: denoise.%s ignored: not used by strategy %r",
            path,
            ", denoise.".join(unused),
            config.denoise.strategy,
        )
    return config

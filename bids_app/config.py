"""Run configuration: a YAML file validated with pydantic.

The key names are a contract (external tools write configs with them). Every
model forbids unknown keys, so a typo fails before any work with the dotted
path of the bad key and what is allowed there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

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
BUILTIN_COORDINATES = ("power2011", "dosenbach2010", "seitzman2018")
MEASURES = ("correlation", "partialcorrelation", "covariance", "precision", "tangent")
ESTIMATORS = ("ledoit_wolf", "empirical", "graphical_lasso")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DenoiseConfig(_Strict):
    """Confound selection (nilearn ``load_confounds_strategy`` meanings) and cleaning."""

    name: Label = "simple"
    strategy: Literal["simple", "scrubbing", "compcor", "ica_aroma", "none"] = "simple"
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


class _AtlasBase(_Strict):
    name: Label
    # Regions whose fraction of voxels inside the brain mask is below this are n/a.
    min_coverage: Annotated[float, Field(ge=0, le=1)] | None = None


class LabelsAtlas(_AtlasBase):
    kind: Literal["labels"]
    image: Path
    labels: Path | None = None
    strategy: Literal[
        "mean", "median", "minimum", "maximum", "sum", "variance", "standard_deviation"
    ] = "mean"
    background_label: int = 0
    mask: Path | None = None


class MapsAtlas(_AtlasBase):
    kind: Literal["maps"]
    image: Path
    labels: Path | None = None
    allow_overlap: bool = True


class SpheresAtlas(_AtlasBase):
    kind: Literal["spheres"]
    coordinates: str
    radius: Annotated[float, Field(gt=0)] | None = 5.0
    allow_overlap: bool = False


class RegionsAtlas(_AtlasBase):
    kind: Literal["regions"]
    image: Path
    threshold: float | Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")] = 1.0
    two_sided: bool = True
    cluster_threshold: Annotated[int, Field(ge=0)] = 0
    extract_type: Literal["connected_components", "local_regions"] = "local_regions"
    min_region_size: Annotated[float, Field(ge=0)] = 1350.0
    smoothing_fwhm: Annotated[float, Field(ge=0)] = 6.0
    allow_overlap: bool = True


AtlasConfig = Annotated[
    LabelsAtlas | MapsAtlas | SpheresAtlas | RegionsAtlas, Field(discriminator="kind")
]


class ConnectivityConfig(_Strict):
    measures: list[str] = Field(default_factory=lambda: ["correlation"], min_length=1)
    estimator: list[Literal["ledoit_wolf", "empirical", "graphical_lasso"]] = Field(
        default_factory=lambda: ["ledoit_wolf"], min_length=1
    )
    aggregate: Literal["run", "session", "subject"] = "run"

    @field_validator("measures", mode="before")
    @classmethod
    def _measures(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        out = []
        for item in value:
            key = str(item).replace(" ", "").replace("_", "").lower()
            if key not in MEASURES:
                raise ValueError(f"unknown measure {item!r}; allowed: {', '.join(MEASURES)}")
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
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    atlases: list[AtlasConfig] = Field(min_length=1)
    connectivity: ConnectivityConfig = Field(default_factory=ConnectivityConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [a.name for a in self.atlases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"atlas names must be unique; repeated: {', '.join(dupes)}")
        return self

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form (recorded in dataset_description.json)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


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


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).endswith("Atlas")) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg.lower()}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


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
    for atlas in data.get("atlases") or []:
        if not isinstance(atlas, dict):
            continue
        for key in ("image", "labels", "mask"):
            if atlas.get(key) is not None:
                atlas[key] = str(_resolve(atlas[key], base_dir))
        coords = atlas.get("coordinates")
        if coords is not None and str(coords).lower() not in BUILTIN_COORDINATES:
            atlas["coordinates"] = str(_resolve(coords, base_dir))
        elif coords is not None:
            atlas["coordinates"] = str(coords).lower()
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: Path | str | None = None, space: str | None = None) -> Config:
    """Read and validate a YAML config (default: the packaged ``default.yaml``).

    ``space`` (from the command line) overrides the file's ``space``.
    """
    path = packaged_config() if path is None else Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"configuration file {path} is not valid YAML: {err}") from None
    if isinstance(data, dict) and space is not None:
        data["space"] = space
    config = parse_config(data, path.resolve().parent, str(path))
    for atlas in config.atlases:
        for key in ("image", "labels", "mask"):
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
    from .confounds import unused_overrides

    unused = unused_overrides(config.denoise)
    if unused:  # nilearn's load_confounds_strategy ignores them too, with a warning
        log.warning(
            "%s: denoise.%s ignored: not used by strategy %r",
            path,
            ", denoise.".join(unused),
            config.denoise.strategy,
        )
    return config

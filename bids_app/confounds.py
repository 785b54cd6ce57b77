"""fMRIPrep confounds: reading (every fMRIPrep generation) and strategy-based selection.

The selection reproduces nilearn 0.14.1 ``load_confounds_strategy`` /
``load_confounds`` (see docs/denoising.md): same columns, same sample mask,
same first-row filling and demeaning. It works on an already-read table, so
the caller decides where the files come from.

Column names of fMRIPrep 1.0/1.1 (camel case, ``_regressors.tsv``) are renamed
to the names fMRIPrep has used since 1.2 (:data:`LEGACY_NAMES`,
:data:`LEGACY_PATTERNS`); nilearn refuses those files.
"""

from __future__ import annotations

import json as _json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .clean import butterworth_padlen
from .errors import ConfigError, InputDataError
from .presets import effective_parameters

if TYPE_CHECKING:
    from .config import DenoiseConfig

# fMRIPrep 1.0.x / 1.1.x column names -> names used since fMRIPrep 1.2.
LEGACY_NAMES: dict[str, str] = {
    "X": "trans_x",
    "Y": "trans_y",
    "Z": "trans_z",
    "RotX": "rot_x",
    "RotY": "rot_y",
    "RotZ": "rot_z",
    "FramewiseDisplacement": "framewise_displacement",
    "stdDVARS": "std_dvars",
    "non-stdDVARS": "dvars",
    "vx-wisestdDVARS": "vx_wise_std_dvars",
    "WhiteMatter": "white_matter",
    "CSF": "csf",
    "GlobalSignal": "global_signal",
}
# Numbered legacy columns: pattern -> replacement (the number is kept as written).
LEGACY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"aCompCor(\d+)", r"a_comp_cor_\1"),
    (r"tCompCor(\d+)", r"t_comp_cor_\1"),
    (r"Cosine(\d+)", r"cosine\1"),
    (r"NonSteadyStateOutlier(\d+)", r"non_steady_state_outlier\1"),
    (r"AROMAAggrComp(\d+)", r"aroma_motion_\1"),
    (r"MotionOutlier(\d+)", r"motion_outlier\1"),
)

_SUFFIXES = {
    "basic": (),
    "derivatives": ("derivative1",),
    "power2": ("power2",),
    "full": ("derivative1", "power2", "derivative1_power2"),
}
_COMPCOR_PREFIXES = {
    "anat_combined": ("a",),
    "anat_separated": ("a", "w", "c"),
    "temporal": ("t",),
    "temporal_anat_combined": ("t", "a"),
    "temporal_anat_separated": ("t", "a", "w", "c"),
}
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass
class ConfoundSelection:
    """Selected regressors and kept volumes of one run.

    ``confounds`` has one row per volume (all volumes, censored ones included),
    like nilearn; ``sample_mask`` holds the kept volume indices, or is None when
    no volume is removed.
    """

    confounds: pd.DataFrame | None
    sample_mask: np.ndarray | None
    provenance: dict[str, Any] = field(default_factory=dict)


def _legacy_name(name: str) -> str | None:
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    for pattern, repl in LEGACY_PATTERNS:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def normalize_names(columns: list[str]) -> dict[str, str]:
    """Renames turning fMRIPrep 1.0/1.1 names into current ones (only when the target is free)."""
    taken = set(columns)
    renames: dict[str, str] = {}
    for col in columns:
        new = _legacy_name(col)
        if new is not None and new not in taken:
            renames[col] = new
            taken.add(new)
    return renames


def read_confounds(
    tsv: Path, json: Path | None = None
) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Read an fMRIPrep confounds table and its JSON sidecar.

    Parameters
    ----------
    tsv
        ``*_desc-confounds_timeseries.tsv`` (fMRIPrep >= 20.2) or
        ``*_desc-confounds_regressors.tsv`` / ``*_bold_confounds.tsv`` (older).
    json
        The sidecar; None or a missing file gives ``meta=None`` (only CompCor needs it).

    Returns
    -------
    table
        One column per confound, ``n/a`` as NaN, legacy names renamed
        (the renames are kept in ``table.attrs["renamed"]``).
    meta
        The sidecar mapping, or None.
    """
    tsv = Path(tsv)
    try:
        table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], low_memory=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputDataError(f"{tsv}: cannot read the confounds table: {err}") from None
    if table.shape[1] == 0:
        raise InputDataError(f"{tsv}: the confounds table has no columns")
    first = str(table.columns[0])
    try:
        float(first)
    except ValueError:
        pass
    else:
        raise InputDataError(
            f"{tsv}: the confounds table has no header row (first column name is {first!r})"
        )
    renames = normalize_names([str(c) for c in table.columns])
    table = table.rename(columns=renames)
    table.attrs["renamed"] = renames
    meta = None
    if json is not None and Path(json).is_file():
        try:
            meta = _json.loads(Path(json).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputDataError(f"{json}: cannot read the confounds sidecar: {err}") from None
        if not isinstance(meta, dict):
            raise InputDataError(f"{json}: the confounds sidecar is not a JSON object")
        meta = {normalize_names([k]).get(k, k): v for k, v in meta.items()}
    return table, meta


def _with_suffixes(bases: tuple[str, ...], model: str) -> list[str]:
    return list(bases) + [f"{b}_{s}" for b in bases for s in _SUFFIXES[model]]


def _require(table: pd.DataFrame, names: list[str], source: str, what: str) -> list[str]:
    missing = [n for n in names if n not in table.columns]
    if missing:
        hint = ""
        if any(m.endswith(("_derivative1", "_power2")) for m in missing):
            hint = " (fMRIPrep < 1.4 wrote no derivative/power2 expansions: use the 'basic' model)"
        raise InputDataError(
            f"{source}: missing confound column(s) {', '.join(missing)} needed by {what}{hint}"
        )
    return names


def _compcor_columns(
    table: pd.DataFrame, meta: dict[str, Any] | None, kind: str, n_compcor: int | str, source: str
) -> list[str]:
    if meta is None:
        sidecar = re.sub(r"\.tsv$", ".json", str(source))
        raise InputDataError(
            f"{source}: compcor ({kind}) needs the confounds JSON sidecar {Path(sidecar).name} "
            "(CompCor Method/Mask/Retained metadata); it is missing (fMRIPrep < 1.4 did not write it)"
        )
    masks = ("WM", "CSF") if kind.endswith("separated") else ("combined",)

    def top(cols: list[str]) -> list[str]:
        return cols if n_compcor == "all" else cols[: int(n_compcor)]

    selected: list[str] = []
    for prefix in _COMPCOR_PREFIXES[kind]:
        # Component names are regenerated from the number of sidecar entries of the prefix.
        count = sum(f"{prefix}_comp_cor" in key for key in meta)
        names = [f"{prefix}_comp_cor_{i:02d}" for i in range(count)]
        if prefix == "a":
            for mask in masks:
                group = []
                for name in names:
                    entry = meta.get(name)
                    if not isinstance(entry, dict):
                        raise InputDataError(
                            f"{source}: the JSON sidecar has no metadata entry for {name}"
                        )
                    if entry.get("Mask") == mask:
                        group.append(name)
                selected += top(group)
        else:
            selected += top(names)
    if not selected:
        raise InputDataError(f"{source}: the JSON sidecar lists no {kind} CompCor component")
    return _require(table, selected, source, f"compcor ({kind})")


def _scrub_outliers(
    table: pd.DataFrame, fd_threshold: float, dvars_threshold: float, scrub: int, source: str
) -> np.ndarray:
    """Boolean motion-outlier vector: FD or std DVARS above threshold, short segments added."""
    _require(table, ["framewise_displacement", "std_dvars"], source, "scrub")
    fd = table["framewise_displacement"].to_numpy(dtype=float)
    dvars = table["std_dvars"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        outlier = (fd > fd_threshold) | (dvars > dvars_threshold)  # NaN never an outlier
    if scrub > 0 and outlier.any():
        # Kept segments (between outliers or the run edges) shorter than scrub are removed.
        edges = np.flatnonzero(np.diff(np.concatenate([[1], outlier.astype(np.int8), [1]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start < scrub:
                outlier[start:stop] = True
    return outlier


def _custom_columns(table: pd.DataFrame, patterns: list[str], source: str) -> list[str]:
    """Columns named by ``denoise.confounds``: exact names or full-match regular expressions,
    matched against the current names and, for fMRIPrep 1.0/1.1 files, the names as written
    (a user's ``X`` is the renamed ``trans_x``)."""
    renamed = table.attrs.get("renamed") or {}
    original = {new: old for old, new in renamed.items()}
    columns = [str(c) for c in table.columns]
    found: list[str] = []
    for pattern in patterns:
        if pattern in columns:
            found.append(pattern)
            continue
        if pattern in renamed:
            found.append(renamed[pattern])
            continue
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ConfigError(
                f"denoise.confounds: {pattern!r} is neither a column name nor a valid regular "
                f"expression ({err})"
            ) from None
        matches = [c for c in columns if regex.fullmatch(c) or regex.fullmatch(original.get(c, c))]
        if not matches:
            raise InputDataError(
                f"{source}: no confound column matches denoise.confounds entry {pattern!r}"
            )
        found += matches
    return found


def _numeric(table: pd.DataFrame, columns: list[str], source: str) -> pd.DataFrame:
    out = {}
    for col in columns:
        try:
            out[col] = pd.to_numeric(table[col], errors="raise").astype(float)
        except (ValueError, TypeError):
            raise InputDataError(f"{source}: confound column {col} is not numeric") from None
    return pd.DataFrame(out, index=table.index)


def select_confounds(
    table: pd.DataFrame,
    meta: dict[str, Any] | None,
    denoise: DenoiseConfig,
    n_volumes: int,
    source: str,
) -> ConfoundSelection:
    """Select regressors and censored volumes as nilearn ``load_confounds_strategy`` does.

    Parameters
    ----------
    table, meta
        From :func:`read_confounds`.
    denoise
        Strategy, overrides (None = preset value) and custom columns.
    n_volumes
        Number of BOLD volumes; the table must have exactly that many rows.
    source
        The confounds file, named in error messages.
    """
    if len(table) != n_volumes:
        raise InputDataError(
            f"{source}: {len(table)} rows, but the BOLD series has {n_volumes} volumes"
        )
    params = effective_parameters(denoise)
    components = params["strategy"]
    columns: list[str] = []
    outlier = np.zeros(n_volumes, dtype=bool)

    nss_cols = [c for c in table.columns if "non_steady_state" in str(c)]
    nss = np.zeros(n_volumes, dtype=bool)
    if nss_cols:
        nss = _numeric(table, nss_cols, source).fillna(0).to_numpy().sum(axis=1) != 0

    for component in components:
        if component == "motion":
            columns += _require(table, _with_suffixes(MOTION, params["motion"]), source, "motion")
        elif component == "wm_csf":
            columns += _require(
                table, _with_suffixes(("csf", "white_matter"), params["wm_csf"]), source, "wm_csf"
            )
        elif component == "global_signal":
            columns += _require(
                table,
                _with_suffixes(("global_signal",), params["global_signal"]),
                source,
                "global_signal",
            )
        elif component == "high_pass":
            columns += [c for c in table.columns if "cosine" in str(c)]
        elif component == "compcor":
            columns += _compcor_columns(table, meta, params["compcor"], params["n_compcor"], source)
        elif component == "ica_aroma":
            if params["ica_aroma"] == "basic":
                aroma = [c for c in table.columns if "aroma" in str(c)]
                if not aroma:
                    raise InputDataError(
                        f"{source}: ica_aroma 'basic' needs aroma_motion_* columns; none found"
                    )
                columns += aroma
        elif component == "scrub":
            outlier = _scrub_outliers(
                table,
                params["fd_threshold"],
                params["std_dvars_threshold"],
                params["scrub"],
                source,
            )
    columns += _custom_columns(table, list(denoise.confounds), source)
    columns = sorted(set(columns))  # nilearn order: sorted, deduplicated

    censored = nss | outlier
    sample_mask = np.flatnonzero(~censored) if censored.any() else None

    confounds = None
    if columns:
        confounds = _numeric(table, columns, source).reset_index(drop=True)
        values = confounds.to_numpy(copy=True)
        if n_volumes > 1:
            first_nan = np.isnan(values[0])
            values[0, first_nan] = values[1, first_nan]  # derivatives: n/a on the first row only
        if params["demean"]:
            rows = values if sample_mask is None else values[sample_mask]
            if rows.shape[0]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-n/a column
                    values = values - np.nanmean(rows, axis=0)
        confounds = pd.DataFrame(values, columns=columns)
        kept_values = values if sample_mask is None else values[sample_mask]
        bad = ~np.isfinite(kept_values).all(axis=0)
        if bad.any() and kept_values.shape[0]:
            kept_idx = np.arange(n_volumes) if sample_mask is None else sample_mask
            details = []
            for j in np.flatnonzero(bad)[:5]:
                rows_bad = kept_idx[~np.isfinite(kept_values[:, j])]
                details.append(f"{columns[j]} (volumes {', '.join(map(str, rows_bad[:5]))})")
            raise InputDataError(
                f"{source}: n/a or infinite values in kept volumes of confound column(s) "
                + "; ".join(details)
            )

    fd_mean = None
    if "framewise_displacement" in table.columns:
        fd = pd.to_numeric(table["framewise_displacement"], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(fd).any():
            fd_mean = float(np.nanmean(fd))
    effective: dict[str, Any] = {"strategy": list(components), "demean": bool(params["demean"])}
    for key, needed_by in (
        ("motion", "motion"),
        ("wm_csf", "wm_csf"),
        ("global_signal", "global_signal"),
        ("compcor", "compcor"),
        ("n_compcor", "compcor"),
        ("ica_aroma", "ica_aroma"),
        ("scrub", "scrub"),
        ("fd_threshold", "scrub"),
        ("std_dvars_threshold", "scrub"),
    ):
        if needed_by in components:
            effective[key] = params[key]
    effective["confounds"] = list(denoise.confounds)
    provenance: dict[str, Any] = {
        "ConfoundStrategy": denoise.strategy,
        "ConfoundParameters": effective,
        "ConfoundRegressors": list(columns),
        "NonSteadyStateVolumes": np.flatnonzero(nss).tolist(),
        "ScrubbedVolumes": np.flatnonzero(outlier & ~nss).tolist(),
        "MeanFramewiseDisplacement": fd_mean,
    }
    renamed = table.attrs.get("renamed") or {}
    if renamed:
        provenance["ConfoundColumnsRenamed"] = dict(renamed)
    return ConfoundSelection(confounds=confounds, sample_mask=sample_mask, provenance=provenance)


def minimum_volumes(n_regressors: int, denoise: DenoiseConfig) -> int:
    """Fewest kept volumes a run needs: ``min_volumes`` or regressors + ``min_dof``."""
    if denoise.min_volumes is not None:
        return int(denoise.min_volumes)
    return int(n_regressors) + int(denoise.min_dof)


def exclusion_reason(
    n_kept: int, n_regressors: int, t_r: float, denoise: DenoiseConfig
) -> str | None:
    """Why a run has too little data to be used, or None when it is usable.

    A run is excluded when it keeps fewer volumes than :func:`minimum_volumes`
    or (when ``min_seconds`` is set) less than ``min_seconds`` of data.
    """
    if n_kept <= 0:
        return "every volume is censored (0 volumes kept after non-steady-state and scrubbing)"
    needed = minimum_volumes(n_regressors, denoise)
    if n_kept < needed:
        why = (
            f"min_volumes {needed}"
            if denoise.min_volumes is not None
            else f"{n_regressors} confound regressors + min_dof {denoise.min_dof}"
        )
        return f"only {n_kept} volumes kept; at least {needed} needed ({why})"
    if denoise.min_seconds is not None and n_kept * t_r < denoise.min_seconds:
        seconds = n_kept * t_r
        return (
            f"only {seconds:.1f} s of data kept ({n_kept} volumes x {t_r:g} s); "
            f"min_seconds is {denoise.min_seconds:g}"
        )
    if denoise.filter == "butterworth" and (
        denoise.low_pass is not None or denoise.high_pass is not None
    ):
        padlen = butterworth_padlen(denoise.low_pass, denoise.high_pass, t_r)
        if n_kept <= padlen:
            return (
                f"only {n_kept} volumes kept; the order-5 Butterworth filter needs more than "
                f"{padlen}"
            )
    return None


__all__ = [
    "ConfoundSelection",
    "LEGACY_NAMES",
    "LEGACY_PATTERNS",
    "read_confounds",
    "select_confounds",
    "exclusion_reason",
    "minimum_volumes",
    "normalize_names",
]

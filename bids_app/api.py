"""Python API, for notebooks and scripts (documented with examples in docs/api.md).

- :func:`run_participant` / :func:`run_group`: a level exactly as the command line runs it;
- :func:`process_bold`, :func:`extract`, :func:`denoise`, :func:`connectivity`: one run from
  file paths or nibabel images, nothing written;
- :func:`load_timeseries`, :func:`load_matrices`, :func:`load_qc`: derivatives read back as
  pandas objects.

Errors are the app's own classes (:mod:`bids_app.errors`), which also subclass the
matching builtin: ``ValueError`` for bad input data or configuration,
``FileNotFoundError`` for a missing input, ``LookupError`` for a selection that matches
nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import naming
from .config import Config, load_config, packaged_config, parse_config
from .discover import RunInputs, Selection, find_runs, strip_prefix
from .errors import InputDataError
from .group import GroupResult
from .participant import Summary

ConfigLike = Config | Mapping[str, Any] | str | Path | None


def _config(config: ConfigLike, space: str | None = None, check_files: bool = True) -> Config:
    """A Config from a Config, a mapping (paths relative to the working directory), a YAML
    path or a preset name (None: the packaged default)."""
    from .config import list_presets

    if isinstance(config, Config):
        return config if space is None else config.model_copy(update={"space": space})
    if isinstance(config, Mapping):
        data = dict(config) | ({"space": space} if space else {})
        return parse_config(data, Path.cwd(), "<mapping>")
    if config is not None and not Path(config).exists() and str(config) in list_presets():
        config = packaged_config(str(config))
    return load_config(config, space=space, check_files=check_files)


def _labels(values: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return (values,) if isinstance(values, str) else tuple(values)


# --- levels ---------------------------------------------------------------------------------


def run_participant(
    bids_dir: str | Path,
    output_dir: str | Path,
    config: ConfigLike = None,
    *,
    participant_label: str | Iterable[str] | None = None,
    session_label: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    space: str | None = None,
    bids_filters: Mapping[str, Mapping[str, Any]] | None = None,
    n_jobs: int = 1,
    dask_scheduler: str | None = None,
    database_dir: str | Path | None = None,
    reports: bool = True,
    atlas_cache: str | Path | None = None,
) -> Summary:
    """The participant level, as ``bids-connectome BIDS_DIR OUTPUT_DIR participant``.

    Returns the :class:`~bids_app.participant.Summary` (runs done, skipped, excluded,
    failed, and the exit code the command line would give).
    """
    from .executors import make_executor
    from .participant import make_context
    from .participant import run_participant as _run

    cfg = _config(config, space)
    bids, out = Path(bids_dir).resolve(), Path(output_dir).resolve()
    aroma = cfg.denoise.strategy == "ica_aroma" and cfg.denoise.ica_aroma in (None, "full")
    selection = Selection(
        space=cfg.space,
        res=cfg.res,
        participants=strip_prefix(_labels(participant_label), "sub-"),
        sessions=strip_prefix(_labels(session_label), "ses-"),
        tasks=strip_prefix(_labels(task), "task-"),
        filters={k: dict(v) for k, v in (bids_filters or {}).items()},
        desc="smoothAROMAnonaggr" if aroma else "preproc",
    )
    runs = find_runs(bids, selection, None if database_dir is None else Path(database_dir))
    executor = make_executor(n_jobs, dask_scheduler)
    try:
        cache = None if atlas_cache is None else Path(atlas_cache)
        return _run(make_context(cfg, out, bids, cache_dir=cache, reports=reports), runs, executor)
    finally:
        executor.close()


def run_group(
    output_dir: str | Path,
    config: ConfigLike = None,
    *,
    participant_label: str | Iterable[str] | None = None,
    session_label: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    group_label: str | None = None,
    reports: bool = True,
) -> GroupResult:
    """The group level, as ``bids-connectome BIDS_DIR OUTPUT_DIR group``.

    Returns the :class:`~bids_app.group.GroupResult` (folder, files written, inputs left out).
    """
    from .group import run_group as _run

    cfg = _config(config, check_files=False)
    result = _run(
        Path(output_dir),
        cfg,
        participants=strip_prefix(_labels(participant_label), "sub-"),
        sessions=strip_prefix(_labels(session_label), "ses-"),
        tasks=strip_prefix(_labels(task), "task-"),
        subset_label=group_label,
    )
    if reports and result.written:
        from .report import group_report

        group_report(Path(output_dir), result.folder, cfg)
    return result


# --- one run, nothing written ---------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`process_bold` computed for one run, as pandas objects."""

    timeseries: dict[str, pd.DataFrame]  # atlas -> kept volumes x regions (denoised)
    raw: dict[str, pd.DataFrame]  # atlas -> volumes x regions (before denoising)
    coverage: dict[str, pd.DataFrame]
    matrices: dict[str, dict[str, pd.DataFrame]]  # atlas -> measure label -> regions x regions
    confounds: list[str]  # regressors used
    sample_mask: np.ndarray  # kept volumes
    excluded: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


class _ImageFiles:
    """Paths for images given as nibabel objects (written to a temporary folder)."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None

    def folder(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bids-connectome-api-")
        return Path(self._tmp.name)

    def path(self, image: Any, name: str) -> Path | None:
        if image is None or isinstance(image, str | Path):
            return None if image is None else Path(image)
        import nibabel as nib

        path = self.folder() / f"{name}.nii"
        nib.save(image, path)
        return path

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _atlas_config(atlases: Iterable[Mapping[str, Any] | str], extra: Mapping[str, Any]) -> Config:
    entries = []
    for i, atlas in enumerate(atlases):
        if isinstance(atlas, str):  # a built-in coordinate set
            atlas = {"name": f"{atlas.capitalize()}", "kind": "spheres", "coordinates": atlas}
        entries.append(dict(atlas) if "name" in atlas else {"name": f"Atlas{i + 1}", **atlas})
    return parse_config({"atlases": entries, **extra}, Path.cwd(), "<atlases>")


def process_bold(
    bold: str | Path | Any,
    confounds: str | Path,
    atlases: Iterable[Mapping[str, Any] | str],
    *,
    mask: str | Path | Any | None = None,
    denoise: Mapping[str, Any] | None = None,
    connectivity: Mapping[str, Any] | None = None,
    t_r: float | None = None,
) -> RunResult:
    """Extract, denoise and connect one run; nothing is written.

    Parameters
    ----------
    bold, mask
        4D BOLD and brain mask: file paths or nibabel images.
    confounds
        The run's fMRIPrep confounds TSV (its JSON sidecar is read when beside it).
    atlases
        Atlas entries as in the configuration file (``{"name": ..., "kind": "labels",
        "image": ...}``), or names of built-in coordinate sets (``"power2011"``).
    denoise, connectivity
        The ``denoise`` / ``connectivity`` sections of a configuration.
    t_r
        Repetition time (s); default: the BOLD's JSON sidecar, else its header.
    """
    from . import extract
    from .engine import RunContext, compute_run

    cfg = _atlas_config(
        atlases, {"denoise": dict(denoise or {}), "connectivity": dict(connectivity or {})}
    )
    files = _ImageFiles()
    try:
        bold_path = files.path(bold, "bold")
        mask_path = files.path(mask, "mask")
        tsv = Path(confounds)
        side = tsv.with_suffix(".json")
        sidecars: tuple[Path, ...] = ()
        bold_json = Path(str(bold_path).removesuffix(".gz").removesuffix(".nii") + ".json")
        if t_r is None and bold_json.is_file():
            sidecars = (bold_json,)
        run = RunInputs(
            bold=bold_path,
            mask=mask_path,
            confounds=tsv,
            confounds_json=side if side.is_file() else None,
            entities={"sub": "api"},
            sidecars=sidecars,
        )
        if t_r is not None:
            run = _with_tr(run, float(t_r), files)
        sources = [extract.load_atlas(a) for a in cfg.atlases]
        ctx = RunContext(cfg, sources, Path.cwd(), bold_path.parent, config_hash="")
        record = compute_run(run, ctx)
    finally:
        files.close()
    several = len(cfg.connectivity.estimator) > 1
    return RunResult(
        timeseries={a.name: pd.DataFrame(a.cleaned, columns=a.regions) for a in record.atlases},
        raw={a.name: pd.DataFrame(a.raw, columns=a.regions) for a in record.atlases},
        coverage={a.name: a.coverage for a in record.atlases},
        matrices={
            a.name: {
                naming.measure_label(m, e, several): pd.DataFrame(
                    matrix, index=a.regions, columns=a.regions
                )
                for (m, e), matrix in a.matrices.items()
            }
            for a in record.atlases
        },
        confounds=list(record.provenance.get("ConfoundRegressors", [])),
        sample_mask=record.sample_mask,
        excluded=record.excluded,
        provenance=record.provenance,
    )


def _with_tr(run: RunInputs, t_r: float, files: _ImageFiles) -> RunInputs:
    import dataclasses
    import json

    side = files.folder() / "bold.json"
    side.write_text(json.dumps({"RepetitionTime": t_r}))
    return dataclasses.replace(run, sidecars=(side,))


def extract(
    bold: str | Path | Any,
    atlases: Iterable[Mapping[str, Any] | str],
    *,
    mask: str | Path | Any | None = None,
    smoothing_fwhm: float | None = None,
) -> dict[str, pd.DataFrame]:
    """Raw region signals (volumes x regions) of every atlas, in one pass over the BOLD."""
    from . import extract as _extract

    cfg = _atlas_config(atlases, {})
    files = _ImageFiles()
    try:
        bold_path = files.path(bold, "bold")
        shape, affine, _ = _extract.read_header(bold_path)
        brain = None
        if mask is not None:
            from .extract.atlas import load_mask_image

            brain, _ = load_mask_image(files.path(mask, "mask"))
        sources = [_extract.load_atlas(a) for a in cfg.atlases]
        ops = _extract.prepare(sources, tuple(shape[:3]), affine, brain)
        signals = _extract.extract_run(bold_path, ops, smoothing_fwhm=smoothing_fwhm)
    finally:
        files.close()
    return {s.name: pd.DataFrame(signals.signals[s.name], columns=s.region_names) for s in sources}


def denoise(
    signals: pd.DataFrame | np.ndarray,
    confounds: str | Path,
    t_r: float,
    **options: Any,
) -> pd.DataFrame:
    """Denoise region signals with a run's fMRIPrep confounds.

    ``options`` are the keys of the configuration's ``denoise`` section (``strategy``,
    ``high_pass``, ``scrub``, ...). The result has one row per kept volume (index: the
    volume numbers).
    """
    from . import clean
    from . import confounds as _confounds
    from .config import DenoiseConfig

    den = DenoiseConfig(**options)
    frame = signals if isinstance(signals, pd.DataFrame) else pd.DataFrame(np.asarray(signals))
    tsv = Path(confounds)
    side = tsv.with_suffix(".json")
    table, meta = _confounds.read_confounds(tsv, side if side.is_file() else None)
    sel = _confounds.select_confounds(table, meta, den, n_volumes=len(frame), source=str(tsv))
    cleaned = clean.clean(
        frame.to_numpy(dtype=float),
        t_r=t_r,
        confounds=None if sel.confounds is None else sel.confounds.to_numpy(dtype=float),
        sample_mask=sel.sample_mask,
        **den.clean_options(),
    )
    kept = np.arange(len(frame)) if sel.sample_mask is None else np.asarray(sel.sample_mask)
    return pd.DataFrame(cleaned, columns=frame.columns, index=pd.Index(kept, name="volume"))


def connectivity(
    timeseries: pd.DataFrame | np.ndarray,
    measure: str = "correlation",
    estimator: str = "ledoit_wolf",
) -> pd.DataFrame:
    """Connectivity matrix of cleaned signals (regions x regions, named as the columns)."""
    from . import connect

    frame = timeseries if isinstance(timeseries, pd.DataFrame) else pd.DataFrame(timeseries)
    try:
        matrix = connect.connectivity_matrix(frame.to_numpy(dtype=float), measure, estimator)
    except ValueError as err:
        raise InputDataError(str(err)) from None
    return pd.DataFrame(matrix, index=frame.columns, columns=frame.columns)


# --- derivatives read back ------------------------------------------------------------------


def _outputs(output_dir: Path, suffix: str, entities: Mapping[str, Any]):
    from .group import scan_outputs

    wanted = {
        naming.LONG_NAMES.get(k, k): str(v).split("-", 1)[-1]
        for k, v in entities.items()
        if v is not None
    }
    for f in scan_outputs(Path(output_dir)):
        if (
            f.suffix == suffix
            and f.extension in (".tsv", ".json")
            and all(f.entities.get(k) == v for k, v in wanted.items())
        ):
            yield f


def load_timeseries(output_dir: str | Path, atlas: str, **entities: Any) -> dict[str, pd.DataFrame]:
    """Denoised time series of ``atlas`` per run (key: the run label), e.g.
    ``load_timeseries(out, "Schaefer400", sub="01", desc="simple")``."""
    from .write import read_tsv

    return {
        naming.run_label(f.entities): read_tsv(f.path)
        for f in _outputs(Path(output_dir), "timeseries", {"atlas": atlas, **entities})
        if f.extension == ".tsv"
    }


def load_matrices(
    output_dir: str | Path, atlas: str, meas: str = "correlation", **entities: Any
) -> dict[str, pd.DataFrame]:
    """Participant-level matrices per run / unit, region names as index and columns."""
    from .write import read_tsv

    out = {}
    for f in _outputs(Path(output_dir), "relmat", {"atlas": atlas, "meas": meas, **entities}):
        if f.extension == ".tsv":
            frame = read_tsv(f.path)
            frame.index = frame.columns
            out[naming.run_label(f.entities)] = frame
    return out


def load_qc(output_dir: str | Path, **entities: Any) -> pd.DataFrame:
    """One row per run from the ``*_qc.json`` files (the group QC table's columns)."""
    import json

    from .group import OutputFile, qc_table

    runs = []
    for f in _outputs(Path(output_dir), "qc", entities):
        runs.append(
            OutputFile(f.path, f.entities, f.suffix, f.extension, json.loads(f.path.read_text()))
        )
    if not runs:
        from .errors import NoInputError

        raise NoInputError(f"no *_qc.json matching {dict(entities)} in {output_dir}")
    return qc_table(runs, Path(output_dir))


__all__ = [
    "RunResult",
    "connectivity",
    "denoise",
    "extract",
    "load_matrices",
    "load_qc",
    "load_timeseries",
    "process_bold",
    "run_group",
    "run_participant",
]

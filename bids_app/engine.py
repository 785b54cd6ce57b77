"""The unit of work: one BOLD run, computed by a pure step and written by one writer.

``compute_run(run, context) -> RunRecord`` chains confounds -> extract -> clean ->
connect and returns arrays and provenance only (no output path, no file written).
``process_run(task, context) -> RunOutcome`` is what an executor runs: compute, write
the run's files atomically (:func:`bids_app.write.write_run`), record them
(:mod:`bids_app.state`), and return a small outcome; nothing per run goes back to the
parent but that outcome. Session / subject connectomes are computed afterwards from
the written time series (:func:`compute_unit`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import naming
from .discover import RunInputs, read_metadata
from .errors import EXIT_FAILURE, AppError, InputDataError
from .vocabulary import INVERSE_MEASURES

if TYPE_CHECKING:
    import pandas as pd

    from .config import Config
    from .extract import AtlasSource

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything a run needs besides its own inputs; pickles (sent once to every worker).

    Attributes
    ----------
    config
        The validated configuration.
    sources
        The configured atlases, loaded once in their own space.
    output_dir, bids_dir
        Absolute folders; outputs are written under ``output_dir`` by the worker itself.
    config_hash
        ``Config.digest(participant_only=True)``: recorded in every sidecar.
    cache_dir
        Where prepared atlas operators are cached on disk (``--atlas-cache``; None: no
        cache), shared safely by concurrent jobs.
    capture_logs
        True in worker processes: log records travel back in the outcome.
    reports
        Draw each run's report figures (``OUTPUT_DIR/sub-<L>/figures/``).
    """

    config: Config
    sources: list[AtlasSource]
    output_dir: Path
    bids_dir: Path
    config_hash: str
    cache_dir: Path | None = None
    capture_logs: bool = False
    reports: bool = False  # per-run report figures (bids_app.report)
    # Grid-level operators of the last grid seen in this process (not pickled: every
    # worker process keeps its own).
    _grid: Any = field(default=None, repr=False, compare=False)

    @property
    def desc(self) -> str:
        return self.config.denoise.name

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_grid"} | {"_grid": None}

    def grid_operators(self, shape: tuple[int, ...], affine: np.ndarray):
        """The atlases' grid-level operators for a BOLD grid: from memory when the last
        run had the same grid, else from the on-disk cache (``cache_dir``) or built."""
        from .extract import prepare_grid

        key = (tuple(int(n) for n in shape[:3]), np.asarray(affine, dtype=float).tobytes())
        if self._grid is None or self._grid[0] != key:
            self._grid = (key, prepare_grid(self.sources, key[0], affine, cache_dir=self.cache_dir))
        return self._grid[1]


@dataclass
class AtlasSignals:
    """One atlas of a run: region signals before and after denoising, coverage, matrices."""

    name: str
    kind: str
    regions: list[str]
    raw: np.ndarray  # (volumes, regions), every volume, before denoising
    cleaned: np.ndarray  # (kept volumes, regions)
    coverage: pd.DataFrame
    matrices: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (measure, est.)
    parcels: Any = None  # CIFTI runs: the nibabel ParcelsAxis (ptseries / pconn outputs)

    @property
    def missing(self) -> list[str]:
        empty = np.isnan(self.cleaned).all(axis=0)
        return [n for n, e in zip(self.regions, empty, strict=True) if e]


@dataclass
class RunRecord:
    """What :func:`compute_run` computed for one run (arrays and provenance, no paths)."""

    entities: dict[str, str]
    n_volumes: int
    t_r: float
    sample_mask: np.ndarray  # kept volume indices
    provenance: dict[str, Any]  # confound selection (see confounds.select_confounds)
    confounds: np.ndarray | None = None  # (volumes, regressors) as selected
    framewise_displacement: np.ndarray | None = None
    excluded: str | None = None
    atlases: list[AtlasSignals] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return int(len(self.sample_mask))

    @property
    def censored_everything(self) -> bool:
        return self.excluded is not None and self.n_kept == 0


@dataclass
class RunTask:
    """A run to process, the fingerprint its outputs will carry and the identity of the
    inputs it was made of (recorded in the run's manifest)."""

    run: RunInputs
    fingerprint: str
    inputs: list[list[Any]] | None = None

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def entities(self) -> dict[str, str]:
        return self.run.entities


@dataclass
class RunOutcome:
    """The small result a worker sends back: status, message, timings, log records."""

    label: str
    entities: dict[str, str]
    status: str  # "done", "excluded", "failed", "skipped"
    kind: str = "run"  # or "unit" (a session / subject connectome)
    message: str | None = None
    detail: str | None = None  # one line for the log, e.g. volumes kept
    exit_code: int = 0
    n_files: int = 0
    fingerprint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    records: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "excluded", "skipped")


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._t
        self._t = now


def repetition_time(run: RunInputs, meta: dict[str, Any], zooms: tuple[float, ...]) -> float:
    """The run's TR in seconds: the sidecar's ``RepetitionTime``, else the header's."""
    if "RepetitionTime" in meta:
        value = meta["RepetitionTime"]
        where = run.sidecars[-1] if run.sidecars else run.bold
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputDataError(
                f"{where}: RepetitionTime must be a number of seconds, got {value!r}"
            )
        if not math.isfinite(value) or value <= 0:
            raise InputDataError(f"{where}: RepetitionTime must be positive, got {value!r}")
        return float(value)
    t_r = float(zooms[3]) if len(zooms) > 3 else 0.0
    if not math.isfinite(t_r) or t_r <= 0:
        raise InputDataError(f"{run.bold}: no RepetitionTime in the sidecar and none in the header")
    log.warning(
        "%s: RepetitionTime missing from the sidecar; using the header's %.3f s", run.label, t_r
    )
    return t_r


def _brain_mask(run: RunInputs, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray | None:
    from .extract.atlas import load_mask_image

    if run.mask is None:
        log.warning("%s: no brain mask found; using every voxel", run.label)
        return None
    mask, mask_affine = load_mask_image(run.mask)
    if mask.shape != tuple(shape[:3]) or not np.allclose(mask_affine, affine, atol=1e-3):
        raise InputDataError(
            f"{run.mask}: brain mask grid {mask.shape} does not match the BOLD grid "
            f"{tuple(shape[:3])} of {run.bold.name}"
        )
    return mask


def compute_run(run: RunInputs, ctx: RunContext) -> RunRecord:
    """Denoised region signals, coverage and connectivity of one run (no file written).

    Volume runs go through the streaming NIfTI extraction, surface runs (CIFTI dense
    time series, GIFTI hemisphere pairs) through :mod:`bids_app.extract.surface`;
    denoising and connectivity are the same for both. Raises
    :class:`~bids_app.errors.InputDataError` (naming the file) for bad inputs. A run
    with too little data comes back with ``excluded`` set and no signals.
    """
    from . import clean, confounds, extract

    if run.problem:
        raise InputDataError(f"{run.bold}: {run.problem}")
    watch = _Stopwatch()
    config, den = ctx.config, ctx.config.denoise
    if run.grid == "volume":
        shape, affine, zooms = extract.read_header(run.bold)
        if len(shape) != 4 or shape[3] < 2:
            raise InputDataError(f"{run.bold}: expected a 4D BOLD series, got shape {shape}")
        n_volumes = int(shape[3])
    else:
        from .extract.surface import open_surface_data

        surface = open_surface_data(run.data)
        n_volumes = surface.n_frames
        zooms = (0.0, 0.0, 0.0, float(surface.t_r or 0.0))
        if n_volumes < 2:
            raise InputDataError(
                f"{surface.label}: expected a time series, got {n_volumes} frame(s)"
            )
    t_r = repetition_time(run, read_metadata(run), zooms)
    _check_frequencies(run, den, t_r)
    table, meta = confounds.read_confounds(run.confounds, run.confounds_json)
    sel = confounds.select_confounds(
        table, meta, den, n_volumes=n_volumes, source=str(run.confounds)
    )
    kept = np.arange(n_volumes) if sel.sample_mask is None else np.asarray(sel.sample_mask)
    regressors = None if sel.confounds is None else sel.confounds.to_numpy(dtype=float)
    fd = None
    if "framewise_displacement" in table.columns:
        fd = table["framewise_displacement"].to_numpy(dtype=float, na_value=np.nan)
    record = RunRecord(
        entities=dict(run.entities),
        n_volumes=n_volumes,
        t_r=t_r,
        sample_mask=kept,
        provenance=sel.provenance,
        confounds=regressors,
        framewise_displacement=fd,
    )
    n_regressors = 0 if regressors is None else regressors.shape[1]
    record.excluded = confounds.exclusion_reason(len(kept), n_regressors, t_r, den)
    if record.excluded:
        record.timings = watch.timings
        return record
    parcels: dict[str, Any] = {}
    if run.grid == "volume":
        mask = _brain_mask(run, shape, affine)
        watch.lap("read")
        ops = extract.apply_mask(ctx.grid_operators(shape, affine), mask)
        watch.lap("prepare")
        signals = extract.extract_run(run.bold, ops, smoothing_fwhm=den.smoothing_fwhm)
    else:
        from .extract.surface import extract_surface_run, prepare_surface

        watch.lap("read")
        ops = prepare_surface(ctx.sources, surface)
        watch.lap("prepare")
        signals = extract_surface_run(surface, ops)
        if run.grid == "cifti":
            parcels = {src.name: ops.parcels(src.name) for src in ctx.sources}
    watch.lap("extract")
    _warn_coverage(run, signals)
    names = [src.name for src in ctx.sources]
    raw = [signals.signals[n] for n in names]
    cleaned = clean.clean(
        np.hstack(raw),
        t_r=t_r,
        confounds=regressors,
        sample_mask=sel.sample_mask,
        **den.clean_options(),
    )
    parts = np.split(cleaned, np.cumsum([r.shape[1] for r in raw])[:-1], axis=1)
    _drop_flat_regions(run, ctx.sources, raw, parts)
    watch.lap("clean")
    for src, raw_ts, ts in zip(ctx.sources, raw, parts, strict=True):
        atlas = AtlasSignals(
            name=src.name,
            kind=src.kind,
            regions=src.region_names,
            raw=raw_ts,
            cleaned=ts,
            coverage=signals.coverage[src.name],
            parcels=parcels.get(src.name),
        )
        if config.connectivity.aggregate == "run":
            atlas.matrices = connectivity(ts, config, f"{run.label}: atlas {src.name}")
        record.atlases.append(atlas)
    watch.lap("connect")
    record.timings = watch.timings
    return record


def _check_frequencies(run: RunInputs, den, t_r: float) -> None:
    nyquist = 0.5 / t_r
    if den.high_pass is not None and den.high_pass >= nyquist:
        raise InputDataError(
            f"{run.bold}: denoise.high_pass {den.high_pass:g} Hz is at or above the Nyquist "
            f"frequency {nyquist:g} Hz of this run (RepetitionTime {t_r:g} s): nothing would be left"
        )
    if den.low_pass is not None and den.low_pass >= nyquist:
        log.warning(
            "%s: denoise.low_pass %g Hz is at or above the Nyquist frequency %g Hz of this run "
            "(RepetitionTime %g s): it is lowered to just below Nyquist, as nilearn does, so the "
            "low-pass removes almost nothing (a band-pass becomes a high-pass)",
            run.label,
            den.low_pass,
            nyquist,
            t_r,
        )


def _warn_coverage(run: RunInputs, signals) -> None:
    """One warning per atlas for regions left without signal, one for non-finite voxels."""
    if signals.n_nonfinite:
        log.warning(
            "%s: %d voxels of %s have NaN or infinite values in some volume: they count as 0 "
            "and are not usable (see the coverage tables)",
            run.label,
            signals.n_nonfinite,
            run.bold.name,
        )
    for atlas, table in signals.coverage.items():
        empty = table.loc[~table["usable"].astype(bool), "name"].astype(str).tolist()
        if empty:
            log.warning(
                "%s: atlas %s: %d region(s) without signal in %s (outside the brain mask or "
                "the field of view, lost in resampling, or below min_coverage), n/a: %s",
                run.label,
                atlas,
                len(empty),
                Path(run.bold).name,
                ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""),
            )


def _drop_flat_regions(
    run: RunInputs, sources: list, raw: list[np.ndarray], cleaned: list[np.ndarray]
) -> None:
    """Regions whose signal is constant (e.g. an all-zero BOLD) are n/a, with a warning;
    if no region of any atlas has signal the run fails."""
    any_signal = False
    for src, r, c in zip(sources, raw, cleaned, strict=True):
        finite = np.isfinite(r).all(axis=0)
        flat = finite & (np.ptp(np.where(np.isfinite(r), r, 0), axis=0) == 0)
        if flat.any():
            c[:, flat] = np.nan
            names = [n for n, f in zip(src.region_names, flat, strict=True) if f]
            log.warning(
                "%s: atlas %s: %d region(s) have a constant signal (no variance in %s) and are "
                "n/a: %s",
                run.label,
                src.name,
                len(names),
                run.bold.name,
                ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""),
            )
        any_signal |= bool((finite & ~flat).any())
    if not any_signal:
        raise InputDataError(
            f"{run.bold}: no region of any atlas has signal (the BOLD is constant or zero inside "
            "every region)"
        )


def connectivity(
    ts: np.ndarray, config: Config, what: str = ""
) -> dict[tuple[str, str], np.ndarray]:
    """Every participant-level measure x estimator of one block of cleaned signals.

    A measure that needs the inverse of a singular empirical covariance (fewer volumes
    than regions) is skipped with a warning.
    """
    from . import connect

    n_volumes = ts.shape[0]
    n_regions = int((~np.isnan(ts).any(axis=0)).sum())
    out = {}
    for measure in config.participant_measures:
        for estimator in config.connectivity.estimator:
            inverse = measure in INVERSE_MEASURES
            if inverse and estimator == "empirical" and n_volumes <= n_regions:
                log.warning(
                    "%s: %s with estimator empirical skipped: the covariance of %d volumes and "
                    "%d regions is singular (ledoit_wolf and graphical_lasso are not)",
                    what,
                    measure,
                    n_volumes,
                    n_regions,
                )
                continue
            out[(measure, estimator)] = connect.connectivity_matrix(ts, measure, estimator)
    return out


# --- the worker task ----------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Collects this thread's log records while a task runs (worker processes)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(self.local, "records", None)
        if records is not None:
            records.append((record.levelno, record.getMessage()))


_CAPTURE = _Capture()


@contextmanager
def captured_logs(enabled: bool):
    """Yield the list that receives this thread's ``bids_app`` log records (if enabled)."""
    records: list[tuple[int, str]] = []
    if not enabled:
        yield records
        return
    root = logging.getLogger("bids_app")
    if _CAPTURE not in root.handlers:
        for handler in list(root.handlers):  # inherited from the parent by fork
            root.removeHandler(handler)
        root.addHandler(_CAPTURE)
        root.propagate = False
        root.setLevel(logging.DEBUG)
    _CAPTURE.local.records = records
    try:
        yield records
    finally:
        _CAPTURE.local.records = None


def process_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """Compute one run and write its outputs; never raises (a failure is an outcome)."""
    from . import state
    from .write import write_run

    run = task.run
    outcome = RunOutcome(label=run.label, entities=dict(run.entities), status="failed")
    outcome.fingerprint = task.fingerprint
    with captured_logs(ctx.capture_logs) as records:
        try:
            record = compute_run(run, ctx)
            t0 = time.perf_counter()
            files = write_run(record, run, ctx)
            record.timings["write"] = time.perf_counter() - t0
            if ctx.reports:  # excluded runs too: their FD figure shows why
                from .report import run_figures

                files += run_figures(record, ctx)
            state.commit_run(run.entities, ctx, task.fingerprint, files, task.inputs)
            outcome.timings = record.timings
            outcome.n_files = len(files)
            outcome.detail = (
                f"{record.n_kept}/{record.n_volumes} volumes kept, "
                f"{len(record.provenance.get('ConfoundRegressors', []))} regressors, "
                f"{len(record.atlases)} atlases"
            )
            if record.censored_everything:
                outcome.message = (
                    f"every volume is censored ({run.confounds.name}); no output for this run"
                )
                outcome.exit_code = EXIT_FAILURE
            elif record.excluded:
                outcome.status, outcome.message = "excluded", record.excluded
            else:
                outcome.status = "done"
        except AppError as err:
            outcome.message, outcome.exit_code = str(err), err.exit_code
        except Exception as err:  # keep the other runs going; report the crash
            log.debug("%s: %s", run.label, traceback.format_exc())
            outcome.message = f"unexpected error: {type(err).__name__}: {err}"
            outcome.exit_code = EXIT_FAILURE
        if outcome.status == "failed" and outcome.n_files == 0:
            try:
                state.discard_run(run.entities, ctx)
            except OSError as err:
                log.warning("%s: cannot remove its earlier outputs: %s", run.label, err)
    outcome.records = records
    return outcome


# --- session / subject connectomes --------------------------------------------------------------


@dataclass
class UnitTask:
    """Runs concatenated into one connectome (``connectivity.aggregate`` session/subject)."""

    entities: dict[str, str]
    runs: list[dict[str, str]]  # member runs' entities, sorted
    fingerprint: str

    @property
    def label(self) -> str:
        return naming.run_label(self.entities)


@dataclass
class UnitRecord:
    """What :func:`compute_unit` computed: per atlas the runs used and the matrices."""

    entities: dict[str, str]
    members: dict[str, list[dict[str, Any]]]  # atlas -> [{"timeseries": rel path, "volumes": n}]
    excluded: list[dict[str, Any]]  # runs left out: {"run": label, "reason": why}
    matrices: dict[str, dict[tuple[str, str], np.ndarray]]  # atlas -> (measure, est.) -> matrix


def compute_unit(task: UnitTask, ctx: RunContext) -> UnitRecord:
    """Read the member runs' time series back and compute the unit's matrices."""
    import json

    from .write import read_matrix

    used, excluded = [], []
    for ents in task.runs:
        qc_path = naming.participant_path(ctx.output_dir, ents, "qc", ".json", desc=ctx.desc)
        try:
            qc = json.loads(qc_path.read_text())
        except (OSError, ValueError) as err:
            raise InputDataError(f"{qc_path}: cannot read the run's QC sidecar: {err}") from None
        if qc.get("Excluded"):
            excluded.append({"run": naming.run_label(ents), "reason": qc.get("ExclusionReason")})
        else:
            used.append(ents)
    record = UnitRecord(dict(task.entities), {}, excluded, {})
    for src in ctx.sources:
        blocks, listing = [], []
        for ents in used:
            path = naming.participant_path(
                ctx.output_dir, ents, "timeseries", ".tsv", atlas=src.name, desc=ctx.desc
            )
            names, values = read_matrix(path)
            if names != src.region_names:
                raise InputDataError(f"{path}: regions differ from atlas {src.name}'s")
            blocks.append(values)
            listing.append(
                {
                    "timeseries": path.relative_to(ctx.output_dir).as_posix(),
                    "volumes": int(values.shape[0]),
                }
            )
        if blocks:
            record.members[src.name] = listing
            record.matrices[src.name] = connectivity(
                np.vstack(blocks),
                ctx.config,
                f"{naming.run_label(task.entities)}: atlas {src.name}",
            )
    return record


def process_unit(task: UnitTask, ctx: RunContext) -> RunOutcome:
    """Compute and write one session / subject connectome; never raises."""
    from . import state
    from .write import write_unit

    label = task.label
    outcome = RunOutcome(label=label, entities=dict(task.entities), status="failed", kind="unit")
    with captured_logs(ctx.capture_logs) as records:
        try:
            record = compute_unit(task, ctx)
            if not record.matrices:
                log.warning("%s: every run is excluded; no connectome", label)
            files = write_unit(record, ctx)
            if ctx.reports and record.matrices:
                from .report import unit_figures

                files += unit_figures(record, ctx)
            state.commit_unit(task.entities, ctx, task.fingerprint, files)
            outcome.status, outcome.n_files = "done", len(files)
        except AppError as err:
            outcome.message, outcome.exit_code = str(err), err.exit_code
        except Exception as err:
            log.debug("%s: %s", label, traceback.format_exc())
            outcome.message = f"unexpected error: {type(err).__name__}: {err}"
            outcome.exit_code = EXIT_FAILURE
    outcome.records = records
    return outcome


__all__ = [
    "AtlasSignals",
    "RunContext",
    "RunOutcome",
    "RunRecord",
    "RunTask",
    "UnitRecord",
    "UnitTask",
    "compute_run",
    "compute_unit",
    "process_run",
    "process_unit",
]

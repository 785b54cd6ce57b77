"""Participant level: for each BOLD run, confounds -> extract -> clean -> connect -> write.

Every output of a run is computed in memory first and written only when the
whole run succeeded, each file atomically; a failing run is reported and the
other runs go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from . import __version__, clean, confounds, connect, extract, naming
from .config import Config
from .discover import RunInputs
from .errors import EXIT_DATA, EXIT_FAILURE, EXIT_OK, AppError, InputDataError, RunExcluded
from .write import to_json_text, tsv_text, write_json, write_nifti, write_text

log = logging.getLogger(__name__)
CODE_URL = "https://github.com/bids-connectome/bids-connectome"


@dataclass
class RunResult:
    """What a run produced: files to write and what aggregation needs."""

    run: RunInputs
    files: dict[Path, str] = field(default_factory=dict)
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # atlas -> cleaned (kept volumes)
    n_kept: int = 0
    excluded: str | None = None
    failed: str | None = None  # every volume censored: recorded, reported as a failure


@dataclass
class Summary:
    n_done: int = 0
    n_excluded: int = 0
    failures: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if not self.failures:
            return EXIT_OK
        codes = {code for _, _, code in self.failures}
        return EXIT_DATA if codes == {EXIT_DATA} else EXIT_FAILURE


def dataset_description(config: Config, bids_dir: Path) -> dict[str, Any]:
    source: dict[str, Any] = {"URL": bids_dir.name}
    try:
        desc = json.loads((bids_dir / "dataset_description.json").read_text())
        source = {k: desc[k] for k in ("Name", "DatasetDOI") if k in desc} | source
        generated = desc.get("GeneratedBy") or []
        if generated and isinstance(generated[0], dict):
            source["GeneratedBy"] = {
                k: generated[0].get(k) for k in ("Name", "Version") if k in generated[0]
            }
    except (OSError, ValueError):
        pass
    return {
        "Name": "bids-connectome derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "bids-connectome",
                "Version": __version__,
                "CodeURL": CODE_URL,
                "ConfigurationHash": f"sha256:{config.digest()}",
            }
        ],
        "SourceDatasets": [source],
    }


def write_static_outputs(output_dir: Path, config: Config, bids_dir: Path, sources: list) -> None:
    """Files that are the same for every participant (safe to rewrite concurrently)."""
    write_json(output_dir / "dataset_description.json", dataset_description(config, bids_dir))
    for src in sources:
        write_text(naming.atlas_lut_path(output_dir, src.name), tsv_text(src.lut))
        for suffix, img in getattr(src, "outputs", {}).items():
            write_nifti(naming.atlas_image_path(output_dir, src.name, config.space, suffix), img)


# --- worker state (one copy per process) -------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(config: Config, sources: list, output_dir: Path, bids_dir: Path) -> None:
    _STATE.update(config=config, sources=sources, output_dir=output_dir, bids_dir=bids_dir, ops={})


def _process(run: RunInputs) -> RunResult | tuple[str, str, int]:
    try:
        return process_run(
            run,
            _STATE["config"],
            _STATE["sources"],
            _STATE["output_dir"],
            _STATE["bids_dir"],
            _STATE["ops"],
        )
    except AppError as err:
        return (run.label, str(err), err.exit_code)
    except Exception as err:  # keep the other runs going; report the crash
        log.exception("%s: unexpected error", run.label)
        return (run.label, f"{type(err).__name__}: {err}", EXIT_FAILURE)


def run_participant(
    bids_dir: Path, output_dir: Path, config: Config, runs: list[RunInputs], n_jobs: int = 1
) -> Summary:
    sources = [extract.load_atlas(a) for a in config.atlases]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from .errors import OutputError

        raise OutputError(f"cannot create OUTPUT_DIR {output_dir}: {err}") from None
    write_static_outputs(output_dir, config, bids_dir, sources)
    summary = Summary()
    results: list[RunResult] = []
    if n_jobs > 1 and len(runs) > 1:
        with ProcessPoolExecutor(
            max_workers=min(n_jobs, len(runs)),
            initializer=_init_worker,
            initargs=(config, sources, output_dir, bids_dir),
        ) as pool:
            outcomes = list(pool.map(_process, runs))
    else:
        _init_worker(config, sources, output_dir, bids_dir)
        outcomes = [_process(r) for r in runs]
    for outcome in outcomes:
        if isinstance(outcome, tuple):
            log.error("%s: %s", outcome[0], outcome[1])
            summary.failures.append(outcome)
            continue
        for path, text in outcome.files.items():
            write_text(path, text)
        results.append(outcome)
        if outcome.failed:
            log.error("%s: %s", outcome.run.label, outcome.failed)
            summary.failures.append((outcome.run.label, outcome.failed, EXIT_FAILURE))
        elif outcome.excluded:
            summary.n_excluded += 1
        else:
            summary.n_done += 1
    if config.connectivity.aggregate != "run":
        for path, text in aggregate(results, config, output_dir, sources).items():
            write_text(path, text)
    return summary


def _mask_array(run: RunInputs, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray | None:
    if run.mask is None:
        log.warning("%s: no brain mask found; using every voxel", run.label)
        return None
    try:
        img = nib.load(run.mask)
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise InputDataError(f"{run.mask}: cannot read the brain mask: {err}") from None
    if data.shape[:3] != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
        raise InputDataError(
            f"{run.mask}: brain mask grid {data.shape[:3]} does not match the BOLD grid {tuple(shape)} "
            f"of {run.bold.name}"
        )
    mask = data.reshape(data.shape[:3]) != 0
    if not mask.any():
        raise InputDataError(f"{run.mask}: the brain mask is empty")
    return mask


def process_run(
    run: RunInputs,
    config: Config,
    sources: list,
    output_dir: Path,
    bids_dir: Path,
    ops_cache: dict | None = None,
) -> RunResult:
    t0 = time.perf_counter()
    den = config.denoise
    shape, affine, zooms = extract.read_header(run.bold)
    if len(shape) != 4 or shape[3] < 2:
        raise InputDataError(f"{run.bold}: expected a 4D BOLD series, got shape {shape}")
    n_volumes = int(shape[3])
    t_r = run.t_r
    if t_r is None:
        t_r = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else None
        if t_r is None:
            raise InputDataError(
                f"{run.bold}: no RepetitionTime in the sidecar and none in the header"
            )
        log.warning(
            "%s: RepetitionTime missing from the sidecar; using the header's %.3f s", run.label, t_r
        )
    table, meta = confounds.read_confounds(run.confounds, run.confounds_json)
    sel = confounds.select_confounds(
        table, meta, den, n_volumes=n_volumes, source=str(run.confounds)
    )
    kept = np.arange(n_volumes) if sel.sample_mask is None else np.asarray(sel.sample_mask)
    n_regressors = 0 if sel.confounds is None else sel.confounds.shape[1]
    result = RunResult(run=run, n_kept=len(kept))
    qc: dict[str, Any] = {
        "VolumesTotal": n_volumes,
        "VolumesKept": int(len(kept)),
        "NonSteadyStateVolumes": len(sel.provenance.get("NonSteadyStateVolumes", [])),
        "VolumesCensored": len(sel.provenance.get("ScrubbedVolumes", [])),
        "MeanFramewiseDisplacement": sel.provenance.get("MeanFramewiseDisplacement"),
        "RepetitionTime": t_r,
        "ConfoundRegressors": n_regressors,
        "Excluded": False,
        "ExclusionReason": None,
    }
    qc_path = naming.participant_path(output_dir, run.entities, "qc", ".json", desc=den.name)
    reason = confounds.exclusion_reason(len(kept), n_regressors, t_r, den)
    if reason:
        log.warning("%s: excluded: %s", run.label, reason)
        qc.update(Excluded=True, ExclusionReason=reason)
        result.files[qc_path] = to_json_text(qc)
        result.excluded = reason
        if len(kept) == 0:
            result.failed = (
                f"every volume is censored ({run.confounds.name}); no output for this run"
            )
        return result

    mask = _mask_array(run, shape[:3], affine)
    key = (
        tuple(shape[:3]),
        affine.round(6).tobytes(),
        None if mask is None else hashlib.sha1(np.packbits(mask)).hexdigest(),
    )
    cache = ops_cache if ops_cache is not None else {}
    if key not in cache:
        cache.clear()  # one grid at a time is the common case; keep memory flat
        cache[key] = extract.prepare(sources, tuple(shape[:3]), affine, mask)
    ops = cache[key]
    signals = extract.extract_run(run.bold, ops, smoothing_fwhm=den.smoothing_fwhm)
    names = [src.name for src in sources]
    widths = [signals.signals[n].shape[1] for n in names]
    stacked = np.hstack([signals.signals[n] for n in names])
    cleaned = clean.clean(
        stacked,
        t_r=t_r,
        confounds=None if sel.confounds is None else sel.confounds.to_numpy(dtype=float),
        sample_mask=sel.sample_mask,
        detrend=den.detrend,
        standardize=den.standardize,
        standardize_confounds=den.standardize_confounds,
        filter=den.filter,
        low_pass=den.low_pass,
        high_pass=den.high_pass,
    )
    splits = np.cumsum(widths)[:-1]
    per_atlas = dict(zip(names, np.split(cleaned, splits, axis=1), strict=True))
    rel = lambda p: p.relative_to(output_dir).as_posix()  # noqa: E731
    source_files = [
        f"bids:fmriprep:{p.relative_to(bids_dir).as_posix()}" for p in (run.bold, run.confounds)
    ]
    for src in sources:
        ts = per_atlas[src.name]
        ts_path = naming.participant_path(
            output_dir, run.entities, "timeseries", ".tsv", atlas=src.name, desc=den.name
        )
        cov_path = naming.participant_path(
            output_dir, run.entities, "coverage", ".tsv", atlas=src.name, desc=den.name
        )
        result.files[ts_path] = tsv_text(pd.DataFrame(ts, columns=src.region_names))
        result.files[cov_path] = tsv_text(signals.coverage[src.name])
        sidecar = {
            "Atlas": src.name,
            "AtlasKind": src.kind,
            "NodeFile": naming.atlas_lut_path(output_dir, src.name).name,
            "SamplingFrequency": 1.0 / t_r,
            "RepetitionTime": t_r,
            "Columns": list(src.region_names),
            "MissingRegions": [
                n for n, col in zip(src.region_names, ts.T, strict=True) if np.isnan(col).all()
            ],
            "Sources": source_files,
            "CoverageFile": cov_path.name,
            "Denoise": config.denoise.model_dump(mode="json"),
            "VolumesKept": kept.tolist(),
            "Software": f"bids-connectome {__version__}",
            **sel.provenance,
        }
        result.files[ts_path.with_suffix(".json")] = to_json_text(sidecar)
        result.signals[src.name] = ts
        if config.connectivity.aggregate == "run":
            result.files.update(
                relmat_files(
                    ts,
                    src,
                    run.entities,
                    config,
                    output_dir,
                    [rel(ts_path)],
                    {"VolumesUsed": len(kept)},
                )
            )
    result.files[qc_path] = to_json_text(qc)
    log.info(
        "%s: %d/%d volumes kept, %d regressors, %d atlases, %.1f s",
        run.label,
        len(kept),
        n_volumes,
        n_regressors,
        len(sources),
        time.perf_counter() - t0,
    )
    return result


def relmat_files(
    ts: np.ndarray,
    src,
    entities: dict[str, str],
    config: Config,
    output_dir: Path,
    sources: list[str],
    extra: dict[str, Any],
) -> dict[Path, str]:
    """Relationship matrices (TSV + JSON) of one time-series block, for every measure x estimator."""
    files: dict[Path, str] = {}
    estimators = config.connectivity.estimator
    for measure in config.connectivity.measures:
        if measure == "tangent":  # needs all participants: group level
            continue
        for estimator in estimators:
            label = naming.measure_label(measure, estimator, len(estimators) > 1)
            matrix = connect.connectivity_matrix(ts, measure, estimator)
            path = naming.participant_path(
                output_dir,
                entities,
                "relmat",
                ".tsv",
                atlas=src.name,
                meas=label,
                desc=config.denoise.name,
            )
            files[path] = tsv_text(pd.DataFrame(matrix, columns=src.region_names))
            files[path.with_suffix(".json")] = to_json_text(
                {
                    "RelationshipMeasure": measure,
                    "MeasureDescription": connect.MEASURE_DESCRIPTIONS[measure],
                    "CovarianceEstimator": connect.ESTIMATOR_NAMES[estimator],
                    "Directed": False,
                    "Weighted": True,
                    "ValidDiagonal": measure in ("covariance", "precision"),
                    "StorageFormat": "Full",
                    "NodeFiles": [naming.atlas_lut_path(output_dir, src.name).name],
                    "Atlas": src.name,
                    "Sources": sources,
                    "Software": f"bids-connectome {__version__}",
                    **extra,
                }
            )
    return files


def aggregate(
    results: list[RunResult], config: Config, output_dir: Path, sources: list
) -> dict[Path, str]:
    """Connectomes of runs concatenated per session or per subject (runs cleaned separately)."""
    drop = {"run"} if config.connectivity.aggregate == "session" else {"run", "ses"}
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for res in results:
        ents = {k: v for k, v in res.run.entities.items() if k not in drop}
        groups[tuple(sorted(ents.items()))].append(res)
    files: dict[Path, str] = {}
    for key, members in sorted(groups.items()):
        entities = dict(key)
        entities = {k: entities[k] for k in naming.SOURCE_ENTITIES if k in entities}
        used = [m for m in members if not m.excluded]
        excluded = [{"run": m.run.label, "reason": m.excluded} for m in members if m.excluded]
        if not used:
            log.warning(
                "%s: every run is excluded; no connectome", naming.build_name(entities, "bold", "")
            )
            continue
        for src in sources:
            ts = np.vstack([m.signals[src.name] for m in used])
            run_list = [
                naming.participant_path(
                    output_dir,
                    m.run.entities,
                    "timeseries",
                    ".tsv",
                    atlas=src.name,
                    desc=config.denoise.name,
                )
                .relative_to(output_dir)
                .as_posix()
                for m in used
            ]
            extra = {
                "Aggregate": config.connectivity.aggregate,
                "Runs": [
                    {"timeseries": f, "volumes": int(m.n_kept)}
                    for f, m in zip(run_list, used, strict=True)
                ],
                "VolumesUsed": int(ts.shape[0]),
                "ExcludedRuns": excluded,
            }
            files.update(relmat_files(ts, src, entities, config, output_dir, run_list, extra))
    return files


__all__ = ["run_participant", "process_run", "Summary", "RunExcluded"]

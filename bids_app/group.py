"""Group level: read participant outputs (never the BOLD) and write group matrices and QC.

Per task, space (+res), other acquisition entities, atlas, measure and denoise label, into
``OUTPUT_DIR/group/`` (file formats in docs/group.md):

- ``<key>_relmat.tsv/.json``: group mean (correlations through Fisher z; each participant once);
- ``<key>_relmats.npy/.tsv/.json``: every participant-level matrix stacked, with an index table;
- ``meas-tangent``: per-unit tangent matrices (stacked) and the group geometric mean;
- ``<key>_qcfc.tsv/.json``: QC-FC per edge and its summary;
- ``task-<T>_desc-<D>_qc.tsv/.json``: one row per run (volumes, censoring, mean FD, exclusion).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__, connect, naming
from .config import Config
from .errors import InputDataError, NoInputError, NothingSelectedError
from .write import read_tsv, write_json, write_npy, write_tsv

log = logging.getLogger(__name__)

RUN_ENTITIES = ("sub", "ses", "run")
QC_COLUMNS = {
    "participant_id": "Participant label, with the sub- prefix",
    "session_id": "Session label, with the ses- prefix (n/a without sessions)",
    "run": "Run label (n/a without runs)",
    "volumes_total": "Volumes in the BOLD series",
    "non_steady_state_volumes": "Non-steady-state volumes removed at the start",
    "volumes_censored": "Volumes censored by scrubbing (high motion)",
    "volumes_kept": "Volumes used after removal and censoring",
    "mean_fd": "Mean framewise displacement of the run (mm)",
    "excluded": "true when the run was excluded from connectivity",
    "exclusion_reason": "Why the run was excluded (n/a when it was not)",
    "source": "The participant-level QC file, relative to OUTPUT_DIR",
}


def _natural(value: str | None) -> tuple:
    """Sort key: labels compare as numbers when they are numbers (run-2 before run-10)."""
    if value is None:
        return (0, 0, "")
    return (1, int(value), value) if value.isdigit() else (2, 0, value)


def _unit_sort_key(entities: dict[str, str]) -> tuple:
    return tuple(_natural(entities.get(k)) for k in naming.SOURCE_ENTITIES)


def _group_key(entities: dict[str, str], drop: Iterable[str] = RUN_ENTITIES) -> tuple:
    dropped = set(drop)
    return tuple(
        (k, entities[k]) for k in naming.ENTITY_ORDER if k in entities and k not in dropped
    )


def _run_key(entities: dict[str, str]) -> tuple:
    """Identity of a BOLD run: its source entities."""
    return tuple((k, entities[k]) for k in naming.SOURCE_ENTITIES if k in entities)


# --- reading participant outputs ---------------------------------------------------------------


@dataclass
class OutputFile:
    path: Path
    entities: dict[str, str]
    suffix: str
    extension: str


def scan_outputs(output_dir: Path) -> list[OutputFile]:
    """Every parseable participant-level file in ``sub-*/[ses-*/]func/``, sorted."""
    found = []
    for path in sorted(output_dir.glob("sub-*/func/*")) + sorted(
        output_dir.glob("sub-*/ses-*/func/*")
    ):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            entities, suffix, extension = naming.parse_name(path.name)
        except ValueError:
            continue
        if "sub" in entities:
            found.append(OutputFile(path, entities, suffix, extension))
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputDataError(f"{path}: cannot read the JSON sidecar: {err}") from None


def _read_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        frame = read_tsv(path)
        values = frame.to_numpy(dtype=np.float64)
    except (OSError, ValueError) as err:
        raise InputDataError(f"{path}: cannot read the table: {err}") from None
    names = [str(c) for c in frame.columns]
    return names, values


def _select(
    files: list[OutputFile],
    config: Config,
    participants: list[str] | None,
    sessions: list[str] | None,
    tasks: list[str] | None,
    output_dir: Path,
) -> list[OutputFile]:
    if not files:
        raise NoInputError(
            f"no participant outputs in {output_dir} (expected sub-*/[ses-*/]func/*_relmat.tsv, "
            "*_timeseries.tsv and *_qc.json): run the participant level first"
        )
    for entity, wanted, what in (
        ("sub", participants, "participant"),
        ("ses", sessions, "session"),
        ("task", tasks, "task"),
    ):
        if not wanted:
            continue
        existing = sorted({f.entities[entity] for f in files if entity in f.entities}, key=_natural)
        missing = [w for w in wanted if w not in existing]
        if missing:
            raise NothingSelectedError(
                f"{what} label(s) {' '.join(missing)} not found in the participant outputs of "
                f"{output_dir}; labels found: {' '.join(existing) if existing else '(none)'}"
            )
        files = [f for f in files if f.entities.get(entity) in wanted]
    desc = config.denoise.name
    selected = [
        f
        for f in files
        if f.entities.get("desc") == desc
        and f.entities.get("space") == config.space
        and (config.res is None or f.entities.get("res") == config.res)
    ]
    if not selected:
        descs = sorted({f.entities.get("desc", "(none)") for f in files})
        spaces = sorted({f.entities.get("space", "(none)") for f in files})
        raise NoInputError(
            f"no participant outputs in {output_dir} with desc-{desc} and space-{config.space}"
            f"{'' if config.res is None else f' res-{config.res}'} (the configuration's denoise "
            f"name and space); found desc: {', '.join(descs)}; space: {', '.join(spaces)}"
        )
    return selected


# --- QC -----------------------------------------------------------------------------------------


@dataclass
class RunQC:
    entities: dict[str, str]
    path: Path
    data: dict[str, Any]

    @property
    def mean_fd(self) -> float | None:
        value = self.data.get("MeanFramewiseDisplacement")
        return None if value is None or not np.isfinite(float(value)) else float(value)

    @property
    def excluded(self) -> bool:
        return bool(self.data.get("Excluded", False))


def _na(value: Any) -> Any:
    return np.nan if value is None else value


def qc_table(runs: list[RunQC], output_dir: Path) -> pd.DataFrame:
    """One row per run (sorted by participant, session, run)."""
    extra = [
        k
        for k in ("acq", "ce", "rec", "dir", "echo", "space", "res")
        if any(k in q.entities for q in runs)
    ]
    rows = []
    for q in sorted(runs, key=lambda q: _unit_sort_key(q.entities)):
        e, d = q.entities, q.data
        row: dict[str, Any] = {
            "participant_id": f"sub-{e['sub']}",
            "session_id": f"ses-{e['ses']}" if "ses" in e else np.nan,
            "run": e.get("run", np.nan),
        }
        row.update({k: e.get(k, np.nan) for k in extra})
        row.update(
            volumes_total=_na(d.get("VolumesTotal")),
            non_steady_state_volumes=_na(d.get("NonSteadyStateVolumes")),
            volumes_censored=_na(d.get("VolumesCensored")),
            volumes_kept=_na(d.get("VolumesKept")),
            mean_fd=_na(q.mean_fd),
            excluded="true" if q.excluded else "false",
            exclusion_reason=_na(d.get("ExclusionReason")),
            source=q.path.relative_to(output_dir).as_posix(),
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("volumes_total", "non_steady_state_volumes", "volumes_censored", "volumes_kept"):
        frame[col] = frame[col].astype("Int64")
    frame["run"] = frame["run"].astype(object)
    return frame


# --- matrices -----------------------------------------------------------------------------------


@dataclass
class Unit:
    """One participant-level connectivity matrix (a run, session or subject)."""

    entities: dict[str, str]
    source: str  # relative path of the relmat (or time series) it comes from
    regions: list[str]
    matrix: np.ndarray
    meta: dict[str, Any]
    mean_fd: float | None
    volumes: int | None


def _runs_of(meta: dict[str, Any], entities: dict[str, str]) -> list[tuple]:
    """Run keys behind a matrix: the aggregated runs listed in the sidecar, or the run itself."""
    runs = meta.get("Runs")
    if runs:
        keys = []
        for item in runs:
            name = item.get("timeseries") if isinstance(item, dict) else str(item)
            try:
                keys.append(_run_key(naming.parse_name(str(name))[0]))
            except ValueError:
                continue
        return keys
    return [_run_key(entities)]


def _mean_fd(run_keys: list[tuple], qc: dict[tuple, RunQC]) -> float | None:
    """Mean FD over the runs (weighted by their number of volumes); None if any is unknown."""
    values, weights = [], []
    for key in run_keys:
        q = qc.get(key)
        if q is None or q.mean_fd is None:
            return None
        values.append(q.mean_fd)
        weights.append(float(q.data.get("VolumesTotal") or 1))
    if not values:
        return None
    return float(np.average(values, weights=weights))


def _check_regions(units: list[Unit], output_dir: Path) -> list[str]:
    regions = units[0].regions
    for u in units[1:]:
        if u.regions != regions:
            raise InputDataError(
                f"{output_dir / u.source}: regions differ from {units[0].source} "
                f"({len(u.regions)} vs {len(regions)} columns); was the atlas changed between runs "
                "of the participant level?"
            )
    return regions


def _stack_index(units: list[Unit], extra_columns: dict[str, list] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "participant_id": [f"sub-{u.entities['sub']}" for u in units],
            "session_id": [
                f"ses-{u.entities['ses']}" if "ses" in u.entities else np.nan for u in units
            ],
            "run": [u.entities.get("run", np.nan) for u in units],
            "task": [u.entities.get("task", np.nan) for u in units],
            "mean_fd": [_na(u.mean_fd) for u in units],
            "volumes": pd.array([u.volumes for u in units], dtype="Int64"),
            "source": [u.source for u in units],
        }
    )
    frame["run"] = frame["run"].astype(object)
    for name, values in (extra_columns or {}).items():
        frame[name] = values
    return frame


def _per_participant(units: list[Unit], measure: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One matrix and mean FD per participant (their matrices averaged, FD averaged)."""
    by_sub: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by_sub[u.entities["sub"]].append(u)
    subs = sorted(by_sub, key=_natural)
    mats, fds = [], []
    for s in subs:
        members = by_sub[s]
        stack = np.stack([u.matrix for u in members])
        mats.append(stack[0] if len(members) == 1 else connect.group_mean(stack, measure))
        known = [u.mean_fd for u in members if u.mean_fd is not None]
        fds.append(np.mean(known) if len(known) == len(members) else np.nan)
    return subs, np.stack(mats), np.asarray(fds, dtype=np.float64)


def _coordinates(output_dir: Path, atlas: str, regions: list[str]) -> np.ndarray | None:
    """World-mm region centres from ``atlas-<A>_dseg.tsv`` (None if not available)."""
    path = naming.atlas_lut_path(output_dir, atlas)
    if not path.is_file():
        return None
    try:
        lut = read_tsv(path)
    except (OSError, ValueError):
        return None
    if not {"name", "x", "y", "z"} <= set(lut.columns):
        return None
    by_name = {str(n): i for i, n in enumerate(lut["name"])}
    if any(r not in by_name for r in regions):
        return None
    xyz = lut[["x", "y", "z"]].to_numpy(dtype=np.float64)
    return xyz[[by_name[r] for r in regions]]


def _matrix_frame(matrix: np.ndarray, regions: list[str]) -> pd.DataFrame:
    return pd.DataFrame(matrix, columns=regions)


class _Writer:
    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.written: list[Path] = []

    def tsv(self, path: Path, frame: pd.DataFrame) -> None:
        self.written.append(write_tsv(path, frame))

    def json(self, path: Path, data: dict[str, Any]) -> None:
        self.written.append(write_json(path, data))

    def npy(self, path: Path, array: np.ndarray) -> None:
        self.written.append(write_npy(path, np.asarray(array, dtype=np.float64)))


def _write_stack(
    w: _Writer,
    key: dict[str, str],
    units: list[Unit],
    regions: list[str],
    description: str,
    extra_columns: dict[str, list] | None = None,
) -> Path:
    npy = naming.group_path(w.output_dir, key, "relmats", ".npy")
    w.npy(npy, np.stack([u.matrix for u in units]))
    w.tsv(npy.with_suffix(".tsv"), _stack_index(units, extra_columns))
    w.json(
        npy.with_suffix(".json"),
        {
            "Description": description,
            "DataFile": npy.name,
            "IndexFile": npy.with_suffix(".tsv").name,
            "Shape": [len(units), len(regions), len(regions)],
            "DataType": "float64",
            "Axes": [
                "matrix: row i of the index table (same order)",
                "region (row of each matrix, in the order of Regions)",
                "region (column of each matrix, in the order of Regions)",
            ],
            "MissingValue": "NaN (regions n/a in a run)",
            "Regions": regions,
            "NodeFiles": [naming.atlas_lut_path(w.output_dir, key["atlas"]).name],
            "Load": "numpy.load(DataFile); pandas.read_csv(IndexFile, sep='\\t', na_values='n/a')",
            "Software": f"bids-connectome {__version__}",
        },
    )
    return npy


def _write_qcfc(
    w: _Writer, key: dict[str, str], units: list[Unit], regions: list[str], measure: str
) -> None:
    subs, mats, fds = _per_participant(units, measure)
    use = np.isfinite(fds)
    if use.sum() < 3:
        log.info(
            "%s: QC-FC needs mean FD for at least 3 participants (%d available); skipped",
            naming.build_name(key, "qcfc", ""),
            int(use.sum()),
        )
        return
    coords = _coordinates(w.output_dir, key["atlas"], regions)
    res = connect.qc_fc(fds[use], mats[use], coordinates=coords)
    frame = pd.DataFrame(
        {
            "region1": [regions[i] for i in res.rows],
            "region2": [regions[j] for j in res.cols],
            "distance": res.distance if res.distance is not None else np.nan,
            "qcfc": res.r,
            "p": res.p,
            "n": res.n,
        }
    )
    path = naming.group_path(w.output_dir, key, "qcfc", ".tsv")
    w.tsv(path, frame)
    w.json(
        path.with_suffix(".json"),
        {
            "Description": (
                "QC-FC: for each edge, the Pearson correlation across participants between mean "
                "framewise displacement and connectivity (Ciric et al. 2017; Parkes et al. 2018). "
                "Each participant counts once: their matrices are averaged (Fisher z for "
                "correlations) and their runs' mean FD averaged."
            ),
            "RelationshipMeasure": units[0].meta.get("RelationshipMeasure", measure),
            "Participants": [f"sub-{s}" for s, ok in zip(subs, use, strict=True) if ok],
            "Columns": {
                "region1": "First region of the edge (row of the matrix)",
                "region2": "Second region of the edge (column of the matrix)",
                "distance": "Euclidean distance between the region centres (mm; n/a if unknown)",
                "qcfc": "Correlation across participants between mean FD and the edge value",
                "p": "Two-sided p-value of qcfc (t distribution, n - 2 degrees of freedom)",
                "n": "Participants with a value for this edge",
            },
            "Summary": res.summary,
            "SummaryDescription": {
                "MedianAbsQCFC": "Median of |qcfc| over edges (lower is better)",
                "PercentEdgesSignificant": "Percentage of edges with p < Alpha (uncorrected)",
                "PercentEdgesSignificantFDR": "Percentage of edges significant after "
                "Benjamini-Hochberg FDR at Alpha",
                "DistanceDependence": "Spearman correlation between qcfc and distance "
                "(null when coordinates are unknown; closer to 0 is better)",
                "DistanceDependenceAbs": "Spearman correlation between |qcfc| and distance",
            },
            "Software": f"bids-connectome {__version__}",
        },
    )


def _relmat_sidecar(
    units: list[Unit], key: dict[str, str], regions: list[str], output_dir: Path
) -> dict[str, Any]:
    meta = units[0].meta
    measure = meta.get("RelationshipMeasure") or key["meas"]
    correlation_like = connect.normalize_measure(measure) in connect.CORRELATION_LIKE
    subs = sorted({u.entities["sub"] for u in units}, key=_natural)
    counts = np.isfinite(np.stack([np.diag(u.matrix) for u in units])).sum(axis=0)
    return {
        "RelationshipMeasure": measure,
        "CovarianceEstimator": meta.get("CovarianceEstimator"),
        "Directed": False,
        "Weighted": True,
        "ValidDiagonal": not correlation_like,
        "StorageFormat": "Full",
        "GroupAverage": (
            "Fisher z: tanh of the mean of arctanh, per participant then across participants"
            if correlation_like
            else "arithmetic mean, per participant then across participants"
        ),
        "NumberOfParticipants": len(subs),
        "NumberOfMatrices": len(units),
        "Participants": [f"sub-{s}" for s in subs],
        "RegionsMissing": {
            r: int(len(units) - c) for r, c in zip(regions, counts, strict=True) if c < len(units)
        },
        "StackFile": naming.group_path(output_dir, key, "relmats", ".npy").name,
        "NodeFiles": [naming.atlas_lut_path(output_dir, key["atlas"]).name],
        "Software": f"bids-connectome {__version__}",
    }


def _two_stage_mean(units: list[Unit], measure: str) -> np.ndarray:
    _, per_sub, _ = _per_participant(units, measure)
    return per_sub[0].copy() if len(per_sub) == 1 else connect.group_mean(per_sub, measure)


# --- tangent ------------------------------------------------------------------------------------


def _tangent_units(
    ts_files: list[OutputFile], qc: dict[tuple, RunQC], aggregate: str, output_dir: Path
) -> dict[tuple, list[tuple[dict[str, str], list[OutputFile]]]]:
    """Time-series files grouped per group key, then per unit (run, session or subject)."""
    drop = {"run": (), "session": ("run",), "subject": ("run", "ses")}[aggregate]
    groups: dict[tuple, dict[tuple, list[OutputFile]]] = defaultdict(lambda: defaultdict(list))
    for f in ts_files:
        q = qc.get(_run_key(f.entities))
        if q is not None and q.excluded:
            continue
        unit_key = _group_key(f.entities, drop)
        groups[_group_key(f.entities)][unit_key].append(f)
    out = {}
    for gkey, units in groups.items():
        items = []
        for ukey, files in units.items():
            files = sorted(files, key=lambda f: _unit_sort_key(f.entities))
            items.append((dict(ukey), files))
        items.sort(key=lambda item: _unit_sort_key(item[0]))
        out[gkey] = items
    return out


def _write_tangent(
    w: _Writer,
    gkey: tuple,
    items: list[tuple[dict[str, str], list[OutputFile]]],
    qc: dict[tuple, RunQC],
    config: Config,
) -> list[tuple[dict[str, str], list[Unit], list[str]]]:
    """Tangent outputs of one group for every configured estimator; returns the stacks."""
    output_dir = w.output_dir
    key = dict(gkey)
    if len(items) < 2:
        log.warning(
            "%s: tangent space needs at least 2 participants' time series (%d found); skipped",
            naming.build_name(key, "relmat", ""),
            len(items),
        )
        return []
    series, regions, sources, volumes = [], None, [], []
    for _, files in items:
        blocks = []
        for f in files:
            names, values = _read_matrix(f.path)
            if regions is None:
                regions = names
            elif names != regions:
                raise InputDataError(
                    f"{f.path}: regions differ from the other time series of atlas "
                    f"{key.get('atlas')} ({len(names)} vs {len(regions)} columns)"
                )
            blocks.append(values)
        series.append(np.vstack(blocks))
        sources.append([f.path.relative_to(output_dir).as_posix() for f in files])
        volumes.append(int(sum(b.shape[0] for b in blocks)))
    assert regions is not None
    estimators = config.connectivity.estimator
    stacks = []
    for estimator in estimators:
        label = naming.measure_label("tangent", estimator, len(estimators) > 1)
        try:
            result = connect.tangent_space(series, estimator)
        except ValueError as err:
            # e.g. the empirical covariance of fewer volumes than regions is singular
            log.warning(
                "%s: tangent space with estimator %s skipped: %s (%d regions, %d-%d volumes "
                "per participant; ledoit_wolf always gives positive definite covariances)",
                naming.build_name({**key, "meas": label}, "relmat", ""),
                estimator,
                err,
                len(regions),
                min(volumes),
                max(volumes),
            )
            continue
        gk = {**key, "meas": label}
        gk = {k: gk[k] for k in naming.ENTITY_ORDER if k in gk}
        units = [
            Unit(
                entities=ents,
                source=";".join(src),
                regions=regions,
                matrix=m,
                meta={"RelationshipMeasure": "tangent"},
                mean_fd=_mean_fd([_run_key(f.entities) for f in files], qc),
                volumes=vol,
            )
            for (ents, files), m, src, vol in zip(
                items, result.matrices, sources, volumes, strict=True
            )
        ]
        _write_stack(
            w,
            gk,
            units,
            regions,
            "Tangent-space connectivity of every unit (matrix logarithm of the covariance "
            "whitened by the group geometric mean; nilearn ConnectivityMeasure(kind='tangent')). "
            "source lists the time-series files concatenated for the unit (';'-separated).",
        )
        path = naming.group_path(output_dir, gk, "relmat", ".tsv")
        w.tsv(path, _matrix_frame(result.mean, regions))
        subs = sorted({e["sub"] for e, _ in items}, key=_natural)
        w.json(
            path.with_suffix(".json"),
            {
                "RelationshipMeasure": "tangent",
                "MeasureDescription": (
                    "Group geometric mean of the covariances (the reference point of the tangent "
                    "space; max_iter 30, tol 1e-7). The per-unit tangent matrices are in StackFile."
                ),
                "CovarianceEstimator": connect.ESTIMATOR_NAMES[estimator],
                "Directed": False,
                "Weighted": True,
                "ValidDiagonal": True,
                "StorageFormat": "Full",
                "Aggregate": config.connectivity.aggregate,
                "NumberOfParticipants": len(subs),
                "NumberOfMatrices": len(units),
                "Participants": [f"sub-{s}" for s in subs],
                "RegionsLeftOut": [
                    r for r, k in zip(regions, result.regions, strict=True) if not k
                ],
                "StackFile": naming.group_path(output_dir, gk, "relmats", ".npy").name,
                "NodeFiles": [naming.atlas_lut_path(output_dir, key["atlas"]).name],
                "Software": f"bids-connectome {__version__}",
            },
        )
        stacks.append((gk, units, regions))
    return stacks


# --- entry point --------------------------------------------------------------------------------


def run_group(
    output_dir: Path,
    config: Config,
    participants: list[str] | None = None,
    sessions: list[str] | None = None,
    tasks: list[str] | None = None,
) -> list[Path]:
    """Group outputs from the participant outputs in ``output_dir``; returns the files written."""
    output_dir = Path(output_dir)
    files = _select(scan_outputs(output_dir), config, participants, sessions, tasks, output_dir)
    atlases = {a.name for a in config.atlases}
    qc_runs = [
        RunQC(f.entities, f.path, _read_json(f.path))
        for f in files
        if f.suffix == "qc" and f.extension == ".json"
    ]
    qc = {_run_key(q.entities): q for q in qc_runs}
    relmats = [
        f
        for f in files
        if f.suffix == "relmat" and f.extension == ".tsv" and f.entities.get("atlas") in atlases
    ]
    series = [
        f
        for f in files
        if f.suffix == "timeseries" and f.extension == ".tsv" and f.entities.get("atlas") in atlases
    ]
    if not (qc_runs or relmats or series):
        raise NoInputError(
            f"no QC, time series or relmat files for the configured atlases "
            f"({', '.join(sorted(atlases))}) in {output_dir}"
        )
    w = _Writer(output_dir)

    # QC table per task
    by_task: dict[str, list[RunQC]] = defaultdict(list)
    for q in qc_runs:
        by_task[q.entities.get("task", "")].append(q)
    for task in sorted(by_task):
        path = naming.group_path(
            output_dir, {"task": task or None, "desc": config.denoise.name}, "qc", ".tsv"
        )
        w.tsv(path, qc_table(by_task[task], output_dir))
        w.json(
            path.with_suffix(".json"),
            {
                "Description": "Denoising QC, one row per run (from the participant-level "
                "*_qc.json files)",
                **{k: {"Description": v} for k, v in QC_COLUMNS.items()},
            },
        )

    # participant matrices: stacks, group means, QC-FC
    groups: dict[tuple, list[OutputFile]] = defaultdict(list)
    for f in relmats:
        groups[_group_key(f.entities)].append(f)
    for gkey in sorted(groups):
        key = dict(gkey)
        members = sorted(groups[gkey], key=lambda f: _unit_sort_key(f.entities))
        units = []
        for f in members:
            names, matrix = _read_matrix(f.path)
            if matrix.shape != (len(names), len(names)):
                raise InputDataError(
                    f"{f.path}: expected a square matrix with one column per region, got "
                    f"shape {matrix.shape}"
                )
            side = f.path.with_suffix(".json")
            meta = _read_json(side) if side.is_file() else {}
            units.append(
                Unit(
                    entities=f.entities,
                    source=f.path.relative_to(output_dir).as_posix(),
                    regions=names,
                    matrix=matrix,
                    meta=meta,
                    mean_fd=_mean_fd(_runs_of(meta, f.entities), qc),
                    volumes=meta.get("VolumesUsed"),
                )
            )
        regions = _check_regions(units, output_dir)
        measure = units[0].meta.get("RelationshipMeasure") or key["meas"]
        _write_stack(
            w,
            key,
            units,
            regions,
            "Every participant-level matrix of this task, space, atlas, measure and denoising, "
            "stacked; row i of IndexFile describes matrix i.",
        )
        path = naming.group_path(output_dir, key, "relmat", ".tsv")
        w.tsv(path, _matrix_frame(_two_stage_mean(units, measure), regions))
        w.json(path.with_suffix(".json"), _relmat_sidecar(units, key, regions, output_dir))
        _write_qcfc(w, key, units, regions, measure)

    # tangent space, from the time series
    if "tangent" in config.connectivity.measures:
        if not series:
            log.warning("tangent: no time series in %s; skipped", output_dir)
        grouped = _tangent_units(series, qc, config.connectivity.aggregate, output_dir)
        for gkey in sorted(grouped):
            for gk, units, regions in _write_tangent(w, gkey, grouped[gkey], qc, config):
                _write_qcfc(w, gk, units, regions, "tangent")

    return sorted(set(w.written))


__all__ = ["run_group", "scan_outputs", "qc_table"]

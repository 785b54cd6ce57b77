"""Group level: read participant outputs (never the BOLD) and write group matrices and QC.

Only participant outputs made with the given configuration are used (their sidecars'
``ConfigurationHash``); the others, and unreadable files, are named in a warning and
left out. Per task, space (+res), other acquisition entities, atlas, measure and denoise
label (file formats in docs/group.md):

- ``<key>_relmat.tsv/.json``: group mean (correlations through Fisher z; each participant once);
- ``<key>_relmats.npy/.tsv/.json``: every participant-level matrix stacked, with an index table;
- ``meas-tangent``: per-unit tangent matrices (stacked) and the group geometric mean;
- ``<key>_qcfc.tsv/.json``: QC-FC per edge and its summary;
- ``task-<T>_space-<S>_desc-<D>_qc.tsv/.json``: one row per run (volumes, censoring, mean FD,
  exclusion).

The whole dataset goes to ``OUTPUT_DIR/group/``; a selection (``participants``,
``sessions``, ``tasks``) to ``OUTPUT_DIR/group/subset-<label>/``, so a subset never
replaces the full-group result. Everything is written into a staging folder first and
moved into place at the end, replacing the files of the previous group run of the same
``desc``: the files of a folder always come from one group run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import connect, naming, state
from .config import Config
from .errors import EXIT_FAILURE, EXIT_OK, InputDataError, NoInputError, NothingSelectedError
from .vocabulary import CORRELATION_LIKE, normalize_measure
from .write import (
    STAGING_PREFIX,
    atomic_path,
    host_tag,
    read_matrix,
    read_tsv,
    write_json,
    write_npy,
    write_tsv,
)

log = logging.getLogger(__name__)

RUN_ENTITIES = ("sub", "ses", "run")
SHOWN = 5  # files named in a warning


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


def _few(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


# --- reading participant outputs ---------------------------------------------------------------


@dataclass
class OutputFile:
    path: Path
    entities: dict[str, str]
    suffix: str
    extension: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def run_key(self) -> tuple:
        return naming.owner_key(self.entities)


def scan_outputs(output_dir: Path) -> list[OutputFile]:
    """Every parseable participant-level file in ``sub-*/[ses-*/]func/``, sorted."""
    found = []
    for path in sorted(output_dir.glob("sub-*/func/*")) + sorted(
        output_dir.glob("sub-*/ses-*/func/*")
    ):
        if path.name.startswith(".") or not path.is_file():
            continue
        parsed = naming.try_parse_name(path.name)
        if parsed is not None and "sub" in parsed[0]:
            found.append(OutputFile(path, *parsed))
    return found


def _select(
    files: list[OutputFile],
    config: Config,
    participants: Iterable[str] | None,
    sessions: Iterable[str] | None,
    tasks: Iterable[str] | None,
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
        wanted = list(wanted)
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


def _resolved_for_hash(config: Config) -> Config:
    """Atlases given by TemplateFlow query or dataset, resolved offline as the participant
    level did (a query that cannot be resolved here keeps the recorded digests)."""
    from .config import resolve_atlases
    from .errors import ConfigError

    if not any(
        getattr(a, "templateflow", None) or getattr(a, "dataset", None) for a in config.atlases
    ):
        return config
    try:
        return resolve_atlases(config)
    except ConfigError:
        return config


def expected_hash(output_dir: Path, config: Config) -> str:
    """The ``ConfigurationHash`` participant outputs of ``config`` carry.

    Atlas files that no longer exist where the configuration says are identified by the
    digests the participant level recorded (``code/bids-connectome/``), so the group level
    does not need the atlas images.
    """
    config = _resolved_for_hash(config)
    return "sha256:" + config.digest(participant_only=True, recorded=_recorded(output_dir, config))


@dataclass
class Inputs:
    """The usable participant outputs of one group run, sidecars read once."""

    qc: dict[tuple, OutputFile]
    relmats: list[OutputFile]
    series: list[OutputFile]
    left_out: list[str]


def _read_inputs(
    files: list[OutputFile], config: Config, output_dir: Path, expected: str
) -> Inputs:
    atlases = {a.name for a in config.atlases}
    rel = lambda f: f.path.relative_to(output_dir).as_posix()  # noqa: E731
    other_config: list[str] = []
    left_out: list[str] = []
    usable: list[OutputFile] = []
    for f in files:
        if f.suffix == "qc" and f.extension == ".json":
            side = f.path
        elif f.suffix in ("relmat", "timeseries") and f.extension == ".tsv":
            if f.entities.get("atlas") not in atlases:
                continue
            side = f.path.with_suffix(".json")
        else:
            continue
        try:
            meta = json.loads(side.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            log.warning("left out: %s: cannot read the JSON sidecar: %s", rel(f), err)
            left_out.append(rel(f))
            continue
        problem = _qc_problem(meta) if f.suffix == "qc" else None
        if problem:
            log.warning("left out: %s: %s", rel(f), problem)
            left_out.append(rel(f))
            continue
        if meta.get("ConfigurationHash") != expected:
            other_config.append(rel(f))
            continue
        f.meta = meta
        usable.append(f)
    if other_config:
        log.warning(
            "%d participant output file(s) were made with another configuration (their "
            "ConfigurationHash is not %s) and are not used: %s; rerun the participant level with "
            "this configuration to include them",
            len(other_config),
            expected[:19],
            _few(other_config),
        )
    qc = {f.run_key: f for f in usable if f.suffix == "qc"}
    relmats = [f for f in usable if f.suffix == "relmat"]
    series = [f for f in usable if f.suffix == "timeseries"]
    orphans = sorted({naming.run_label(f.entities) for f in series if f.run_key not in qc})
    if orphans:
        log.warning(
            "%d run(s) have time series but no usable *_qc.json: left out of the QC table and "
            "QC-FC: %s",
            len(orphans),
            _few(orphans),
        )
    if not (qc or relmats or series):
        detail = " (all made with another configuration)" if other_config else ""
        raise NoInputError(
            f"no usable QC, time series or relmat files for the configured atlases "
            f"({', '.join(sorted(atlases))}) in {output_dir}{detail}"
        )
    return Inputs(qc, relmats, series, left_out)


# --- QC -----------------------------------------------------------------------------------------


_QC_COUNTS = ("VolumesTotal", "VolumesCensored", "VolumesKept", "NonSteadyStateVolumes")


def _qc_problem(meta: dict[str, Any]) -> str | None:
    """What makes a run's ``*_qc.json`` unusable for the QC table (None: nothing)."""

    def is_count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in _QC_COUNTS:
        value = meta.get(key)
        if value is None or is_count(value):
            continue
        if key == "NonSteadyStateVolumes" and isinstance(value, list):
            if all(is_count(v) for v in value):
                continue
        return f"{key} is not a count of volumes: {str(value)[:40]!r}"
    fd = meta.get("MeanFramewiseDisplacement")
    if fd is not None and (isinstance(fd, bool) or not isinstance(fd, int | float)):
        return f"MeanFramewiseDisplacement is not a number: {str(fd)[:40]!r}"
    if not isinstance(meta.get("Excluded", False), bool):
        return f"Excluded is not true or false: {str(meta.get('Excluded'))[:40]!r}"
    return None


def _mean_fd(meta: dict[str, Any]) -> float | None:
    value = meta.get("MeanFramewiseDisplacement")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _count(value: Any) -> Any:
    if isinstance(value, list):
        return len(value)
    return np.nan if value is None else value


def qc_table(runs: list[OutputFile], output_dir: Path):
    """One row per run (sorted by participant, session, run)."""
    import pandas as pd

    extra = [
        k
        for k in ("acq", "ce", "rec", "dir", "echo", "hemi", "space", "res", "den")
        if any(k in q.entities for q in runs)
    ]
    rows = []
    for q in sorted(runs, key=lambda q: _unit_sort_key(q.entities)):
        e, d = q.entities, q.meta
        row: dict[str, Any] = {
            "participant_id": f"sub-{e['sub']}",
            "session_id": f"ses-{e['ses']}" if "ses" in e else np.nan,
            "run": e.get("run", np.nan),
        }
        row.update({k: e.get(k, np.nan) for k in extra})
        reason = d.get("ExclusionReason")
        row.update(
            volumes_total=_count(d.get("VolumesTotal")),
            non_steady_state_volumes=_count(d.get("NonSteadyStateVolumes")),
            volumes_censored=_count(d.get("VolumesCensored")),
            volumes_kept=_count(d.get("VolumesKept")),
            mean_fd=np.nan if _mean_fd(d) is None else _mean_fd(d),
            excluded="true" if d.get("Excluded") else "false",
            exclusion_reason=np.nan if reason is None else reason,
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
    """One participant-level matrix (a run, session or subject) of a stack."""

    entities: dict[str, str]
    source: str  # relative path(s) of the relmat (or the time series, ';'-separated)
    mean_fd: float | None
    volumes: int | None


def _runs_of(f: OutputFile) -> list[tuple]:
    """Run keys behind a matrix: the aggregated runs listed in the sidecar, or the run itself."""
    runs = f.meta.get("Runs")
    if not runs:
        return [f.run_key]
    keys = []
    for item in runs:
        name = item.get("timeseries") if isinstance(item, dict) else str(item)
        parsed = naming.try_parse_name(str(name).rsplit(":", 1)[-1])
        if parsed is not None:
            keys.append(naming.owner_key(parsed[0]))
    return keys


def _unit_fd(run_keys: list[tuple], qc: dict[tuple, OutputFile]) -> float | None:
    """Mean FD over the runs (weighted by their number of volumes); None if any is unknown."""
    values, weights = [], []
    for key in run_keys:
        q = qc.get(key)
        fd = None if q is None else _mean_fd(q.meta)
        if fd is None:
            return None
        values.append(fd)
        total = q.meta.get("VolumesTotal")
        weights.append(float(total) if isinstance(total, int | float) and total else 1.0)
    return float(np.average(values, weights=weights)) if values else None


def _header(path: Path) -> tuple[str, ...] | None:
    """The column names of a matrix TSV (as :func:`read_matrix` splits them), or None."""
    try:
        with open(path, "rb") as fh:
            return tuple(fh.readline().decode("utf-8").rstrip("\r\n").split("\t"))
    except (OSError, UnicodeDecodeError):
        return None


def _reference_regions(paths: list[Path], atlas: str, luts: _LUTs) -> list[str] | None:
    """The regions every table of ``paths`` (matrices or time series of one atlas) must have.

    Those of the atlas lookup table the participant level wrote, when some table has them;
    otherwise the regions most tables have (the first such file breaking ties): never
    simply the first file's, which may be the bad one.
    """
    headers = [_header(p) for p in paths]
    lut = luts.regions(atlas)
    if lut is not None and lut in headers:
        return list(lut)
    counts = Counter(h for h in headers if h is not None)
    if not counts:
        return None
    return list(max(counts, key=lambda h: (counts[h], -headers.index(h))))


def _load_stack(
    files: list[OutputFile], output_dir: Path, luts: _LUTs, left_out: list[str]
) -> tuple[list[OutputFile], list[str], np.ndarray]:
    """The matrices of ``files`` read into one preallocated (n, N, N) float64 array.

    A file that is not a square numeric matrix with the atlas' regions (see
    :func:`_reference_regions`) is left out with a warning (and named in ``left_out``).
    """
    atlas = files[0].entities.get("atlas", "") if files else ""
    regions = _reference_regions([f.path for f in files], atlas, luts) or []
    stack = np.empty((len(files), len(regions), len(regions)), dtype=np.float64)
    kept: list[OutputFile] = []
    for f in files:
        rel = f.path.relative_to(output_dir).as_posix()
        try:
            names, matrix = read_matrix(f.path)
            if matrix.shape != (len(names), len(names)):
                raise InputDataError(
                    f"{f.path}: expected a square matrix with one column per region, got "
                    f"shape {matrix.shape}"
                )
            if names != regions:
                raise InputDataError(
                    f"{f.path}: regions differ from those of atlas {f.entities.get('atlas')} "
                    f"({len(names)} vs {len(regions)} columns); was the atlas changed between "
                    "runs of the participant level?"
                )
        except InputDataError as err:
            log.warning("left out: %s", err)
            left_out.append(rel)
            continue
        stack[len(kept)] = matrix
        kept.append(f)
    if not kept:
        return [], [], np.empty((0, 0, 0))
    return kept, regions, stack[: len(kept)]


def _per_participant(units: list[Unit], stack: np.ndarray, measure: str):
    """One matrix and mean FD per participant (their matrices averaged, FD averaged).

    With one matrix per participant the stack itself is returned (no copy).
    """
    by_sub: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        by_sub[u.entities["sub"]].append(i)
    subs = sorted(by_sub, key=_natural)
    fds = []
    for s in subs:
        known = [units[i].mean_fd for i in by_sub[s] if units[i].mean_fd is not None]
        fds.append(np.mean(known) if len(known) == len(by_sub[s]) else np.nan)
    fds = np.asarray(fds, dtype=np.float64)
    order = [i for s in subs for i in by_sub[s]]
    if all(len(v) == 1 for v in by_sub.values()) and order == list(range(len(units))):
        return subs, stack, fds
    mats = np.empty((len(subs),) + stack.shape[1:], dtype=np.float64)
    for k, s in enumerate(subs):
        idx = by_sub[s]
        mats[k] = stack[idx[0]] if len(idx) == 1 else connect.group_mean(stack[idx], measure)
    return subs, mats, fds


class _LUTs:
    """Region names and centres from ``atlas-<A>_dseg.tsv``, read once per atlas."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self._tables: dict[str, Any] = {}
        self._names: dict[str, tuple[str, ...] | None] = {}

    def regions(self, atlas: str) -> tuple[str, ...] | None:
        """The region names of the lookup table, as written (no type inference), or None."""
        if atlas not in self._names:
            try:
                text = naming.atlas_lut_path(self.output_dir, atlas).read_text(encoding="utf-8")
                rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
                column = rows[0].index("name")
                self._names[atlas] = tuple(row[column] for row in rows[1:] if row)
            except (OSError, UnicodeDecodeError, csv.Error, IndexError, ValueError):
                self._names[atlas] = None
        return self._names[atlas]

    def coordinates(self, atlas: str, regions: list[str]) -> np.ndarray | None:
        if atlas not in self._tables:
            path = naming.atlas_lut_path(self.output_dir, atlas)
            try:
                self._tables[atlas] = read_tsv(path) if path.is_file() else None
            except (OSError, ValueError):
                self._tables[atlas] = None
        lut = self._tables[atlas]
        if lut is None or not {"name", "x", "y", "z"} <= set(lut.columns):
            return None
        by_name = {str(n): i for i, n in enumerate(lut["name"])}
        if any(r not in by_name for r in regions):
            return None
        xyz = lut[["x", "y", "z"]].to_numpy(dtype=np.float64)
        return xyz[[by_name[r] for r in regions]]


class _Writer:
    """Writes into a staging folder; :meth:`commit` moves the files into place."""

    def __init__(
        self, output_dir: Path, subset: str | None, config_hash: str, desc: str, space: str
    ):
        self.output_dir = output_dir
        self.subset = subset
        self.config_hash = config_hash
        self.desc = desc
        self.space = space
        self.folder = naming.group_dir(output_dir, subset)
        self.staging = self.folder / f"{STAGING_PREFIX}{host_tag()}-{os.getpid()}"
        self.written: list[Path] = []
        self.created: list[Path] = []  # folders made for this run, deepest first

    def open(self) -> None:
        """Create the staging folder, remembering which of ``group/[subset-<label>/]`` it made."""
        folder = self.folder
        while folder != self.output_dir and not folder.exists():
            self.created.append(folder)
            folder = folder.parent
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, entities: dict[str, Any], suffix: str, extension: str) -> Path:
        """Final path of a group file."""
        return naming.group_path(self.output_dir, entities, suffix, extension, self.subset)

    def _staged(self, final: Path) -> Path:
        self.written.append(final)
        return self.staging / final.name

    def tsv(self, path: Path, frame) -> None:
        write_tsv(self._staged(path), frame)

    def json(self, path: Path, data: dict[str, Any]) -> None:
        write_json(self._staged(path), data)

    def npy(self, path: Path, array: np.ndarray, keep: np.ndarray | None = None) -> None:
        staged = self._staged(path)
        if keep is None or keep.all():
            write_npy(staged, array)
            return
        n, p = array.shape[0], keep.size
        idx = np.flatnonzero(keep)
        out = np.lib.format.open_memmap(staged, mode="w+", dtype=np.float64, shape=(n, p, p))
        for start in range(0, n, 64):
            block = np.full((min(64, n - start), p, p), np.nan)
            block[:, idx[:, None], idx[None, :]] = array[start : start + 64]
            out[start : start + block.shape[0]] = block
        out.flush()
        del out

    def commit(self) -> None:
        """Move the staged files into place; remove the files of this desc and space left by
        earlier group runs."""
        keep = {p.name for p in self.written}
        for path in self.written:
            os.replace(self.staging / path.name, path)
        for name in sorted(os.listdir(self.folder)):
            parsed = naming.try_parse_name(name)
            if name.startswith(".") or name in keep or parsed is None:
                continue
            ents = parsed[0]
            mine = ents.get("desc") == self.desc and ents.get("space") == self.space
            if mine and (self.folder / name).is_file():
                (self.folder / name).unlink()
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        """Remove the staging folder, and the group folders this run created if still empty."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.written = []
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty: another group run's files
                break


def _stack_index(units: list[Unit]):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "participant_id": [f"sub-{u.entities['sub']}" for u in units],
            "session_id": [
                f"ses-{u.entities['ses']}" if "ses" in u.entities else np.nan for u in units
            ],
            "run": [u.entities.get("run", np.nan) for u in units],
            "task": [u.entities.get("task", np.nan) for u in units],
            "mean_fd": [np.nan if u.mean_fd is None else u.mean_fd for u in units],
            "volumes": pd.array([u.volumes for u in units], dtype="Int64"),
            "source": [u.source for u in units],
        }
    )
    frame["run"] = frame["run"].astype(object)
    return frame


def _write_stack(
    w: _Writer,
    key: dict[str, str],
    units: list[Unit],
    regions: list[str],
    stack: np.ndarray,
    description: str,
    keep: np.ndarray | None = None,
) -> Path:
    """The stack, its index table and sidecar; ``keep``: the stack holds only these regions
    (the others are written as NaN rows and columns, chunk by chunk, without a full copy)."""
    npy = w.path(key, "relmats", ".npy")
    w.npy(npy, stack, keep)
    w.tsv(npy.with_suffix(".tsv"), _stack_index(units))
    w.json(
        npy.with_suffix(".json"),
        naming.stack_sidecar(
            description=description,
            data_file=npy.name,
            index_file=npy.with_suffix(".tsv").name,
            shape=[len(units), len(regions), len(regions)],
            regions=regions,
            atlas=key["atlas"],
            config_hash=w.config_hash,
        ),
    )
    return npy


def _write_qcfc(
    w: _Writer,
    luts: _LUTs,
    key: dict[str, str],
    units: list[Unit],
    stack: np.ndarray,
    regions: list[str],
    measure: str,
    label: str,
    keep: np.ndarray | None = None,
) -> None:
    """QC-FC of a stack; ``keep`` marks the regions of a stack that holds only those
    (the tangent space): the other regions' edges are n/a in the table."""
    import pandas as pd

    subs, mats, fds = _per_participant(units, stack, measure)
    use = np.isfinite(fds)
    if use.sum() < 3:
        log.info(
            "%s: QC-FC needs mean FD for at least 3 participants (%d available); skipped",
            naming.build_name(key, "qcfc", ""),
            int(use.sum()),
        )
        return
    coords = luts.coordinates(key["atlas"], regions)
    kept = np.ones(len(regions), bool) if keep is None else keep
    res = connect.qc_fc(
        fds[use],
        mats[use] if not use.all() else mats,
        coordinates=None if coords is None else coords[kept],
    )
    rows, cols, r, p, n, distance = res.rows, res.cols, res.r, res.p, res.n, res.distance
    if not kept.all():  # back to every edge of the atlas, n/a where a region was left out
        index = np.flatnonzero(kept)
        rows, cols = np.tril_indices(len(regions), -1)
        slot = np.full((len(regions), len(regions)), -1)
        slot[index[res.rows], index[res.cols]] = np.arange(len(res.rows))
        found = slot[rows, cols]
        ok = found >= 0

        def expand(values: np.ndarray, fill: float) -> np.ndarray:
            out = np.full(len(rows), fill, dtype=float)
            out[ok] = values[found[ok]]
            return out

        r, p, n = expand(res.r, np.nan), expand(res.p, np.nan), expand(res.n, 0).astype(int)
        distance = None if coords is None else np.linalg.norm(coords[rows] - coords[cols], axis=1)
        res.summary.update(connect.qc_fc_summary(r, p, distance, res.summary["Alpha"]))
    frame = pd.DataFrame(
        {
            "region1": [regions[i] for i in rows],
            "region2": [regions[j] for j in cols],
            "distance": distance if distance is not None else np.nan,
            "qcfc": r,
            "p": p,
            "n": n,
        }
    )
    path = w.path(key, "qcfc", ".tsv")
    w.tsv(path, frame)
    w.json(
        path.with_suffix(".json"),
        naming.qcfc_sidecar(
            measure=label,
            participants=[f"sub-{s}" for s, ok in zip(subs, use, strict=True) if ok],
            summary=res.summary,
            config_hash=w.config_hash,
        ),
    )


def _two_stage_mean(units: list[Unit], stack: np.ndarray, measure: str) -> np.ndarray:
    _, per_sub, _ = _per_participant(units, stack, measure)
    return per_sub[0].copy() if len(per_sub) == 1 else connect.group_mean(per_sub, measure)


def _write_relmats(
    w: _Writer, luts: _LUTs, gkey: tuple, files: list[OutputFile], inputs: Inputs
) -> None:
    key = dict(gkey)
    members = sorted(files, key=lambda f: _unit_sort_key(f.entities))
    kept, regions, stack = _load_stack(members, w.output_dir, luts, inputs.left_out)
    if not kept:
        return
    units = [
        Unit(
            entities=f.entities,
            source=f.path.relative_to(w.output_dir).as_posix(),
            mean_fd=_unit_fd(_runs_of(f), inputs.qc),
            volumes=f.meta.get("VolumesUsed"),
        )
        for f in kept
    ]
    meta = kept[0].meta
    measure = normalize_measure(meta.get("RelationshipMeasure") or key["meas"])
    _write_stack(
        w,
        key,
        units,
        regions,
        stack,
        "Every participant-level matrix of this task, space, atlas, measure and denoising, "
        "stacked; row i of IndexFile describes matrix i.",
    )
    path = w.path(key, "relmat", ".tsv")
    w.tsv(path, _frame(_two_stage_mean(units, stack, measure), regions))
    counts = np.isfinite(np.diagonal(stack, axis1=1, axis2=2)).sum(axis=0)
    w.json(
        path.with_suffix(".json"),
        naming.group_relmat_sidecar(
            measure=meta.get("RelationshipMeasure") or measure,
            estimator=meta.get("CovarianceEstimator"),
            correlation_like=measure in CORRELATION_LIKE,
            participants=[
                f"sub-{s}" for s in sorted({u.entities["sub"] for u in units}, key=_natural)
            ],
            n_matrices=len(units),
            regions_missing={
                r: int(len(units) - c)
                for r, c in zip(regions, counts, strict=True)
                if c < len(units)
            },
            stack_file=w.path(key, "relmats", ".npy").name,
            atlas=key["atlas"],
            sources=[naming.bids_uri(u.source) for u in units],
            config_hash=w.config_hash,
        ),
    )
    _write_qcfc(
        w, luts, key, units, stack, regions, measure, meta.get("RelationshipMeasure") or measure
    )


def _frame(matrix: np.ndarray, regions: list[str]):
    import pandas as pd

    return pd.DataFrame(matrix, columns=regions)


# --- tangent ------------------------------------------------------------------------------------


def _tangent_units(
    series: list[OutputFile], qc: dict[tuple, OutputFile], aggregate: str
) -> dict[tuple, list[tuple[dict[str, str], list[OutputFile]]]]:
    """Time-series files grouped per group key, then per unit (run, session or subject)."""
    drop = {"run": (), "session": ("run",), "subject": ("run", "ses")}[aggregate]
    groups: dict[tuple, dict[tuple, list[OutputFile]]] = defaultdict(lambda: defaultdict(list))
    for f in series:
        q = qc.get(f.run_key)
        if q is not None and q.meta.get("Excluded"):
            continue
        groups[_group_key(f.entities)][_group_key(f.entities, drop)].append(f)
    out = {}
    for gkey, units in groups.items():
        items = [
            (dict(ukey), sorted(files, key=lambda f: _unit_sort_key(f.entities)))
            for ukey, files in units.items()
        ]
        items.sort(key=lambda item: _unit_sort_key(item[0]))
        out[gkey] = items
    return out


def _write_tangent(
    w: _Writer,
    luts: _LUTs,
    gkey: tuple,
    items: list[tuple[dict[str, str], list[OutputFile]]],
    inputs: Inputs,
    config: Config,
) -> None:
    """Tangent outputs of one group for every configured estimator."""
    key = dict(gkey)
    if len(items) < 2:
        log.warning(
            "%s: tangent space needs at least 2 participants' time series (%d found); skipped",
            naming.build_name(key, "relmat", ""),
            len(items),
        )
        return
    paths = [f.path for _, files in items for f in files]
    regions = _reference_regions(paths, key.get("atlas", ""), luts) or []
    missing = set()
    for _, files in items:
        for f in files:
            missing |= set(f.meta.get("MissingRegions") or [])
    keep = np.array([r not in missing for r in regions], dtype=bool)
    estimators = config.connectivity.estimator
    for estimator in estimators:
        label = naming.measure_label("tangent", estimator, len(estimators) > 1)
        gk = {**key, "meas": label}
        gk = {k: gk[k] for k in naming.ENTITY_ORDER if k in gk}
        units, covs = _unit_covariances(w.output_dir, items, regions, keep, estimator, inputs)
        if len(units) < 2:
            continue
        try:
            mean, _ = connect.tangent_from_covariances(covs)
        except ValueError as err:
            # e.g. the empirical covariance of fewer volumes than regions is singular
            volumes = [u.volumes or 0 for u in units]
            log.warning(
                "%s: tangent space with estimator %s skipped: %s (%d regions, %d-%d volumes "
                "per participant; ledoit_wolf always gives positive definite covariances)",
                naming.build_name(gk, "relmat", ""),
                estimator,
                err,
                int(keep.sum()),
                min(volumes),
                max(volumes),
            )
            continue
        _write_stack(
            w,
            gk,
            units,
            regions,
            covs,
            "Tangent-space connectivity of every unit (matrix logarithm of the covariance "
            "whitened by the group geometric mean; nilearn ConnectivityMeasure(kind='tangent')). "
            "source lists the time-series files concatenated for the unit (';'-separated).",
            keep,
        )
        path = w.path(gk, "relmat", ".tsv")
        full_mean = np.full((len(regions), len(regions)), np.nan)
        full_mean[np.ix_(keep, keep)] = mean
        w.tsv(path, _frame(full_mean, regions))
        w.json(
            path.with_suffix(".json"),
            naming.tangent_sidecar(
                estimator=estimator,
                aggregate=config.connectivity.aggregate,
                participants=[
                    f"sub-{s}" for s in sorted({u.entities["sub"] for u in units}, key=_natural)
                ],
                n_matrices=len(units),
                regions_left_out=[r for r, k in zip(regions, keep, strict=True) if not k],
                stack_file=w.path(gk, "relmats", ".npy").name,
                atlas=key["atlas"],
                sources=[naming.bids_uri(s) for u in units for s in u.source.split(";")],
                config_hash=w.config_hash,
            ),
        )
        _write_qcfc(w, luts, gk, units, covs, regions, "tangent", "tangent", keep)
        del covs


def _unit_covariances(
    output_dir: Path,
    items: list[tuple[dict[str, str], list[OutputFile]]],
    regions: list[str],
    keep: np.ndarray,
    estimator: str,
    inputs: Inputs,
) -> tuple[list[Unit], np.ndarray]:
    """Each unit's covariance of the regions kept, read unit by unit into one stack."""
    k = int(keep.sum())
    covs = np.empty((len(items), k, k), dtype=np.float64)
    units: list[Unit] = []
    for ents, files in items:
        blocks = []
        try:
            for f in files:
                names, values = read_matrix(f.path)
                if names != regions:
                    raise InputDataError(
                        f"{f.path}: regions differ from the other time series of atlas "
                        f"{f.entities.get('atlas')} ({len(names)} vs {len(regions)} columns)"
                    )
                block = values[:, keep]
                if not np.isfinite(block).all():
                    raise InputDataError(
                        f"{f.path}: n/a or infinite values in a region with signal"
                    )
                blocks.append(block)
        except InputDataError as err:
            log.warning("left out of the tangent space: %s", err)
            inputs.left_out.extend(f.path.relative_to(output_dir).as_posix() for f in files)
            continue
        ts = np.vstack(blocks)
        covs[len(units)] = connect.covariance(ts, estimator)
        units.append(
            Unit(
                entities=ents,
                source=";".join(f.path.relative_to(output_dir).as_posix() for f in files),
                mean_fd=_unit_fd([f.run_key for f in files], inputs.qc),
                volumes=int(ts.shape[0]),
            )
        )
    return units, covs[: len(units)]


# --- entry point --------------------------------------------------------------------------------


@dataclass
class GroupResult:
    """Where the group files went, which were written, and which inputs were left out."""

    folder: Path
    written: list[Path]
    left_out: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURE if self.left_out else EXIT_OK


def subset_name(
    participants: Iterable[str] | None,
    sessions: Iterable[str] | None,
    tasks: Iterable[str] | None,
    label: str | None = None,
) -> str | None:
    """The ``subset-<label>`` of a selection (None: the whole dataset)."""
    if not (participants or sessions or tasks):
        return None
    if label:
        if not label.isalnum():
            from .errors import UsageError

            raise UsageError(f"--group-label {label!r}: letters and digits only")
        return label
    selection = {
        "participants": sorted(participants or []),
        "sessions": sorted(sessions or []),
        "tasks": sorted(tasks or []),
    }
    return hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:8]


def run_group(
    output_dir: Path,
    config: Config,
    participants: Iterable[str] | None = None,
    sessions: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    subset_label: str | None = None,
) -> GroupResult:
    """Group outputs from the participant outputs in ``output_dir`` made with ``config``."""
    output_dir = Path(output_dir)
    state.remove_dead_dataset_temporaries(output_dir)
    files = _select(scan_outputs(output_dir), config, participants, sessions, tasks, output_dir)
    expected = expected_hash(output_dir, config)
    inputs = _read_inputs(files, config, output_dir, expected)
    subset = subset_name(participants, sessions, tasks, subset_label)
    group_hash = "sha256:" + config.digest(recorded=_recorded(output_dir, config))
    w = _Writer(output_dir, subset, group_hash, config.denoise.name, config.space)
    luts = _LUTs(output_dir)
    try:
        w.open()
        if subset is not None:
            with atomic_path(w.staging / "subset.json") as tmp:
                tmp.write_text(
                    json.dumps(
                        {
                            "participants": sorted(participants or []),
                            "sessions": sorted(sessions or []),
                            "tasks": sorted(tasks or []),
                        },
                        indent=2,
                    )
                    + "\n"
                )
        by_task: dict[str, list[OutputFile]] = defaultdict(list)
        for q in inputs.qc.values():
            by_task[q.entities.get("task", "")].append(q)
        for task in sorted(by_task):
            scope = {"space": config.space, "res": config.res, "den": config.den}
            path = w.path(
                {"task": task or None, **scope, "desc": config.denoise.name}, "qc", ".tsv"
            )
            w.tsv(path, qc_table(by_task[task], output_dir))
            w.json(path.with_suffix(".json"), naming.qc_table_sidecar(w.config_hash))
        groups: dict[tuple, list[OutputFile]] = defaultdict(list)
        for f in inputs.relmats:
            groups[_group_key(f.entities)].append(f)
        for gkey in sorted(groups):
            _write_relmats(w, luts, gkey, groups[gkey], inputs)
        if "tangent" in config.connectivity.measures:
            if not inputs.series:
                log.warning("tangent: no time series in %s; skipped", output_dir)
            grouped = _tangent_units(inputs.series, inputs.qc, config.connectivity.aggregate)
            for gkey in sorted(grouped):
                _write_tangent(w, luts, gkey, grouped[gkey], inputs, config)
        if subset is not None:
            os.replace(w.staging / "subset.json", w.folder / "subset.json")
        w.commit()
    except BaseException:
        w.abort()
        raise
    return GroupResult(w.folder, sorted(w.written), inputs.left_out)


def _recorded(output_dir: Path, config: Config) -> dict[str, Any] | None:
    """The configuration the participant level recorded for this ``desc`` (None if absent)."""
    try:
        record = json.loads(naming.config_path(output_dir, config.denoise.name).read_text())
        configuration = record.get("Configuration")
    except (OSError, ValueError, AttributeError):
        return None
    return configuration if isinstance(configuration, dict) else None


__all__ = ["GroupResult", "run_group", "scan_outputs", "qc_table", "subset_name"]

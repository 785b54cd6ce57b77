"""Discovery: find, per BOLD run of an fMRIPrep folder, the files the pipeline needs.

Only the selected participants' folders are listed (a participant's job costs the same
in a 10- or a 10,000-participant dataset), file names are parsed with
:mod:`bids_app.naming`, and no sidecar or image is opened: a run's metadata are read
by the run itself, so one corrupt file fails only its own run. With
``database_dir`` the file list comes from a pybids index kept in that folder
(built on first use and reused by later jobs, as fMRIPrep's ``--bids-database-dir``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import naming
from .errors import InputDataError, NoInputError, NothingSelectedError, UsageError
from .vocabulary import grid_of_space

log = logging.getLogger(__name__)

BOLD_EXTENSIONS = (".nii.gz", ".nii")
FILTER_KINDS = ("bold", "mask", "confounds")
# Entities a --bids-filter-file may use, by their short (file name) and pybids long names.
FILTER_ENTITIES = {
    **{k: k for k in naming.SOURCE_ENTITIES},
    **{k: v for k, v in naming.LONG_NAMES.items() if v != "desc"},
    "desc": "desc",
    "description": "desc",
    "suffix": "suffix",
    "extension": "extension",
    "datatype": "datatype",
}
# Entities of the BOLD that identify its confounds file (no space / res / den).
_CONFOUND_KEYS = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo")
ANY, NONE = "*", None


@dataclass(frozen=True)
class RunInputs:
    """All files of one BOLD run; nothing here is read until the run is processed.

    ``problem`` is set when discovery found something wrong with this run only
    (no confounds file, several brain masks): the run then fails on its own.
    """

    bold: Path
    mask: Path | None
    confounds: Path | None
    confounds_json: Path | None
    entities: dict[str, str]  # source entities, short keys, canonical order
    sidecars: tuple[Path, ...] = ()  # BOLD JSON sidecars, most general first (inheritance)
    problem: str | None = None
    grid: str = "volume"  # "cifti" (dtseries) or "gifti" (bold = left hemisphere)
    bold_right: Path | None = None  # GIFTI runs: the right hemisphere

    @property
    def label(self) -> str:
        return naming.run_label(self.entities)

    @property
    def data(self) -> Path | tuple[Path, Path]:
        """The BOLD file, or the (left, right) pair of a GIFTI run."""
        return (self.bold, self.bold_right) if self.bold_right is not None else self.bold

    def input_files(self) -> list[Path]:
        """Every file whose content determines the run's outputs."""
        files = [self.bold, self.bold_right, self.mask, self.confounds, self.confounds_json]
        return [f for f in files + list(self.sidecars) if f is not None]


@dataclass(frozen=True)
class Selection:
    """What to process: space (+ res), labels, filters and the BOLD ``desc``."""

    space: str
    res: str | None = None
    den: str | None = None  # surface density (fsLR: 91k)
    participants: tuple[str, ...] | None = None
    sessions: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    desc: str = "preproc"  # "smoothAROMAnonaggr" for ICA-AROMA "full" (fMRIPrep < 23.1)


@dataclass(frozen=True)
class _File:
    path: Path
    entities: dict[str, str]
    suffix: str
    extension: str
    datatype: str


def strip_prefix(labels: Iterable[str] | None, prefix: str) -> tuple[str, ...] | None:
    """Labels without their ``sub-`` / ``ses-`` / ``task-`` prefix (None stays None)."""
    if not labels:
        return None
    return tuple(lab[len(prefix) :] if lab.startswith(prefix) else lab for lab in labels)


# --- the filter file --------------------------------------------------------------------------


def load_filter_file(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (fMRIPrep format: ``{"bold": {...}, "mask": {...}}``).

    Entity names may be short (``acq``) or pybids' long names (``acquisition``);
    ``null`` means the entity must be absent and ``"*"`` that it must be present.
    """
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--bids-filter-file: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--bids-filter-file {path}: cannot read it: {err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f'--bids-filter-file {path}: expected {{"bold": {{entity: value}}, ...}}')
    unknown = set(data) - set(FILTER_KINDS)
    if unknown:
        raise UsageError(
            f"--bids-filter-file {path}: unknown keys {sorted(unknown)}; "
            f"allowed: {', '.join(FILTER_KINDS)}"
        )
    for kind, filters in data.items():
        for entity in filters:
            if entity not in FILTER_ENTITIES:
                close = difflib.get_close_matches(entity, list(FILTER_ENTITIES), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UsageError(
                    f"--bids-filter-file {path}: {kind}: unknown entity {entity!r}{hint}"
                )
    return data


def _matches(value: str | None, wanted: Any) -> bool:
    if wanted is NONE:
        return value is None
    if wanted == ANY:
        return value is not None
    if value is None:
        return False
    options = wanted if isinstance(wanted, list) else [wanted]
    for option in options:
        text = str(option)
        if value == text or (value.isdigit() and text.isdigit() and int(value) == int(text)):
            return True
    return False


def _passes(f: _File, filters: dict[str, Any]) -> bool:
    for entity, wanted in filters.items():
        key = FILTER_ENTITIES[entity]
        if key == "suffix":
            value: str | None = f.suffix
        elif key == "extension":
            value = f.extension
        elif key == "datatype":
            value = f.datatype
        else:
            value = f.entities.get(key)
        if not _matches(value, wanted):
            return False
    return True


# --- listing ------------------------------------------------------------------------------------


def _parse(path: Path, datatype: str) -> _File | None:
    parsed = naming.try_parse_name(path.name)
    if parsed is None:
        return None
    entities, suffix, extension = parsed
    return _File(path, entities, suffix, extension, datatype)


def _scan_dir(folder: Path, datatype: str) -> list[_File]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        f = _parse(Path(entry.path), datatype)
        if f is not None:
            out.append(f)
    return out


def _subdirs(folder: Path, prefix: str) -> list[str]:
    try:
        return sorted(
            e.name[len(prefix) :]
            for e in os.scandir(folder)
            if e.name.startswith(prefix) and e.is_dir()
        )
    except OSError:
        return []


def check_input_dir(bids_dir: Path) -> None:
    """The input folder exists and looks like a BIDS derivative."""
    if not bids_dir.is_dir():
        raise NoInputError(f"input folder not found: {bids_dir}")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(
            f"{bids_dir} has no dataset_description.json: expected an fMRIPrep derivatives folder"
        )


def _not_found(flag: str, missing: list[str], existing: Iterable[str]) -> NothingSelectedError:
    found = " ".join(sorted(set(existing))) or "(none)"
    return NothingSelectedError(
        f"{flag} {' '.join(missing)}: no such label in the input; labels found: {found}"
    )


def _list_files(bids_dir: Path, selection: Selection) -> list[_File]:
    """func files of the selected participants (and sessions), straight from the folders."""
    participants = _subdirs(bids_dir, "sub-")
    wanted = selection.participants
    if wanted:
        missing = [p for p in wanted if p not in participants]
        if missing:
            raise _not_found("--participant-label", missing, participants)
        participants = [p for p in participants if p in wanted]
    files: list[_File] = []
    for sub in participants:
        sub_dir = bids_dir / f"sub-{sub}"
        files += _scan_dir(sub_dir / "func", "func")
        for ses in _subdirs(sub_dir, "ses-"):
            if selection.sessions and ses not in selection.sessions:
                continue
            files += _scan_dir(sub_dir / f"ses-{ses}" / "func", "func")
    return files


def _list_files_pybids(bids_dir: Path, selection: Selection, database_dir: Path) -> list[_File]:
    """func files from a pybids index in ``database_dir`` (created there if missing)."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    try:
        database_dir.mkdir(parents=True, exist_ok=True)
        layout = BIDSLayout(
            str(bids_dir),
            validate=False,
            config=["bids", "derivatives"],
            database_path=str(database_dir),
            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
        )
    except Exception as err:  # pybids raises many types for unreadable trees or databases
        raise InputDataError(
            f"cannot index {bids_dir} with pybids (database {database_dir}): {err}"
        ) from None
    participants = sorted(str(s) for s in layout.get_subjects())
    if selection.participants:
        missing = [p for p in selection.participants if p not in participants]
        if missing:
            raise _not_found("--participant-label", missing, participants)
    query: dict[str, Any] = {"datatype": "func", "return_type": "filename"}
    if selection.participants:
        query["subject"] = list(selection.participants)
    if selection.sessions:
        query["session"] = list(selection.sessions)
    files = []
    for path in sorted(layout.get(**query)):
        f = _parse(Path(path), "func")
        if f is not None:
            files.append(f)
    return files


# --- runs ---------------------------------------------------------------------------------------


def find_runs(
    bids_dir: Path, selection: Selection, database_dir: Path | None = None
) -> list[RunInputs]:
    """Every BOLD run matching ``selection``, with its mask, confounds and sidecars.

    Raises :class:`NoInputError` when the selected participants have no preprocessed
    BOLD at all and :class:`NothingSelectedError` (listing what exists) when labels,
    space or filters match nothing.
    """
    bids_dir = Path(bids_dir)
    check_input_dir(bids_dir)
    if database_dir is None:
        files = _list_files(bids_dir, selection)
    else:
        files = _list_files_pybids(bids_dir, selection, Path(database_dir))
    log.debug(
        "%d func files listed (%s)",
        len(files),
        "folder scan" if database_dir is None else f"pybids index in {database_dir}",
    )
    grid = grid_of_space(selection.space)
    bolds = [f for f in files if _is_bold(f, grid, selection.desc)]
    if not bolds:
        pattern = {
            "volume": f"*_desc-{selection.desc}_bold.nii.gz",
            "cifti": "*_space-fsLR_den-91k_bold.dtseries.nii (fMRIPrep --cifti-output)",
            "gifti": f"*_hemi-L_space-{selection.space}_bold.func.gii",
        }[grid]
        raise NoInputError(
            f"no preprocessed BOLD ({pattern}) in {bids_dir}"
            + (" for the selected participants" if selection.participants else "")
            + ": expected an fMRIPrep derivatives folder"
        )
    for key, wanted, flag in (
        ("ses", selection.sessions, "--session-label"),
        ("task", selection.tasks, "--task"),
    ):
        if wanted:
            existing = {f.entities[key] for f in bolds if key in f.entities}
            missing = [w for w in wanted if w not in existing]
            if missing:
                raise _not_found(flag, missing, existing)
            bolds = [f for f in bolds if f.entities.get(key) in wanted]
    spaces = sorted({f.entities.get("space", "(none)") for f in bolds})
    if selection.space not in spaces:
        raise NothingSelectedError(
            f"no preprocessed BOLD in space {selection.space!r}; spaces found: {' '.join(spaces)} "
            "(set `space` in the config or --space)"
        )
    bolds = [
        f
        for f in bolds
        if f.entities.get("space") == selection.space
        and (selection.res is None or _matches(f.entities.get("res"), selection.res))
        and (selection.den is None or f.entities.get("den") == selection.den)
        and _passes(f, selection.filters.get("bold", {}))
    ]
    if not bolds:
        raise NothingSelectedError(
            "the selection (labels, space, res, --bids-filter-file) matched no preprocessed BOLD file"
        )
    by_dir: dict[Path, list[_File]] = defaultdict(list)
    for f in files:
        by_dir[f.path.parent].append(f)
    if grid == "gifti":
        return _gifti_runs(bolds, by_dir, bids_dir, selection)
    runs = [
        _run_inputs(bold, by_dir[bold.path.parent], bids_dir, selection, grid) for bold in bolds
    ]
    return sorted(runs, key=lambda r: str(r.bold))


def _is_bold(f: _File, grid: str, desc: str) -> bool:
    if f.suffix != "bold":
        return False
    if grid == "cifti":  # fMRIPrep writes no desc- entity on dtseries
        return f.extension == ".dtseries.nii" and f.entities.get("desc") in (None, desc)
    if grid == "gifti":
        return f.extension == ".func.gii" and f.entities.get("hemi") in ("L", "R")
    return f.extension in BOLD_EXTENSIONS and f.entities.get("desc") == desc


def _gifti_runs(
    bolds: list[_File], by_dir: dict[Path, list[_File]], root: Path, sel: Selection
) -> list[RunInputs]:
    """Hemisphere pairs of GIFTI runs: one run, the entities without ``hemi``."""
    pairs: dict[tuple, dict[str, _File]] = defaultdict(dict)
    for f in bolds:
        key = (
            f.path.parent,
            naming.owner_key({k: v for k, v in f.entities.items() if k != "hemi"}),
        )
        pairs[key][f.entities["hemi"]] = f
    runs = []
    for (_, _), hemis in sorted(pairs.items(), key=lambda item: str(item[0][0]) + str(item[0][1])):
        left, right = hemis.get("L"), hemis.get("R")
        first = left or right
        run = _run_inputs(first, by_dir[first.path.parent], root, sel, "gifti")
        entities = {k: v for k, v in run.entities.items() if k != "hemi"}
        problem = run.problem
        if left is None or right is None:
            missing = "hemi-L" if left is None else "hemi-R"
            problem = "; ".join(p for p in (problem, f"no {missing} file to pair with it") if p)
        runs.append(
            dataclasses.replace(
                run,
                bold=(left or right).path,
                bold_right=right.path if left is not None and right is not None else None,
                entities=entities,
                problem=problem,
            )
        )
    return runs


def _same(f: _File, entities: dict[str, str], keys: Iterable[str]) -> bool:
    return all(f.entities.get(k) == entities.get(k) for k in keys)


def _run_inputs(
    bold: _File, siblings: list[_File], root: Path, sel: Selection, grid: str = "volume"
) -> RunInputs:
    ents = bold.entities
    problems = []
    # brain mask: same entities as the BOLD (space, res, den included), no echo
    mask_keys = [k for k in naming.SOURCE_ENTITIES if k != "echo"]
    masks = [
        f
        for f in siblings
        if f.suffix == "mask"
        and f.extension in BOLD_EXTENSIONS
        and "echo" not in f.entities
        and _same(f, ents, mask_keys)
        and _passes(f, sel.filters.get("mask", {}))
    ]
    brain = [f for f in masks if f.entities.get("desc") == "brain"]
    if not brain:  # fMRIPrep < 1.4 named it label-brain_mask
        brain = [
            f for f in masks if f.entities.get("label") == "brain" and "desc" not in f.entities
        ]
    if len(brain) > 1:
        problems.append(f"several brain masks match: {', '.join(f.path.name for f in brain)}")
    mask = brain[0].path if len(brain) == 1 and grid == "volume" else None  # none on surfaces
    # confounds: same run entities, no space; fMRIPrep >= 20.2, 1.2-20.1, then the earliest
    candidates = [
        f
        for f in siblings
        if f.extension == ".tsv"
        and "space" not in f.entities
        and _same(f, ents, _CONFOUND_KEYS)
        and _passes(f, sel.filters.get("confounds", {}))
    ]
    confounds = None
    for suffix, desc in (
        ("timeseries", "confounds"),
        ("regressors", "confounds"),
        ("timeseries", None),
        ("confounds", None),
    ):
        found = [f for f in candidates if f.suffix == suffix and f.entities.get("desc") == desc]
        if len(found) > 1:
            problems.append(
                f"several confounds files match: {', '.join(f.path.name for f in found)}"
            )
        if found:
            confounds = found[0].path
            break
    if confounds is None:
        expected = naming.build_name(
            {k: ents[k] for k in _CONFOUND_KEYS if k in ents} | {"desc": "confounds"},
            "timeseries",
            ".tsv",
        )
        problems.append(
            f"no confounds file found (expected {expected} or _regressors.tsv beside it)"
        )
    confounds_json = None
    if confounds is not None:
        side = confounds.with_name(confounds.name[: -len(".tsv")] + ".json")
        confounds_json = side if side.is_file() else None
    return RunInputs(
        bold=bold.path,
        mask=mask,
        confounds=confounds,
        confounds_json=confounds_json,
        entities=naming.source_entities(ents),
        sidecars=tuple(_sidecars(bold, root) or _sidecars_of_run(bold, siblings, grid)),
        problem="; ".join(problems) or None,
        grid=grid,
    )


def _sidecars(bold: _File, root: Path) -> list[Path]:
    """JSON sidecars that apply to ``bold`` (BIDS inheritance), the most general first."""
    chain: list[Path] = []
    folder = bold.path.parent
    levels = []
    while True:
        levels.append(folder)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    for level in reversed(levels):
        for f in _scan_dir(level, ""):
            if (
                f.extension == ".json"
                and f.suffix == "bold"
                and all(bold.entities.get(k) == v for k, v in f.entities.items())
            ):
                chain.append(f.path)
    return chain


def _sidecars_of_run(bold: _File, siblings: list[_File], grid: str) -> list[Path]:
    """A surface run without a sidecar of its own (fMRIPrep < 21 wrote none for GIFTI):
    the sidecar of the same run's volume BOLD (RepetitionTime is the same)."""
    if grid == "volume":
        return []
    found = [
        f.path
        for f in siblings
        if f.suffix == "bold" and f.extension == ".json" and _same(f, bold.entities, _CONFOUND_KEYS)
    ]
    return sorted(found)[:1]


def read_metadata(run: RunInputs) -> dict[str, Any]:
    """The BOLD's metadata (its JSON sidecars merged), read when the run is processed."""
    meta: dict[str, Any] = {}
    for path in run.sidecars:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputDataError(f"{path}: cannot read the JSON sidecar: {err}") from None
        if not isinstance(data, dict):
            raise InputDataError(f"{path}: the JSON sidecar is not an object")
        meta.update(data)
    return meta


__all__ = [
    "RunInputs",
    "Selection",
    "check_input_dir",
    "find_runs",
    "load_filter_file",
    "read_metadata",
    "strip_prefix",
]

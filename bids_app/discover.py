"""Discovery: find, per BOLD run of an fMRIPrep folder, everything the pipeline needs.

pybids indexes the folder (its database lives in the work dir, never in the
input); no image is opened here.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputDataError, NoInputError, NothingSelectedError, UsageError
from .naming import source_entities

log = logging.getLogger(__name__)

# pybids entity names of the BOLD that identify the confounds file (no space/res).
_RUN_KEYS = (
    "subject",
    "session",
    "task",
    "acquisition",
    "ceagent",
    "reconstruction",
    "direction",
    "run",
    "echo",
)
_FILTER_KEYS = ("bold", "mask", "confounds")


@dataclass(frozen=True)
class RunInputs:
    """All files of one BOLD run, and what is known without opening an image."""

    bold: Path
    mask: Path | None
    confounds: Path
    confounds_json: Path | None
    entities: dict[
        str, str
    ]  # short BIDS keys, in output-name order (sub, ses, task, ..., space, res)
    t_r: float | None  # from the sidecar; None -> taken from the header later
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.bold.name.split("_desc-")[0]


def strip_prefix(labels: list[str] | None, prefix: str) -> list[str] | None:
    if not labels:
        return None
    return [lab[len(prefix) :] if lab.startswith(prefix) else lab for lab in labels]


def load_filter_file(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (fMRIPrep format: ``{"bold": {...}, "mask": {...}}``)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--bids-filter-file: file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f'--bids-filter-file {path}: expected {{"bold": {{entity: value}}, ...}}')
    unknown = set(data) - set(_FILTER_KEYS)
    if unknown:
        raise UsageError(
            f"--bids-filter-file {path}: unknown keys {sorted(unknown)}; allowed: {', '.join(_FILTER_KEYS)}"
        )
    return data


def _query_values(filters: dict[str, Any]) -> dict[str, Any]:
    from bids.layout import Query

    out = {}
    for key, value in filters.items():
        if value is None:
            out[key] = Query.NONE
        elif value == "*":
            out[key] = Query.ANY
        else:
            out[key] = value
    return out


def open_layout(bids_dir: Path, work_dir: Path):
    """Index ``bids_dir`` with pybids; the database goes under ``work_dir``."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    if not bids_dir.is_dir():
        raise NoInputError(f"input folder not found: {bids_dir}")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(
            f"{bids_dir} has no dataset_description.json: expected an fMRIPrep derivatives folder"
        )
    db = work_dir / "pybids_db"
    ignore = [re.compile(p) for p in (r"/figures/", r"/log/", r"\.html$", r"\.svg$", r"/\.")]
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
    try:
        return BIDSLayout(
            str(bids_dir),
            validate=False,  # derivatives without GeneratedBy (hand-made, old) are fine here
            config=["bids", "derivatives"],
            database_path=str(db),
            reset_database=True,
            indexer=indexer,
        )
    except Exception as err:  # pybids raises many types for unreadable trees
        raise InputDataError(f"cannot index {bids_dir} with pybids: {err}") from None


def _check_labels(layout, entity: str, wanted: list[str] | None, flag: str, **scope) -> None:
    if not wanted:
        return
    existing = sorted(str(v) for v in layout.get(return_type="id", target=entity, **scope))
    missing = [w for w in wanted if w not in existing]
    if missing:
        raise NothingSelectedError(
            f"{flag} {' '.join(missing)}: no such label in the input; "
            f"labels found: {' '.join(existing) if existing else '(none)'}"
        )


def _tr_from_metadata(meta: dict[str, Any]) -> float | None:
    tr = meta.get("RepetitionTime")
    try:
        return float(tr) if tr is not None else None
    except (TypeError, ValueError):
        return None


def discover_runs(
    layout,
    space: str,
    res: str | None = None,
    participants: list[str] | None = None,
    sessions: list[str] | None = None,
    tasks: list[str] | None = None,
    filters: dict[str, dict[str, Any]] | None = None,
    desc: str = "preproc",
) -> list[RunInputs]:
    """All preprocessed BOLD runs in ``space`` matching the selection, sorted by path.

    ``desc`` is ``preproc``, or ``smoothAROMAnonaggr`` for ICA-AROMA "full" denoising.
    """
    filters = filters or {}
    participants = strip_prefix(participants, "sub-")
    sessions = strip_prefix(sessions, "ses-")
    tasks = strip_prefix(tasks, "task-")
    base = {
        "datatype": "func",
        "suffix": "bold",
        "desc": "preproc",
        "extension": [".nii.gz", ".nii"],
    }
    if not layout.get(**base):
        raise NoInputError(
            f"no preprocessed BOLD (*_desc-preproc_bold.nii.gz) in {layout.root}: "
            "expected an fMRIPrep derivatives folder"
        )
    _check_labels(layout, "subject", participants, "--participant-label", **base)
    _check_labels(layout, "session", sessions, "--session-label", **base)
    _check_labels(layout, "task", tasks, "--task", **base)
    spaces = sorted(str(s) for s in layout.get(return_type="id", target="space", **base))
    if space not in spaces:
        raise NothingSelectedError(
            f"no preprocessed BOLD in space {space!r}; spaces found: {' '.join(spaces) or '(none)'} "
            "(set `space` in the config or --space)"
        )
    query = dict(base, space=space)
    if res is not None:
        query["res"] = res
    if participants:
        query["subject"] = participants
    if sessions:
        query["session"] = sessions
    if tasks:
        query["task"] = tasks
    query.update(_query_values(filters.get("bold", {})))
    files = sorted(layout.get(**query), key=lambda f: f.path)
    if not files:
        raise NothingSelectedError(
            "the selection (labels, space, res, --bids-filter-file) matched no preprocessed BOLD file"
        )
    return [_run_inputs(layout, f, filters) for f in files]


def _run_inputs(layout, bold, filters: dict[str, dict[str, Any]]) -> RunInputs:
    ents = bold.get_entities()
    run_scope = {k: ents[k] for k in _RUN_KEYS if k in ents}
    path = Path(bold.path)
    mask_query = dict(
        run_scope,
        datatype="func",
        suffix="mask",
        desc="brain",
        space=ents.get("space"),
        extension=[".nii.gz", ".nii"],
    )
    mask_query["res"] = ents.get("res", _none())
    for key in (
        "subject",
        "session",
        "task",
        "acquisition",
        "ceagent",
        "reconstruction",
        "direction",
        "run",
    ):
        mask_query.setdefault(key, _none())
    mask_query.update(_query_values(filters.get("mask", {})))
    masks = [m for m in layout.get(**mask_query) if "echo" not in m.get_entities()]
    if not masks:  # fMRIPrep < 1.4 named it label-brain_mask
        mask_query.update(desc=_none(), label="brain")
        masks = [m for m in layout.get(**mask_query) if "echo" not in m.get_entities()]
    mask = Path(masks[0].path) if len(masks) == 1 else None
    if len(masks) > 1:
        raise InputDataError(f"{path}: several brain masks match: {[m.path for m in masks]}")
    confounds = _find_confounds(layout, run_scope, path, filters)
    tsv = Path(confounds.path)
    sidecar = tsv.with_name(tsv.name[: -len(".tsv")] + ".json")
    meta = layout.get_metadata(bold.path)
    short = source_entities(ents)
    return RunInputs(
        bold=path,
        mask=mask,
        confounds=tsv,
        confounds_json=sidecar if sidecar.is_file() else None,
        entities=short,
        t_r=_tr_from_metadata(meta),
        metadata={k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)},
    )


def _none():
    from bids.layout import Query

    return Query.NONE


def _find_confounds(layout, run_scope: dict[str, Any], bold: Path, filters) -> Any:
    query = dict(run_scope, datatype="func", desc="confounds", extension=".tsv")
    for key in ("session", "acquisition", "ceagent", "reconstruction", "direction", "run", "echo"):
        query.setdefault(key, _none())
    query.update(_query_values(filters.get("confounds", {})))
    found = []
    # fMRIPrep >= 20.2, then 1.2-20.1, then the earliest layouts (no desc- entity;
    # 1.0-1.1 wrote ``*_bold_confounds.tsv``).
    for suffix, desc in (
        ("timeseries", "confounds"),
        ("regressors", "confounds"),
        ("timeseries", _none()),
        ("confounds", _none()),
    ):
        found = layout.get(suffix=suffix, space=_none(), **dict(query, desc=desc))
        if found:
            break
    if not found:
        raise InputDataError(
            f"{bold}: no confounds file found (expected "
            f"{bold.name.split('_space-')[0]}_desc-confounds_timeseries.tsv or _regressors.tsv beside it)"
        )
    if len(found) > 1:
        raise InputDataError(f"{bold}: several confounds files match: {[f.path for f in found]}")
    return found[0]

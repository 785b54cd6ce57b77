"""Visual reports: per-run figures, the participant report and the group report.

Importing this package imports neither matplotlib nor nilearn: they are loaded by the
functions below on first use (matplotlib with its Agg renderer, no pyplot backend is
selected for a program that already uses pyplot; nilearn.plotting only to draw the glass
brain outlines, once per process).

========================================  =============================================
call                                      writes
========================================  =============================================
``run_figures(record, ctx)``              ``sub-<L>/figures/<run>_desc-<D>_*.png`` and
                                          ``..._figures.json`` (worker, after write_run)
``unit_figures(record, ctx)``             the same for a session / subject connectome
                                          (worker, after write_unit)
``participant_report(out, sub, config)``  ``OUTPUT_DIR/sub-<L>.html``,
                                          ``OUTPUT_DIR/logs/desc-<D>_methods.md``
``group_report(out, folder, config)``     ``<folder>/report.html``, ``<folder>/figures/``
``warm_up(ctx)``                          nothing: imports and caches (call before forking)
========================================  =============================================

All files are written atomically and are byte-identical for identical inputs and
software (see docs/reports.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..engine import RunContext, RunRecord, UnitRecord

_CONFOUND_NAMES = [
    f"{b}{s}"
    for b in (
        "trans_x",
        "trans_y",
        "trans_z",
        "rot_x",
        "rot_y",
        "rot_z",
        "white_matter",
        "csf",
        "global_signal",
    )
    for s in ("", "_derivative1", "_power2", "_derivative1_power2")
] + [f"cosine{i:02d}" for i in range(20)]


def run_figures(record: RunRecord, ctx: RunContext) -> list[Path]:
    """Figures of one run, from its in-memory record; returns the files written.

    Call in the worker right after :func:`bids_app.write.write_run` (they belong to the
    run, not to the manifest). Never raises for a figure that cannot be drawn (logged,
    left out); records its time in ``record.timings["report"]``.
    """
    from .figures import run_figures as _run

    return _run(record, ctx)


def unit_figures(record: UnitRecord, ctx: RunContext) -> list[Path]:
    """Matrix and connectome figures of a session / subject connectome
    (``connectivity.aggregate``); call right after :func:`bids_app.write.write_unit`."""
    from .figures import unit_figures as _unit

    return _unit(record, ctx)


def participant_report(output_dir: Path, subject: str, config: Config | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-<subject>.html`` from the files on disk (every ``desc``).

    Also writes ``OUTPUT_DIR/logs/desc-<D>_methods.md`` per ``desc``. ``config`` is only
    used when the configuration of its ``desc`` was not recorded yet.
    """
    from .participant import participant_report as _participant

    return _participant(Path(output_dir), subject, config)


def group_report(
    output_dir: Path, group_folder: Path | None = None, config: Config | None = None
) -> Path:
    """Write ``<group_folder>/report.html`` (default ``OUTPUT_DIR/group``) and its figures
    from the group files of every ``desc`` in that folder."""
    from .group import group_report as _group

    return _group(Path(output_dir), group_folder, config)


def warm_up(ctx: RunContext | None = None) -> None:
    """Import matplotlib and nilearn.plotting, draw the glass brain and the labels known
    in advance (atlas and network names, fMRIPrep confound names, numbers).

    Optional: the first figure does it otherwise. Call it in the parent before workers
    are forked (``ProcessExecutor``) so that no worker pays for it.
    """
    from . import _mpl, glass
    from .networks import lut_network_column, region_networks

    _mpl.use_cache(None if ctx is None else ctx.cache_dir)
    glass.warm_up()
    numbers = [str(i) for i in (*range(0, 500, 10), *range(500, 2001, 50))]
    keys = [(n, float(_mpl.FONT - 1), "normal") for n in numbers]  # carpet volume ticks
    keys += [(n, float(_mpl.FONT - 2), "normal") for n in numbers]  # regressor volume ticks
    keys += [(c, 5.2, "normal") for c in _CONFOUND_NAMES]  # regressor names
    for src in ctx.sources if ctx is not None else []:
        keys.append((src.name, float(_mpl.FONT - 1), "normal"))  # carpet atlas labels
        nets = region_networks(src.region_names, lut_network_column(src.lut, src.region_names))
        keys += [(n, 5.2, "normal") for n in sorted(set(nets or []))]  # matrix network labels
    _mpl.text_bitmaps(keys)


__all__ = [
    "group_report",
    "participant_report",
    "run_figures",
    "unit_figures",
    "warm_up",
]

"""Command line: ``bids-connectome BIDS_DIR OUTPUT_DIR {participant,group} [options]``.

This module only parses and wires; each stage lives in its own module.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import __version__
from .errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
    AppError,
    UsageError,
)

log = logging.getLogger("bids_app")
LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits with 2; BIDS-Apps want 64
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bids-connectome",
        description=(
            "Denoise fMRIPrep BOLD runs with the fMRIPrep confounds, extract region signals "
            "(label atlases, probabilistic maps, spheres, regions of statistical maps) and compute "
            "connectomes, written as BIDS derivatives."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="fMRIPrep derivatives folder (read only)")
    p.add_argument("output_dir", type=Path, help="where the derivatives are written")
    p.add_argument(
        "analysis_level", help="participant: per-run outputs; group: group matrices and QC"
    )
    g = p.add_argument_group("selection")
    g.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        help="participants to process (with or without 'sub-'), or a file with one label per line",
    )
    g.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL")
    g.add_argument("-t", "--task", "--task-id", nargs="+", metavar="TASK", dest="task")
    g.add_argument("--space", help="BOLD space to process (overrides the config's `space`)")
    g.add_argument(
        "--bids-filter-file",
        type=Path,
        metavar="FILE",
        help='JSON with pybids filters per file kind, e.g. {"bold": {"run": 1}} (null: absent, "*": any)',
    )
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="run configuration (default: the packaged configs/default.yaml); "
        "a bare preset name such as 'scrubbing' selects a packaged preset",
    )
    g = p.add_argument_group("execution")
    g.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        help="pybids index and scratch (default: a temporary folder, removed at the end)",
    )
    g.add_argument(
        "--n-jobs", "--nprocs", type=int, default=1, metavar="N", help="runs processed in parallel"
    )
    g.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    g.add_argument("--version", action="version", version=f"bids-connectome {__version__}")
    return p


def _read_labels(values: list[str] | None) -> list[str] | None:
    """Labels from the command line; a single existing file gives one label per line."""
    if not values:
        return None
    if len(values) == 1 and Path(values[0]).is_file():
        return [ln.strip() for ln in Path(values[0]).read_text().splitlines() if ln.strip()]
    return values


def _check_dirs(bids_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    bids = bids_dir.expanduser().resolve()
    out = output_dir.expanduser().resolve()
    if out == bids or bids in out.parents:
        raise UsageError(f"OUTPUT_DIR ({out}) must not be BIDS_DIR or inside it ({bids})")
    return bids, out


def _resolve_config_arg(value: str | None) -> Path | None:
    from .config import list_presets, packaged_config

    if value is None:
        return None
    if not Path(value).exists() and value in list_presets():
        return packaged_config(value)
    return Path(value)


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (which may be replaced after start-up)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(level: int) -> None:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    )
    for old in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(logging.WARNING - 10 * min(args.verbose + 1, 2))
    if args.analysis_level not in LEVELS:
        print(
            f"bids-connectome: error: unknown analysis level {args.analysis_level!r}; "
            f"choose from {', '.join(LEVELS)}",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN_LEVEL
    try:
        return _run(args)
    except AppError as err:
        print(f"bids-connectome: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("bids-connectome: interrupted", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    from .config import load_config

    if args.n_jobs < 1:
        raise UsageError("--n-jobs must be at least 1")
    bids_dir, output_dir = _check_dirs(args.bids_dir, args.output_dir)
    config_path = _resolve_config_arg(args.config)
    config = load_config(config_path, space=args.space)
    participants = _read_labels(args.participant_label)
    sessions = _read_labels(args.session_label)
    tasks = _read_labels(args.task)
    start = time.perf_counter()
    if args.analysis_level == "group":
        from .group import run_group

        if not output_dir.is_dir():
            raise UsageError(
                f"OUTPUT_DIR {output_dir} does not exist: run the participant level first"
            )
        written = run_group(
            output_dir,
            config,
            participants=[p.removeprefix("sub-") for p in participants] if participants else None,
            sessions=[s.removeprefix("ses-") for s in sessions] if sessions else None,
            tasks=[t.removeprefix("task-") for t in tasks] if tasks else None,
        )
        log.info(
            "group level: %d files written in %.1f s", len(written), time.perf_counter() - start
        )
        return EXIT_OK

    from . import discover
    from .participant import run_participant

    filters = discover.load_filter_file(args.bids_filter_file)
    work_dir, temporary = _work_dir(args.work_dir)
    try:
        layout = discover.open_layout(bids_dir, work_dir)
        aroma = config.denoise.strategy == "ica_aroma" and config.denoise.ica_aroma in (
            None,
            "full",
        )
        runs = discover.discover_runs(
            layout,
            config.space,
            config.res,
            participants,
            sessions,
            tasks,
            filters,
            desc="smoothAROMAnonaggr" if aroma else "preproc",
        )
        log.info("%d BOLD run(s) selected in space %s", len(runs), config.space)
        summary = run_participant(bids_dir, output_dir, config, runs, n_jobs=args.n_jobs)
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    log.info(
        "participant level: %d run(s) done, %d excluded, %d failed in %.1f s",
        summary.n_done,
        summary.n_excluded,
        len(summary.failures),
        time.perf_counter() - start,
    )
    return summary.exit_code


def _work_dir(requested: Path | None) -> tuple[Path, bool]:
    if requested is not None:
        requested = requested.expanduser().resolve()
        try:
            requested.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--work-dir {requested}: cannot create it: {err}") from None
        return requested, False
    try:
        return Path(tempfile.mkdtemp(prefix="bids-connectome-")), True
    except OSError as err:
        raise UsageError(
            f"cannot create a temporary work folder in {os.environ.get('TMPDIR') or '/tmp'} ({err}); "
            "pass --work-dir on a writable disk"
        ) from None


if __name__ == "__main__":  # pragma: no cover
    os._exit(main())

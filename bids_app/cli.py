"""Command line: ``bids-connectome BIDS_DIR OUTPUT_DIR {participant,group} [options]``.

This module only parses, sets up logging and progress, and wires; each stage lives in
its own module.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from . import __version__, naming
from .errors import (
    EXIT_FAILURE,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
    AppError,
    UsageError,
)

log = logging.getLogger("bids_app")
LEVELS = ("participant", "group")
LIBRARIES = ("numpy", "scipy", "pandas", "nibabel", "scikit-learn", "pybids", "pydantic", "isal")


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
    g.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        metavar="LABEL",
        help="sessions to process (with or without 'ses-')",
    )
    g.add_argument(
        "-t", "--task", "--task-id", nargs="+", metavar="TASK", dest="task", help="tasks to process"
    )
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
    g.add_argument(
        "--templateflow-home",
        type=Path,
        metavar="DIR",
        help="TemplateFlow folder for atlases given by query (default: $TEMPLATEFLOW_HOME, "
        "else ~/.cache/templateflow); never downloaded from unless --allow-atlas-download",
    )
    g.add_argument(
        "--allow-atlas-download",
        action="store_true",
        help="download TemplateFlow atlases missing from the TemplateFlow folder (needs a network)",
    )
    g = p.add_argument_group("execution")
    g.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        help="scratch folder (default: a temporary folder, removed at the end)",
    )
    g.add_argument(
        "--bids-database-dir",
        type=Path,
        metavar="DIR",
        help="pybids index of BIDS_DIR to reuse (built there on first use); without it only the "
        "selected participants' folders are listed",
    )
    g.add_argument(
        "--n-jobs",
        "--nprocs",
        type=int,
        default=1,
        metavar="N",
        help="runs processed in parallel, one local process each (default: 1, in this process)",
    )
    g.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="submit one task per run to this Dask distributed scheduler (e.g. tcp://host:8786); "
        "OUTPUT_DIR must be on a file system the workers share",
    )
    g.add_argument(
        "--group-label",
        metavar="LABEL",
        help="group level with a selection: name of its folder group/subset-LABEL/ "
        "(default: a short hash of the selection)",
    )
    g.add_argument(
        "--atlas-cache",
        type=Path,
        metavar="DIR",
        help="cache of atlases prepared for a BOLD grid, shared by the jobs of a cohort "
        "(default: $XDG_CACHE_HOME/bids-connectome, else ~/.cache/bids-connectome)",
    )
    g.add_argument(
        "--no-reports",
        action="store_true",
        help="write no HTML report (sub-<L>.html, group/report.html) and no figures",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: per-run stage timings; -vv: debug messages",
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


# --- logging and progress -----------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (which may be replaced after start-up), above
    the progress bar when one is shown."""

    bar = None

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is None:
            super().emit(record)
            return
        try:
            self.bar.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(verbose: int) -> _StderrHandler:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    )
    handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for old in [h for h in log.handlers if isinstance(h, _StderrHandler | logging.FileHandler)]:
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return handler


class _LogFile:
    """The invocation's log: written in the work folder, moved to OUTPUT_DIR/logs/ at the end
    when the invocation wrote outputs (a failing invocation leaves nothing in OUTPUT_DIR)."""

    def __init__(self, work_dir: Path, level: str, config_path: Path | None):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        host = "".join(ch for ch in os.uname().nodename if ch.isalnum()) or "host"
        self.stem = f"bids-connectome_{level}_{stamp}_{host}-{os.getpid()}"
        self.path = work_dir / f"{self.stem}.log"
        self.config_path = config_path
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
        )
        self.handler.setLevel(logging.DEBUG)
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.write(f"# command: {shlex.join(sys.argv)}\n")
            fh.write(f"# working directory: {os.getcwd()}\n")
            fh.write(f"# started: {stamp} UTC on {os.uname().nodename}\n")
            fh.write(f"# python {sys.version.split()[0]}; bids-connectome {__version__}; ")
            fh.write("; ".join(f"{lib} {_version(lib)}" for lib in LIBRARIES) + "\n")
            fh.write(f"# configuration: {config_path or 'packaged default.yaml'}")
            fh.write(f" (copied to {self.stem}_config.yaml)\n")
        log.addHandler(self.handler)

    def close(self, output_dir: Path, keep: bool) -> None:
        log.removeHandler(self.handler)
        self.handler.close()
        if not keep:
            return
        dest = naming.logs_dir(output_dir)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path, dest / self.path.name)
            from .config import packaged_config

            config = self.config_path if self.config_path is not None else packaged_config()
            shutil.copyfile(config, dest / f"{self.stem}_config.yaml")
        except OSError as err:
            print(
                f"bids-connectome: warning: cannot write the log to {dest}: {err}", file=sys.stderr
            )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Progress:
    """Runs done / total with elapsed time and ETA on a terminal (tqdm); one log line per
    run otherwise."""

    def __init__(self, total: int, handler: _StderrHandler, verbose: int):
        self.total, self.done, self.verbose = total, 0, verbose
        self.start = time.perf_counter()
        self.bar = None
        self.handler = handler
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread (workers are forked)
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError):
                sized = False
            self.bar = tqdm(  # a terminal that reports no size (a bare pty) gets 80 x 24
                total=total,
                unit="run",
                file=sys.stderr,
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
            )
            handler.bar = self.bar

    def __call__(self, outcome) -> None:
        for level, message in outcome.records:
            log.log(level, message)
        is_run = outcome.kind == "run"
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in outcome.timings.items())
        if outcome.status == "failed":
            log.error("%s: %s", outcome.label, outcome.message)
        else:
            what = {
                "done": "done",
                "excluded": "excluded",
                "skipped": "skipped: outputs are current",
            }
            line = f"{outcome.label}: {what.get(outcome.status, outcome.status)}"
            if outcome.status == "excluded":
                line += f" ({outcome.message})"
            elif outcome.detail:
                line += f" ({outcome.detail})"
            if self.verbose and timings:
                line += f" [{timings}]"
            level = logging.INFO if self.bar is None or self.verbose else logging.DEBUG
            log.log(level, "%s", line)
        if timings and not self.verbose:
            log.debug("%s: stage timings: %s", outcome.label, timings)
        if is_run and self.done < self.total:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.handler.bar = None


# --- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _setup_logging(args.verbose)
    if args.analysis_level not in LEVELS:
        print(
            f"bids-connectome: error: unknown analysis level {args.analysis_level!r}; "
            f"choose from {', '.join(LEVELS)}",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN_LEVEL
    try:
        return _run(args, handler)
    except AppError as err:
        print(f"bids-connectome: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("bids-connectome: interrupted", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace, handler: _StderrHandler) -> int:
    from .config import load_config

    if args.n_jobs < 1:
        raise UsageError("--n-jobs must be at least 1")
    if args.dask_scheduler and args.n_jobs > 1:
        raise UsageError("--n-jobs and --dask-scheduler exclude each other")
    bids_dir, output_dir = _check_dirs(args.bids_dir, args.output_dir)
    config_path = _resolve_config_arg(args.config)
    config = load_config(
        config_path,
        space=args.space,
        check_files=args.analysis_level != "group",
        templateflow_home=args.templateflow_home,
        allow_network=args.allow_atlas_download,
    )
    participants = _read_labels(args.participant_label)
    sessions = _read_labels(args.session_label)
    tasks = _read_labels(args.task)
    work_dir, temporary = _work_dir(args.work_dir)
    logfile = _LogFile(work_dir, args.analysis_level, config_path)
    keep_log = False
    try:
        if args.analysis_level == "group":
            code, keep_log = _group(args, output_dir, config, participants, sessions, tasks)
        else:
            code, keep_log = _participant(
                args, bids_dir, output_dir, config, participants, sessions, tasks, handler
            )
        return code
    finally:
        logfile.close(output_dir, keep_log)
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


def _group(args, output_dir, config, participants, sessions, tasks) -> tuple[int, bool]:
    from .discover import strip_prefix
    from .group import run_group

    start = time.perf_counter()
    if not output_dir.is_dir():
        from .errors import NoInputError

        raise NoInputError(
            f"OUTPUT_DIR {output_dir} does not exist: run the participant level first"
        )
    result = run_group(
        output_dir,
        config,
        participants=strip_prefix(participants, "sub-"),
        sessions=strip_prefix(sessions, "ses-"),
        tasks=strip_prefix(tasks, "task-"),
        subset_label=args.group_label,
    )
    if result.written and not args.no_reports:
        from .report import group_report

        try:
            group_report(output_dir, result.folder, config)
        except Exception as err:  # a report never fails the level
            log.warning("the group report could not be written: %s", err)
    log.info(
        "group level: %d files written in %s in %.1f s",
        len(result.written),
        result.folder.relative_to(output_dir).as_posix() + "/",
        time.perf_counter() - start,
    )
    return result.exit_code, bool(result.written)


def _participant(
    args, bids_dir, output_dir, config, participants, sessions, tasks, handler
) -> tuple[int, bool]:
    from . import discover
    from .executors import make_executor
    from .participant import make_context, run_participant

    start = time.perf_counter()
    filters = discover.load_filter_file(args.bids_filter_file)
    aroma = config.denoise.strategy == "ica_aroma" and config.denoise.ica_aroma in (None, "full")
    selection = discover.Selection(
        space=config.space,
        res=config.res,
        participants=discover.strip_prefix(participants, "sub-"),
        sessions=discover.strip_prefix(sessions, "ses-"),
        tasks=discover.strip_prefix(tasks, "task-"),
        filters=filters,
        desc="smoothAROMAnonaggr" if aroma else "preproc",
    )
    runs = discover.find_runs(bids_dir, selection, args.bids_database_dir)
    executor = make_executor(args.n_jobs, args.dask_scheduler)
    log.info(
        "%d BOLD run(s) selected in space %s; executor: %s%s",
        len(runs),
        config.space,
        executor.name,
        f" ({args.n_jobs} processes)" if args.n_jobs > 1 else "",
    )
    ctx = make_context(
        config,
        output_dir,
        bids_dir,
        cache_dir=_atlas_cache(args.atlas_cache),
        reports=not args.no_reports,
    )
    progress = _Progress(len(runs), handler, args.verbose)
    try:
        summary = run_participant(ctx, runs, executor, on_outcome=progress)
    finally:
        progress.close()
        executor.close()
    log.info(
        "participant level: %d run(s): %d done, %d skipped (current), %d excluded, %d failed "
        "in %.1f s",
        summary.n_runs,
        summary.n_done,
        summary.n_skipped,
        summary.n_excluded,
        summary.n_failed,
        time.perf_counter() - start,
    )
    return summary.exit_code, summary.wrote_outputs


def _atlas_cache(requested: Path | None) -> Path | None:
    """``--atlas-cache`` or the user cache folder (None when none can be created: the
    cache only saves time, it is never needed)."""
    if requested is not None:
        return requested.expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "bids-connectome" / "atlases"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


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


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script: :func:`main`, then the process ends without tearing the
    interpreter down.

    What an exit must do is done as usual: other threads are waited for, the exit
    handlers run (log files, worker pools, temporary folders) and the standard streams
    are flushed. What is skipped is freeing every module and object one by one: after
    a run has loaded pandas, SciPy and matplotlib that takes 0.1-0.15 s, and nothing a
    user can see depends on it.
    """
    code = main(argv)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing left to save
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()

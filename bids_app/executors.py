"""Executors: where the runs are computed. Each takes ``(function, tasks, context)`` and
yields one outcome per task as tasks finish; a task that raises or whose process dies
gives a failed outcome for that task only.

- :class:`SerialExecutor`: in this process, one task after the other (the default).
- :class:`ProcessExecutor`: ``--n-jobs N`` local processes, one fresh process per task
  (a crash or an out-of-memory kill takes down only its own run; memory is returned to
  the system after every run).
- :class:`DaskExecutor`: ``--dask-scheduler ADDRESS``, one task per run on an existing
  Dask distributed cluster; the output folder must be a file system the workers share.

Numerics are deterministic whichever executor runs them: BLAS / OpenMP thread pools
are limited to one thread per task (threadpoolctl), so the same run gives the same
bits alone or among concurrent runs, and ``--n-jobs`` does not oversubscribe the cores.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

from .engine import RunContext, RunOutcome
from .errors import EXIT_FAILURE, UsageError

log = logging.getLogger(__name__)
Task = Any
TaskFunction = Callable[[Task, RunContext], RunOutcome]


@contextmanager
def one_thread():
    """BLAS and OpenMP limited to one thread inside the block (restored afterwards)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def pin_threads() -> None:
    """BLAS and OpenMP limited to one thread for the rest of this (worker) process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _failed(task: Task, message: str) -> RunOutcome:
    return RunOutcome(
        label=task.label,
        entities=dict(task.entities),
        status="failed",
        kind="run" if hasattr(task, "run") else "unit",
        message=message,
        exit_code=EXIT_FAILURE,
    )


class SerialExecutor:
    """Every task in this process, in order; log records go straight to the handlers."""

    name = "serial"

    def run(self, fn: TaskFunction, tasks: Iterable[Task], ctx: RunContext) -> Iterator[RunOutcome]:
        for task in tasks:
            with one_thread():
                yield fn(task, ctx)

    def close(self) -> None:
        pass


def _child(fn: TaskFunction, task: Task, ctx: RunContext, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    pin_threads()
    conn.send(fn(task, ctx))
    conn.close()


class ProcessExecutor:
    """Up to ``n_jobs`` tasks at once, each in a fresh process (fork where available)."""

    name = "processes"

    def __init__(self, n_jobs: int):
        if n_jobs < 1:
            raise UsageError("--n-jobs must be at least 1")
        self.n_jobs = n_jobs
        methods = multiprocessing.get_all_start_methods()
        self._mp = multiprocessing.get_context("fork" if "fork" in methods else "spawn")

    def run(self, fn: TaskFunction, tasks: Iterable[Task], ctx: RunContext) -> Iterator[RunOutcome]:
        ctx = dataclasses.replace(ctx, capture_logs=True)
        pending = deque(tasks)
        running: dict[Any, tuple[Any, Task]] = {}  # parent end of the pipe -> (process, task)
        try:
            while pending or running:
                while pending and len(running) < self.n_jobs:
                    task = pending.popleft()
                    parent, child = self._mp.Pipe(duplex=False)
                    proc = self._mp.Process(target=_child, args=(fn, task, ctx, child), daemon=True)
                    proc.start()
                    child.close()
                    running[parent] = (proc, task)
                for conn in wait(list(running)):
                    proc, task = running.pop(conn)
                    try:
                        outcome = conn.recv()
                    except (EOFError, OSError):
                        proc.join()
                        outcome = _failed(task, _death_message(proc.exitcode))
                    conn.close()
                    proc.join()
                    yield outcome
        finally:
            for conn, (proc, _) in running.items():
                proc.kill()
                proc.join()
                conn.close()

    def close(self) -> None:
        pass


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {exitcode} without a result"


def _identity(value: Any) -> Any:
    return value


# Dask event topics: the keys of the tasks that began, and of those that returned
_STARTED, _FINISHED = "bids-connectome-started", "bids-connectome-finished"
_RESUBMIT = 2  # times a task that was not running when its worker died is submitted again


def _log_event(topic: str) -> None:
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(topic, str(worker.get_current_task()))
    except Exception:  # a record for the executor only: never fail the run
        pass


def _dask_task(fn: TaskFunction, task: Task, ctx: RunContext) -> RunOutcome:
    _log_event(_STARTED)
    pin_threads()
    outcome = fn(task, ctx)
    _log_event(_FINISHED)
    return outcome


class DaskExecutor:
    """One task per run on the Dask distributed scheduler at ``address``."""

    name = "dask"

    def __init__(self, address: str, timeout: float = 30.0):
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(
                "--dask-scheduler needs Dask's distributed package: pip install 'bids-connectome[dask]'"
            ) from None
        try:
            self.client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise UsageError(f"--dask-scheduler {address}: cannot connect: {err}") from None
        self.address = address

    def run(self, fn: TaskFunction, tasks: Iterable[Task], ctx: RunContext) -> Iterator[RunOutcome]:
        from distributed import as_completed

        tasks = list(tasks)
        if not tasks:
            return
        # The context goes to the cluster once, as the input of a task (not scattered data):
        # if the workers holding it die, the scheduler recomputes it instead of losing it.
        with warnings.catch_warnings():  # "Sending large graph": the atlases, once, on purpose
            warnings.simplefilter("ignore", UserWarning)
            shared = self.client.submit(
                _identity, dataclasses.replace(ctx, capture_logs=True), pure=False
            )
        futures, resubmitted = {}, {}
        for task in tasks:
            future = self.client.submit(_dask_task, fn, task, shared, pure=False)
            futures[future] = task
        done = as_completed(futures, loop=self.client.loop)
        for future in done:
            task = futures.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # the task raised, or killed its workers (KilledWorker)
                # A worker that dies takes along the tasks queued on it and the results it
                # held: a task that was not running (never began, or had returned) is not
                # the one that killed it, and gets another chance.
                n = resubmitted.get(task.label, 0)
                if type(err).__name__ == "KilledWorker" and n < _RESUBMIT:
                    running = self._running()
                    if running is not None and str(future.key) not in running:
                        resubmitted[task.label] = n + 1
                        again = self.client.submit(_dask_task, fn, task, shared, pure=False)
                        futures[again] = task
                        done.add(again)
                        future.release()
                        continue
                outcome = _failed(task, f"Dask task failed: {type(err).__name__}: {err}")
            future.release()
            yield outcome
        shared.release()

    def _running(self) -> set[str] | None:
        """Keys of the tasks that began and never returned (None: the record is unavailable,
        and every task that lost its worker counts as the one that killed it)."""
        try:
            started = {str(msg) for _, msg in self.client.get_events(_STARTED)}
            finished = {str(msg) for _, msg in self.client.get_events(_FINISHED)}
        except Exception:
            return None
        return started - finished

    def close(self) -> None:
        self.client.close()


def make_executor(n_jobs: int = 1, dask_scheduler: str | None = None):
    """The executor for ``--n-jobs`` / ``--dask-scheduler``."""
    if dask_scheduler:
        return DaskExecutor(dask_scheduler)
    if n_jobs > 1:
        return ProcessExecutor(n_jobs)
    if n_jobs < 1:
        raise UsageError("--n-jobs must be at least 1")
    return SerialExecutor()

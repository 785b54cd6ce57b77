"""The run engine: executors, resume after kill -9, reruns, configurations never mixing,
concurrent jobs, progress and logging."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo
from bids_app.engine import RunContext, RunOutcome
from bids_app.executors import ProcessExecutor, SerialExecutor
from bids_app.write import read_tsv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    dest = tmp_path_factory.mktemp("engine")
    config = build_demo(dest, DemoSpec(n_subjects=3, n_sessions=1, n_runs=1, n_volumes=40, seed=5))
    return dest / "fmriprep", config


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's hash; ``logs/`` (timestamped, one log per invocation) left out."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "logs"
    }


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> Path:
    """An uninterrupted serial run, participant and group level."""
    bids, config = demo
    out = tmp_path_factory.mktemp("ref") / "ref" / "out"  # as deep as tmp_path / "x" / "out"
    assert cli(bids, out, "participant", "--config", config) == 0
    assert cli(bids, out, "group", "--config", config) == 0
    return out


def test_executors_give_byte_identical_outputs(demo, reference, tmp_path):
    bids, config = demo
    out = tmp_path / "jobs" / "out"
    assert cli(bids, out, "participant", "--config", config, "--n-jobs", "2") == 0
    assert cli(bids, out, "group", "--config", config) == 0
    assert tree_digest(out) == tree_digest(reference)


def test_dask_local_cluster_gives_byte_identical_outputs(demo, reference, tmp_path):
    distributed = pytest.importorskip("distributed", reason="needs the dask extra")
    bids, config = demo
    out = tmp_path / "dask" / "out"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        code = cli(
            bids,
            out,
            "participant",
            "--config",
            config,
            "--dask-scheduler",
            cluster.scheduler_address,
        )
    assert code == 0
    assert cli(bids, out, "group", "--config", config) == 0
    assert tree_digest(out) == tree_digest(reference)


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bids_app.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".staging-" in p.name]


def _run_half_written(out: Path) -> bool:
    """A run's folder holds some of its outputs but not yet its manifest (written last)."""
    return any(
        not list(f.parent.glob(".*_run.json")) for f in out.glob("sub-*/func/*_timeseries.tsv")
    )


def _kill_when(ready, *args) -> None:
    """Start ``bids-connectome ARGS`` and ``kill -9`` it as soon as ``ready()``."""
    proc = _spawn(*args)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"


@pytest.mark.parametrize("moment", ["while-writing", "after-first-run"])
def test_kill_9_then_rerun_is_byte_identical(demo, reference, tmp_path, moment):
    bids, config = demo
    out = tmp_path / "killed" / "out"
    if moment == "while-writing":
        ready = lambda: out.is_dir() and (bool(_temporaries(out)) or _run_half_written(out))  # noqa: E731
    else:
        ready = lambda: bool(list(out.glob("sub-*/func/.*_run.json")))  # noqa: E731
    _kill_when(ready, bids, out, "participant", "--config", config)
    assert cli(bids, out, "participant", "--config", config) == 0
    assert cli(bids, out, "group", "--config", config) == 0
    assert not _temporaries(out)
    assert tree_digest(out) == tree_digest(reference)


def test_kill_9_during_the_group_level_then_rerun_is_byte_identical(demo, reference, tmp_path):
    bids, config = demo
    out = tmp_path / "killed" / "out"
    assert cli(bids, out, "participant", "--config", config) == 0
    staged = lambda: any(p.is_file() for p in (out / "group").glob(".staging-*/*"))  # noqa: E731
    _kill_when(staged, bids, out, "group", "--config", config)
    assert _temporaries(out), "nothing staged when killed"
    assert cli(bids, out, "group", "--config", config) == 0
    assert not _temporaries(out)
    assert tree_digest(out) == tree_digest(reference)


def _visible(root: Path) -> dict[str, str]:
    return {
        k: v
        for k, v in tree_digest(root).items()
        if k.startswith(("sub-", "group/")) and "/." not in k
    }


def test_rerun_skips_finished_runs(demo, reference, tmp_path, capsys):
    import shutil

    bids, config = demo
    bids = Path(shutil.copytree(bids, tmp_path / "input" / "fmriprep"))  # inputs are touched below
    out = tmp_path / "rerun" / "out"
    assert cli(bids, out, "participant", "--config", config) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("sub-*/func/*")}
    capsys.readouterr()
    assert cli(bids, out, "participant", "--config", config) == 0
    err = capsys.readouterr().err
    assert err.count("skipped: outputs are current") == 3
    assert "0 done, 3 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("sub-*/func/*")} == stamps
    # the manifest says what produced the outputs: software, configuration, inputs
    manifest = json.loads(next(out.glob("sub-02/func/.*_run.json")).read_text())
    assert manifest["ConfigurationHash"].startswith("sha256:")
    bold = next(bids.glob("sub-02/func/*_desc-preproc_bold.nii.gz"))
    (entry,) = [i for i in manifest["Inputs"] if i["path"].endswith(bold.name)]
    assert entry["size"] == bold.stat().st_size and entry["mtime_ns"] == bold.stat().st_mtime_ns
    # one input changed: only that run is redone
    confounds = next(bids.glob("sub-02/func/*_desc-confounds_timeseries.tsv"))
    os.utime(confounds)
    assert cli(bids, out, "participant", "--config", config) == 0
    err = capsys.readouterr().err
    assert "1 done, 2 skipped" in err
    assert cli(bids, out, "group", "--config", config) == 0
    assert _visible(out) == _visible(reference)


def _variant(config: Path, name: str, edit) -> Path:
    data = yaml.safe_load(config.read_text())
    edit(data)
    path = config.with_name(f"{name}.yaml")  # beside demo.yaml: relative atlas paths hold
    path.write_text(yaml.safe_dump(data))
    return path


def _names(out: Path, pattern: str) -> list[str]:
    """Output files (reports aside: their figures follow the outputs they show)."""
    return sorted(
        p.name
        for p in out.rglob(pattern)
        if p.is_file() and "figures" not in p.parts and not p.name.endswith(".html")
    )


def test_changed_configuration_replaces_old_outputs(demo, tmp_path):
    bids, config = demo
    out = tmp_path / "changed" / "out"
    assert cli(bids, out, "participant", "--no-reports", "--config", config) == 0
    assert cli(bids, out, "group", "--no-reports", "--config", config) == 0
    assert _names(out, "sub-*/func/*meas-partialcorrelation*")
    # a measure no longer asked for: its files go, at both levels
    fewer = _variant(config, "fewer", lambda d: d["connectivity"].update(measures=["correlation"]))
    assert cli(bids, out, "participant", "--no-reports", "--config", fewer) == 0
    assert not _names(out, "sub-*/func/*meas-partialcorrelation*")
    assert cli(bids, out, "group", "--no-reports", "--config", fewer) == 0
    assert not _names(out, "group/*meas-partialcorrelation*")
    # stricter minimum: every run excluded, nothing but the QC sidecars stays
    strict = _variant(config, "strict", lambda d: d["denoise"].update(min_volumes=1000))
    assert cli(bids, out, "participant", "--no-reports", "--config", strict) == 0
    left = sorted(p.name for p in out.glob("sub-*/func/*") if not p.name.startswith("."))
    assert left and all(name.endswith("_desc-simple_qc.json") for name in left)
    assert all(json.loads(p.read_text())["Excluded"] for p in out.glob("sub-*/func/*_qc.json"))
    assert cli(bids, out, "group", "--no-reports", "--config", strict) == 0
    assert _names(out, "group/*") == [
        "task-rest_space-MNI152NLin2009cAsym_desc-simple_qc.json",
        "task-rest_space-MNI152NLin2009cAsym_desc-simple_qc.tsv",
    ]
    assert read_tsv(out / "group/task-rest_space-MNI152NLin2009cAsym_desc-simple_qc.tsv")[
        "excluded"
    ].all()


def test_aggregation_level_change_leaves_no_stale_connectome(tmp_path):
    config = build_demo(
        tmp_path / "d", DemoSpec(n_subjects=1, n_sessions=2, n_runs=2, n_volumes=45)
    )
    bids, out = tmp_path / "d" / "fmriprep", tmp_path / "out"
    one = _variant(
        config,
        "one",
        lambda d: (
            d.update(atlases=d["atlases"][:1])
            or d["connectivity"].update(measures=["correlation"], aggregate="session")
        ),
    )
    assert cli(bids, out, "participant", "--no-reports", "--config", one) == 0
    assert len(_names(out, "*_relmat.tsv")) == 2 and not _names(out, "*run-*_relmat.tsv")
    per_run = _variant(one, "perrun", lambda d: d["connectivity"].update(aggregate="run"))
    assert cli(bids, out, "participant", "--no-reports", "--config", per_run) == 0
    assert len(_names(out, "*_relmat.tsv")) == 4 and len(_names(out, "*run-*_relmat.tsv")) == 4
    assert not list(out.rglob(".*_unit.json"))


def test_group_uses_only_outputs_of_its_configuration(demo, tmp_path, caplog):
    bids, config = demo
    out = tmp_path / "mixed" / "out"
    assert cli(bids, out, "participant", "--no-reports", "--config", config) == 0
    other = _variant(config, "other", lambda d: d["denoise"].update(high_pass=0.02))
    assert (
        cli(
            bids, out, "participant", "--no-reports", "--config", other, "--participant-label", "01"
        )
        == 0
    )
    caplog.clear()
    assert cli(bids, out, "group", "--no-reports", "--config", other) == 0
    assert "made with another configuration" in caplog.text and "sub-02" in caplog.text
    side = json.loads(
        next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmat.json")).read_text()
    )
    assert side["Participants"] == ["sub-01"]
    assert all("sub-01" in s for s in side["Sources"])
    assert cli(bids, out, "group", "--no-reports", "--config", config) == 0
    side = json.loads(
        next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmat.json")).read_text()
    )
    assert side["Participants"] == ["sub-02", "sub-03"]


def test_group_subset_never_replaces_the_full_group(demo, reference, tmp_path, caplog):
    bids, config = demo
    out = tmp_path / "subset" / "out"
    assert cli(bids, out, "participant", "--config", config) == 0
    assert cli(bids, out, "group", "--config", config) == 0
    full = tree_digest(out / "group")
    qcfc = [n for n in full if n.endswith("_qcfc.tsv") and "/" not in n]
    assert qcfc  # 3 participants: QC-FC computed
    assert cli(bids, out, "group", "--config", config, "--participant-label", "01", "02") == 0
    subsets = sorted((out / "group").glob("subset-*"))
    assert len(subsets) == 1
    top = {k: v for k, v in full.items() if "/" not in k}
    assert {k: v for k, v in tree_digest(out / "group").items() if "/" not in k} == top
    sub = subsets[0]
    assert json.loads((sub / "subset.json").read_text())["participants"] == ["01", "02"]
    assert not list(sub.glob("*_qcfc.*")), "QC-FC needs 3 participants: no file, not a stale one"
    side = json.loads(
        next(sub.glob("*DemoGrid_meas-correlation_desc-simple_relmat.json")).read_text()
    )
    assert side["Participants"] == ["sub-01", "sub-02"]
    named = cli(
        bids,
        out,
        "group",
        "--config",
        config,
        "--participant-label",
        "01",
        "02",
        "--group-label",
        "pilot",
    )
    assert named == 0 and (out / "group" / "subset-pilot").is_dir()
    # the full group of fewer participants: no leftover of the earlier, larger one
    for path in out.glob("sub-03/func/*"):
        path.unlink()
    assert cli(bids, out, "group", "--config", config) == 0
    assert not list((out / "group").glob("*_qcfc.*"))
    side = json.loads(
        next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmat.json")).read_text()
    )
    assert side["NumberOfParticipants"] == 2


def test_concurrent_jobs_share_one_output_dir(demo, reference, tmp_path):
    """A Slurm array: one job per participant, all writing into one OUTPUT_DIR at once."""
    bids, config = demo
    out = tmp_path / "array" / "out"
    procs = [
        _spawn(bids, out, "participant", "--config", config, "--participant-label", sub)
        for sub in ("01", "02", "03")
    ]
    assert [p.wait() for p in procs] == [0, 0, 0]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert len(list((out / "logs").glob("*.log"))) == 3
    assert cli(bids, out, "group", "--config", config) == 0
    assert tree_digest(out) == tree_digest(reference)


def test_failing_invocation_leaves_no_files(demo, tmp_path, capsys):
    bids, config = demo
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(bids, broken)
    bold = next(broken.glob("sub-01/func/*_desc-preproc_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[:2000])  # truncated
    out = tmp_path / "out"
    code = cli(
        broken, out, "participant", "--no-reports", "--config", config, "--participant-label", "01"
    )
    assert code == 65
    assert bold.name in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*"))


def test_log_file_per_invocation(demo, reference):
    logs = sorted(
        (reference / "logs").glob("*.log"), key=lambda p: p.name.split("_")[1] != "participant"
    )
    assert [p.name.split("_")[1] for p in logs] == ["participant", "group"]
    text = logs[0].read_text()
    assert "# command:" in text and "numpy" in text and "bids-connectome" in text
    assert "participant level: 3 run(s): 3 done" in text
    copies = sorted((reference / "logs").glob("*_config.yaml"))
    assert len(copies) == 2
    assert copies[0].read_text() == Path(demo[1]).read_text()


def test_progress_lines_and_verbosity(demo, tmp_path, capsys):
    bids, config = demo
    args = ("participant", "--no-reports", "--config", config, "--participant-label", "01")
    assert cli(bids, tmp_path / "a", *args) == 0
    err = capsys.readouterr().err
    assert err.count(": done (") == 1 and "[read" not in err and "DEBUG" not in err
    assert cli(bids, tmp_path / "b", *args, "-v") == 0
    err = capsys.readouterr().err
    for stage in ("read", "prepare", "extract", "clean", "connect", "write"):
        assert f"{stage} " in err.split(": done (")[1]
    assert cli(bids, tmp_path / "c", *args, "-vv") == 0
    assert "DEBUG" in capsys.readouterr().err


def test_progress_bar_on_a_terminal(demo, tmp_path):
    import pty

    bids, config = demo
    out = tmp_path / "tty" / "out"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bids_app.cli",
            str(bids),
            str(out),
            "participant",
            "--config",
            str(config),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "3/3" in text and ("run/s" in text or "s/run" in text)  # tqdm: done / total, rate
    assert "[00:" in text and "<00:" in text  # [elapsed<remaining]


# --- executors on their own: a task that raises, a worker that dies ---------------------------


def _fragile(task, ctx):
    if task.label == "raise":
        raise RuntimeError("boom")
    if task.label == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return RunOutcome(task.label, dict(task.entities), "done")


class _Task:
    def __init__(self, label: str):
        self.label = label
        self.entities = {"sub": label}
        self.run = None


def _context(tmp_path: Path) -> RunContext:
    from bids_app.config import parse_config

    config = parse_config(
        {"atlases": [{"name": "P", "kind": "spheres", "coordinates": "power2011"}]}, tmp_path
    )
    return RunContext(config, [], tmp_path, tmp_path, "sha256:x")


def _outcomes(executor, tmp_path) -> dict[str, RunOutcome]:
    def safe(task, ctx):  # exceptions become outcomes in process_run; mimic it here
        try:
            return _fragile(task, ctx)
        except RuntimeError as err:
            return RunOutcome(
                task.label, dict(task.entities), "failed", message=str(err), exit_code=1
            )

    tasks = (
        [_Task(n) for n in ("ok1", "raise", "die", "ok2")]
        if executor.name != "serial"
        else [_Task(n) for n in ("ok1", "raise", "ok2")]
    )
    return {o.label: o for o in executor.run(safe, tasks, _context(tmp_path))}


def test_a_failing_or_killed_task_fails_alone(tmp_path):
    outcomes = _outcomes(ProcessExecutor(2), tmp_path)
    assert outcomes["ok1"].status == outcomes["ok2"].status == "done"
    assert outcomes["raise"].status == "failed" and outcomes["raise"].message == "boom"
    assert outcomes["die"].status == "failed" and "killed by SIGKILL" in outcomes["die"].message
    serial = _outcomes(SerialExecutor(), tmp_path)
    assert serial["raise"].status == "failed" and serial["ok2"].status == "done"


def test_a_killed_dask_worker_fails_only_its_task(tmp_path):
    distributed = pytest.importorskip("distributed", reason="needs the dask extra")
    import cloudpickle

    from bids_app.executors import DaskExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        executor = DaskExecutor(cluster.scheduler_address)
        try:
            outcomes = _outcomes(executor, tmp_path)
        finally:
            executor.close()
    seen = {k: (o.status, o.message) for k, o in outcomes.items()}
    assert outcomes["ok1"].status == outcomes["ok2"].status == "done", seen
    assert outcomes["raise"].status == "failed"
    assert outcomes["die"].status == "failed" and "KilledWorker" in outcomes["die"].message

"""The cluster recipes of docs/cluster.md: the Slurm scripts parse and dry-run, and the Dask
example runs against a real LocalCluster."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARRAY = ROOT / "cluster" / "participant-array.sbatch"
GROUP = ROOT / "cluster" / "group.sbatch"


@pytest.mark.parametrize("script", [ARRAY, GROUP], ids=lambda p: p.name)
def test_sbatch_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --time=" in text


def _dry_run(script: Path, tmp_path: Path, **env) -> tuple[int, list[str], str]:
    full = {
        "PATH": os.environ["PATH"],
        "DRY_RUN": "1",
        "BIDS_DIR": "/project/fmriprep",
        "OUTPUT_DIR": "/project/out",
        "IMAGE": "/images/bc.sif",
        "APPTAINER": "apptainer",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(script)], env=full, cwd=tmp_path, capture_output=True, text=True
    )
    return proc.returncode, shlex.split(proc.stdout), proc.stderr


def test_array_task_dry_run(tmp_path):
    (tmp_path / "participants.txt").write_text("sub-01\nsub-02\n03\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "my.yaml").write_text("space: T1w\n")
    code, cmd, err = _dry_run(
        ARRAY,
        tmp_path,
        SLURM_ARRAY_TASK_ID="2",
        SLURM_TMPDIR="/local/scratch",
        SLURM_JOB_ID="77",
        CONFIG=str(tmp_path / "cfg" / "my.yaml"),
    )
    assert code == 0, err
    assert cmd[:2] == ["apptainer", "run"] and "/images/bc.sif" in cmd
    i = cmd.index("/images/bc.sif")
    assert cmd[i + 1 : i + 4] == ["/data", "/out", "participant"]
    assert cmd[cmd.index("--participant-label") + 1] == "02"
    assert "/project/fmriprep:/data:ro" in cmd and "/project/out:/out" in cmd
    assert "/local/scratch/bids-connectome-77-2:/work" in cmd  # node-local scratch
    assert cmd[cmd.index("-w") + 1] == "/work"
    assert cmd[cmd.index("--config") + 1] == "/config/my.yaml"
    assert f"{tmp_path / 'cfg'}:/config:ro" in cmd
    code, cmd, _ = _dry_run(ARRAY, tmp_path, SLURM_ARRAY_TASK_ID="3")
    assert code == 0 and cmd[cmd.index("--participant-label") + 1] == "03"
    code, _, err = _dry_run(ARRAY, tmp_path, SLURM_ARRAY_TASK_ID="9")
    assert code == 64 and "no line 9" in err
    code, _, err = _dry_run(ARRAY, tmp_path, SLURM_ARRAY_TASK_ID="1", IMAGE="")
    assert code != 0 and "IMAGE" in err


def test_group_job_dry_run(tmp_path):
    code, cmd, err = _dry_run(GROUP, tmp_path)
    assert code == 0, err
    assert cmd[-3:] == ["/data", "/out", "group"]


@pytest.mark.slow
def test_dask_example_against_a_local_cluster(tmp_path):
    pytest.importorskip("distributed", reason="needs the dask extra")
    from bids_app.demo import DemoSpec, build_demo

    config = build_demo(tmp_path / "demo", DemoSpec(n_subjects=3, n_sessions=1, n_volumes=45))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cluster" / "dask_slurm.py"),
            str(tmp_path / "demo" / "fmriprep"),
            str(out),
            "--config",
            str(config),
            "--cluster",
            "local",
            "--jobs",
            "2",
            "--no-reports",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 run(s) done, 0 skipped" in proc.stdout
    assert len(list(out.glob("sub-*/func/*_meas-correlation_desc-simple_relmat.tsv"))) == 12
    assert list(out.glob("group/*_meas-correlation_desc-simple_relmat.tsv"))

"""The BIDS validator has nothing to say about the demo's outputs (participant + group)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo

pytestmark = pytest.mark.slow


def find_validator() -> str | None:
    """``bids-validator-deno`` on PATH, or beside this Python (a venv not activated)."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return shutil.which("bids-validator-deno") or (str(beside) if beside.is_file() else None)


def test_bids_validator_finds_no_error_and_no_fixable_warning(tmp_path):
    validator = find_validator()
    if validator is None:
        try:
            version = metadata.version("bids-validator-deno")
        except metadata.PackageNotFoundError:
            pytest.skip("bids-validator-deno is not installed (pip install '.[test]')")
        pytest.fail(f"bids-validator-deno {version} is installed but its executable was not found")
    config = build_demo(tmp_path / "demo", DemoSpec(n_subjects=3, n_sessions=1, n_volumes=40))
    bids, out = tmp_path / "demo" / "fmriprep", tmp_path / "out"
    assert main([str(bids), str(out), "participant", "--config", str(config)]) == 0
    assert main([str(bids), str(out), "group", "--config", str(config)]) == 0
    proc = subprocess.run(
        [validator, str(out), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    report = json.loads(proc.stdout)
    issues = report["issues"]["issues"]
    shown = [(i["severity"], i["code"], i.get("subCode"), i.get("location")) for i in issues]
    assert not [i for i in issues if i["severity"] == "error"], shown
    assert not issues, shown  # no warning either: README, authors, atlas sidecars are written
    ignore = (out / ".bidsignore").read_text().splitlines()
    patterns = [ln for ln in ignore if ln and not ln.startswith("#")]
    # suffixes BIDS does not define yet (never a BIDS one, nor a whole subject folder) ...
    suffixes = {p.removeprefix("*_") for p in patterns if p.startswith("*_")}
    assert suffixes == {
        "relmat.tsv",
        "relmat.json",
        "relmat.pconn.nii",
        "timeseries.tsv",
        "timeseries.json",
        "timeseries.ptseries.nii",
        "coverage.tsv",
        "qc.json",
    }
    # ... and the reports and the group folder, which have no place in BIDS
    assert sorted(set(patterns) - {f"*_{s}" for s in suffixes}) == [
        "/group",
        "sub-*.html",
        "sub-*/figures",
    ]
    assert (out / "README.md").stat().st_size > 300
    assert Path(out / "dataset_description.json").is_file()

"""The BIDS validator has nothing to say about the demo's outputs (participant + group)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo

pytestmark = pytest.mark.slow


def test_bids_validator_finds_no_error_and_no_fixable_warning(tmp_path):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno not installed (pip install '.[test]')")
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
    # only suffixes BIDS does not define yet, and the folders/pages BIDS has no place for
    assert all(
        p.startswith("*_") or p in ("group", "sub-*/figures", "sub-*.html") for p in patterns
    )
    assert (out / "README.md").stat().st_size > 300
    assert Path(out / "dataset_description.json").is_file()

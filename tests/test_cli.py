"""Command line: usage errors and exit codes (BIDS-Apps execution spec)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app import __version__
from bids_app.cli import main


def tiny_tree(root: Path) -> Path:
    """An fMRIPrep-like folder with empty images (enough for everything before extraction)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0", "DatasetType": "derivative"})
    )
    for sub in ("01", "02"):
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        stem = f"sub-{sub}_task-rest"
        (func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz").write_bytes(b"")
        (func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.json").write_text(
            '{"RepetitionTime": 2}'
        )
        (func / f"{stem}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz").write_bytes(b"")
        (func / f"{stem}_desc-confounds_timeseries.tsv").write_text("trans_x\n0\n")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return tiny_tree(tmp_path / "fmriprep")


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "bids_app", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "--participant-label" in proc.stdout and "{participant,group}" not in proc.stderr


_FAST_EXIT = """
import atexit, sys, threading, time
from bids_app.cli import run
atexit.register(lambda: print("exit handler ran"))
late = threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished")))
late.start()
sys.stdout.write("buffered output ")
run(sys.argv[1:])
"""


def test_console_script_exit_keeps_what_an_exit_must_do(tree, tmp_path):
    """``run`` (the console script) skips the interpreter's teardown but not the exit code,
    other threads, exit handlers or buffered output."""
    out = tmp_path / "out"
    ok = [str(tree), str(out), "participant", "--participant-label", "01", "--no-reports"]
    cases = (
        (ok, 65, "participant level: 1 run(s)"),  # empty images: the run fails (65)
        ([str(tree), str(out), "nonsense"], 17, "unknown analysis level"),
    )
    for args, code, message in cases:
        proc = subprocess.run(
            [sys.executable, "-c", _FAST_EXIT, *args], capture_output=True, text=True
        )
        assert proc.returncode == code, proc.stderr
        assert message in proc.stderr
        assert "buffered output" in proc.stdout
        assert "thread finished" in proc.stdout and "exit handler ran" in proc.stdout


def test_usage_errors_exit_64(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tree)])
    assert exc.value.code == 64
    with pytest.raises(SystemExit) as exc:
        main([str(tree), str(tmp_path / "o"), "participant", "--bogus"])
    assert exc.value.code == 64
    code, out = run([tree, tree, "participant"], capsys)
    assert code == 64 and "must not be BIDS_DIR" in out
    code, out = run([tree, tree / "derivatives" / "x", "participant"], capsys)
    assert code == 64 and "inside" in out
    assert not (tree / "derivatives").exists()


def test_unknown_level_exit_17(tree, tmp_path, capsys):
    code, out = run([tree, tmp_path / "o", "session"], capsys)
    assert code == 17 and "unknown analysis level 'session'" in out


def test_bad_config_exit_64(tree, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "denoise: {strategy: wrong}\natlases: [{name: P, kind: spheres, coordinates: power2011}]\n"
    )
    code, out = run([tree, tmp_path / "o", "participant", "--config", cfg], capsys)
    assert code == 64 and "denoise.strategy" in out and str(cfg) in out
    assert not (tmp_path / "o").exists()


def test_no_input_exit_66(tmp_path, capsys):
    code, out = run([tmp_path / "absent", tmp_path / "o", "participant"], capsys)
    assert code == 66 and "not found" in out


def test_label_not_found_exit_18(tree, tmp_path, capsys):
    code, out = run(
        [
            tree,
            tmp_path / "o",
            "participant",
            "--participant-label",
            "sub-07",
            "-w",
            tmp_path / "w",
        ],
        capsys,
    )
    assert code == 18
    assert "07" in out and "labels found: 01 02" in out
    code, out = run(
        [tree, tmp_path / "o", "participant", "--space", "T1w", "-w", tmp_path / "w"], capsys
    )
    assert code == 18 and "spaces found: MNI152NLin2009cAsym" in out
    assert not (tmp_path / "o").exists()
    assert not any(p.name.startswith("pybids") for p in tree.rglob("*")), (
        "nothing written into BIDS_DIR"
    )


def test_labels_from_file(tree, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-09\n\n")
    code, out = run([tree, tmp_path / "o", "participant", "--participant-label", labels], capsys)
    assert code == 18 and "09" in out


def test_filter_file_selecting_nothing_exit_18(tree, tmp_path, capsys):
    f = tmp_path / "filter.json"
    f.write_text(json.dumps({"bold": {"task": "nback"}}))
    code, out = run([tree, tmp_path / "o", "participant", "--bids-filter-file", f], capsys)
    assert code == 18 and "matched no" in out

"""Discovery on the real fMRIPrep trees in ../shared/data/bids_trees (image files there are empty)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bids_app import discover
from bids_app.discover import Selection, find_runs, read_metadata
from bids_app.errors import InputDataError, NoInputError, NothingSelectedError, UsageError

TREES = ("bidsexamples_ds000001-fmriprep", "abide_fmriprep25", "bidsexamples_synthetic")


@pytest.fixture(scope="module")
def trees(shared_data) -> Path:
    return shared_data / "bids_trees"


def _root(trees: Path, name: str) -> Path:
    root = trees / name
    return root / "derivatives" / "fmriprep" if name == "bidsexamples_synthetic" else root


def test_ds000001_runs_masks_confounds(trees):
    root = _root(trees, TREES[0])
    runs = find_runs(root, Selection(space="MNI152NLin2009cAsym"))
    assert len(runs) == 12  # 4 participants x 3 runs
    for run in runs:
        assert run.bold.name.endswith("_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
        assert run.bold.stat().st_size == 0  # placeholders: discovery must not open images
        assert run.mask is not None and run.mask.name.endswith("res-2_desc-brain_mask.nii.gz")
        assert run.mask.name.split("_space-")[0] == run.bold.name.split("_space-")[0]
        assert (
            run.confounds.name
            == run.bold.name.split("_space-")[0] + "_desc-confounds_timeseries.tsv"
        )
        assert run.confounds_json is not None and run.confounds_json.is_file()
        assert run.problem is None
        assert read_metadata(run)["RepetitionTime"] == 2.0
        assert list(run.entities) == ["sub", "task", "run", "space", "res"]
    subs = find_runs(root, Selection(space="MNI152NLin2009cAsym", participants=("16",)))
    assert {r.entities["sub"] for r in subs} == {"16"}


def test_ica_aroma_selects_the_aroma_series(trees):
    root = _root(trees, TREES[0])
    runs = find_runs(root, Selection(space="MNI152NLin6Asym", desc="smoothAROMAnonaggr"))
    assert len(runs) == 12
    assert all(r.bold.name.endswith("_desc-smoothAROMAnonaggr_bold.nii.gz") for r in runs)
    assert all(r.confounds.name.endswith("_desc-confounds_timeseries.tsv") for r in runs)


@pytest.mark.parametrize("name", TREES)
def test_pybids_index_gives_the_same_runs(trees, name, tmp_path):
    """--bids-database-dir (a pybids index, built then reused) finds exactly what the
    folder scan finds, on every real tree."""
    root = _root(trees, name)
    space = "MNI152NLin2009cAsym"
    scan = find_runs(root, Selection(space=space))
    db = tmp_path / "db"
    indexed = find_runs(root, Selection(space=space), database_dir=db)
    assert indexed == scan
    assert any(db.iterdir())  # the index was written there ...
    again = find_runs(root, Selection(space=space, participants=(scan[0].entities["sub"],)), db)
    assert again == [r for r in scan if r.entities["sub"] == scan[0].entities["sub"]]  # ... reused


def test_selection_errors_list_what_exists(trees):
    root = _root(trees, TREES[0])
    with pytest.raises(
        NothingSelectedError, match=r"--participant-label 99: .*labels found: 10 .*16"
    ):
        find_runs(root, Selection(space="MNI152NLin2009cAsym", participants=("99",)))
    with pytest.raises(NothingSelectedError, match="spaces found: .*MNI152NLin2009cAsym"):
        find_runs(root, Selection(space="MNI152NLin6Asym"))
    with pytest.raises(NothingSelectedError, match="--task rest: .*balloonanalogrisktask"):
        find_runs(root, Selection(space="MNI152NLin2009cAsym", tasks=("rest",)))
    with pytest.raises(NothingSelectedError, match="matched no"):
        find_runs(root, Selection(space="MNI152NLin2009cAsym", filters={"bold": {"run": 7}}))


def test_abide_sessions_fmriprep25(trees):
    runs = find_runs(_root(trees, TREES[1]), Selection(space="MNI152NLin2009cAsym"))
    assert len(runs) == 1
    run = runs[0]
    assert run.entities == {
        "sub": "v1s0x0050642",
        "ses": "1",
        "task": "rest",
        "run": "1",
        "space": "MNI152NLin2009cAsym",
    }
    assert run.mask is not None and "space-MNI152NLin2009cAsym" in run.mask.name


def test_synthetic_multisession_multirun_both_spaces(trees):
    root = _root(trees, TREES[2])
    mni = find_runs(root, Selection(space="MNI152NLin2009cAsym"))
    t1w = find_runs(root, Selection(space="T1w", sessions=("01",), tasks=("nback",)))
    assert len({(r.entities["sub"], r.entities.get("ses")) for r in mni}) > 1
    assert {r.entities["space"] for r in t1w} == {"T1w"}
    assert {r.entities["ses"] for r in t1w} == {"01"}
    assert {r.entities["task"] for r in t1w} == {"nback"}
    assert all(r.bold.suffixes[-1] == ".nii" for r in t1w)


def test_filter_file(tmp_path):
    good = tmp_path / "f.json"
    good.write_text(json.dumps({"bold": {"run": 1, "acquisition": None}}))
    assert discover.load_filter_file(good) == {"bold": {"run": 1, "acquisition": None}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"anat": {}}))
    with pytest.raises(UsageError, match="unknown keys"):
        discover.load_filter_file(bad)
    bad.write_text(json.dumps({"bold": {"acquisiton": "mb"}}))
    with pytest.raises(UsageError, match="unknown entity 'acquisiton'; did you mean 'acquisition'"):
        discover.load_filter_file(bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        discover.load_filter_file(bad)


def test_filters_null_any_and_numbers(trees):
    root = _root(trees, TREES[2])
    base = dict(space="MNI152NLin2009cAsym")
    every = find_runs(root, Selection(**base))
    no_run = find_runs(root, Selection(**base, filters={"bold": {"run": None}}))
    with_run = find_runs(root, Selection(**base, filters={"bold": {"run": "*"}}))
    run1 = find_runs(root, Selection(**base, filters={"bold": {"run": 1}}))  # matches run-01
    assert no_run and with_run and len(no_run) + len(with_run) == len(every)
    assert all("run" not in r.entities for r in no_run)
    assert {r.entities["run"] for r in run1} == {"01"}


def test_one_run_without_confounds_is_a_problem_of_that_run_only(trees, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(_root(trees, TREES[0]), root)
    gone = next(root.glob("sub-16/func/*run-2_desc-confounds_timeseries.tsv"))
    gone.unlink()
    runs = find_runs(root, Selection(space="MNI152NLin2009cAsym"))
    assert len(runs) == 12
    broken = [r for r in runs if r.problem]
    assert [r.label for r in broken] == [
        "sub-16_task-balloonanalogrisktask_run-2_space-MNI152NLin2009cAsym_res-2"
    ]
    assert "no confounds file found" in broken[0].problem
    # a corrupt sidecar is not read by discovery, only by its run
    side = next(root.glob("sub-10/func/*run-1_*desc-preproc_bold.json"))
    side.write_text("{ not json")
    runs = find_runs(root, Selection(space="MNI152NLin2009cAsym"))
    victim = next(r for r in runs if side in r.sidecars)
    with pytest.raises(InputDataError, match=f"{side.name}: cannot read the JSON sidecar"):
        read_metadata(victim)


def test_sidecar_inheritance(tmp_path):
    root = tmp_path / "ds"
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (root / "task-rest_bold.json").write_text('{"RepetitionTime": 3.0, "TaskName": "rest"}')
    stem = "sub-01_task-rest_space-T1w_desc-preproc"
    (func / f"{stem}_bold.nii.gz").write_bytes(b"")
    (func / f"{stem}_bold.json").write_text('{"RepetitionTime": 2.5}')
    (func / "sub-01_task-rest_desc-confounds_timeseries.tsv").write_text("a\n1\n")
    (run,) = find_runs(root, Selection(space="T1w"))
    assert [p.name for p in run.sidecars] == ["task-rest_bold.json", f"{stem}_bold.json"]
    assert read_metadata(run) == {"RepetitionTime": 2.5, "TaskName": "rest"}


def test_missing_inputs(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        find_runs(tmp_path / "nope", Selection(space="T1w"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="dataset_description.json"):
        find_runs(tmp_path / "empty", Selection(space="T1w"))
    (tmp_path / "empty" / "dataset_description.json").write_text(
        '{"Name": "x", "BIDSVersion": "1.9.0"}'
    )
    with pytest.raises(NoInputError, match="no preprocessed BOLD"):
        find_runs(tmp_path / "empty", Selection(space="T1w"))

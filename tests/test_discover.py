"""Discovery on the real fMRIPrep trees in ../shared/data/bids_trees (image files there are empty)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_app import discover
from bids_app.errors import InputDataError, NoInputError, NothingSelectedError, UsageError


@pytest.fixture(scope="module")
def trees(shared_data) -> Path:
    return shared_data / "bids_trees"


def layout_of(path: Path, tmp_path: Path):
    return discover.open_layout(path, tmp_path / "work")


def test_ds000001_runs_masks_confounds(trees, tmp_path):
    root = trees / "bidsexamples_ds000001-fmriprep"
    runs = discover.discover_runs(layout_of(root, tmp_path), "MNI152NLin2009cAsym")
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
        assert run.t_r == 2.0
        assert list(run.entities) == ["sub", "task", "run", "space", "res"]
    subs = discover.discover_runs(
        layout_of(root, tmp_path), "MNI152NLin2009cAsym", participants=["sub-16"]
    )
    assert {r.entities["sub"] for r in subs} == {"16"}


def test_selection_errors_list_what_exists(trees, tmp_path):
    layout = layout_of(trees / "bidsexamples_ds000001-fmriprep", tmp_path)
    with pytest.raises(
        NothingSelectedError,
        match=r"--participant-label 99: .*labels found: 02 03 10 16|labels found: .*16",
    ):
        discover.discover_runs(layout, "MNI152NLin2009cAsym", participants=["99"])
    with pytest.raises(NothingSelectedError, match="spaces found: .*MNI152NLin2009cAsym"):
        discover.discover_runs(layout, "MNI152NLin6Asym")
    with pytest.raises(NothingSelectedError, match="--task"):
        discover.discover_runs(layout, "MNI152NLin2009cAsym", tasks=["rest"])
    with pytest.raises(NothingSelectedError, match="matched no"):
        discover.discover_runs(layout, "MNI152NLin2009cAsym", filters={"bold": {"run": 7}})


def test_abide_sessions_fmriprep25(trees, tmp_path):
    runs = discover.discover_runs(
        layout_of(trees / "abide_fmriprep25", tmp_path), "MNI152NLin2009cAsym"
    )
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


def test_synthetic_multisession_multirun_both_spaces(trees, tmp_path):
    root = trees / "bidsexamples_synthetic" / "derivatives" / "fmriprep"
    layout = layout_of(root, tmp_path)
    mni = discover.discover_runs(layout, "MNI152NLin2009cAsym")
    t1w = discover.discover_runs(layout, "T1w", sessions=["ses-01"], tasks=["nback"])
    assert len({(r.entities["sub"], r.entities.get("ses")) for r in mni}) > 1
    assert {r.entities["space"] for r in t1w} == {"T1w"}
    assert {r.entities["ses"] for r in t1w} == {"01"} and {r.entities["task"] for r in t1w} == {
        "nback"
    }
    assert all(r.bold.suffixes[-1] == ".nii" for r in t1w)


def test_filter_file(tmp_path):
    good = tmp_path / "f.json"
    good.write_text(json.dumps({"bold": {"run": 1, "acquisition": None}}))
    assert discover.load_filter_file(good) == {"bold": {"run": 1, "acquisition": None}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"anat": {}}))
    with pytest.raises(UsageError, match="unknown keys"):
        discover.load_filter_file(bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        discover.load_filter_file(bad)


def test_missing_inputs(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        discover.open_layout(tmp_path / "nope", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="dataset_description.json"):
        discover.open_layout(tmp_path / "empty", tmp_path / "w")
    (tmp_path / "empty" / "dataset_description.json").write_text(
        '{"Name": "x", "BIDSVersion": "1.9.0"}'
    )
    with pytest.raises(NoInputError, match="no preprocessed BOLD"):
        discover.discover_runs(discover.open_layout(tmp_path / "empty", tmp_path / "w"), "T1w")

"""BIDS naming: entity order, label validation, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_app import naming


def test_participant_name_keeps_source_entities_in_order():
    ents = naming.source_entities(
        {
            "subject": "01",
            "session": "2",
            "task": "rest",
            "run": 1,
            "space": "MNI152NLin6Asym",
            "res": "2",
            "acquisition": "mb",
            "echo": None,
            "suffix": "bold",
            "desc": "preproc",
        }
    )
    path = naming.participant_path(
        Path("/out"), ents, "relmat", ".tsv", atlas="Schaefer", meas="correlation", desc="simple"
    )
    assert path == Path(
        "/out/sub-01/ses-2/func/"
        "sub-01_ses-2_task-rest_acq-mb_run-1_space-MNI152NLin6Asym_res-2_atlas-Schaefer_meas-correlation_desc-simple_relmat.tsv"
    )
    ents2, suffix, ext = naming.parse_name(path.name)
    assert suffix == "relmat" and ext == ".tsv"
    assert ents2 == {**ents, "atlas": "Schaefer", "meas": "correlation", "desc": "simple"}


def test_group_and_root_names():
    ents = {
        "sub": "01",
        "ses": "1",
        "task": "rest",
        "run": "2",
        "space": "T1w",
        "atlas": "A",
        "meas": "tangent",
        "desc": "x",
    }
    assert naming.group_path(Path("/o"), ents, "relmat", ".tsv") == Path(
        "/o/group/task-rest_space-T1w_atlas-A_meas-tangent_desc-x_relmat.tsv"
    )
    assert naming.atlas_lut_path(Path("/o"), "Power2011").name == "atlas-Power2011_dseg.tsv"


@pytest.mark.parametrize("bad", ["scrubbing.5+gsr", "a_b", "a-b", "é"])
def test_invalid_labels_rejected(bad):
    with pytest.raises(ValueError, match="invalid BIDS label"):
        naming.build_name({"sub": "01", "desc": bad}, "timeseries", ".tsv")


def test_parse_rejects_non_bids():
    with pytest.raises(ValueError):
        naming.parse_name("hello_world_bold.nii.gz")

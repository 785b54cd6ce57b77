"""Extraction warnings: each problem is named once per atlas (and run), with the file and the
regions or voxels concerned, on small synthetic fMRIPrep-like runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app import extract
from bids_app.config import parse_config
from bids_app.discover import RunInputs
from bids_app.engine import RunContext, compute_run

SHAPE = (14, 16, 12)
AFFINE = np.array([[3.0, 0, 0, -20], [0, 3.0, 0, -24], [0, 0, 3.0, -15], [0, 0, 0, 1]])
T = 40
SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory) -> Path:
    """A labels image with a value (7) its table does not name, and seeds of which two lie
    outside the BOLD field of view."""
    folder = tmp_path_factory.mktemp("atlas")
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[1:6, 2:8, 2:7] = 3
    labels[7:12, 2:8, 2:7] = 5
    labels[2:10, 9:14, 4:9] = 7
    nib.Nifti1Image(labels, AFFINE).to_filename(folder / "atlas-Toy_dseg.nii.gz")
    pd.DataFrame({"index": [3, 5], "name": ["Left", "Right"]}).to_csv(
        folder / "atlas-Toy_dseg.tsv", sep="\t", index=False
    )
    pd.DataFrame(
        {
            "x": [-5.0, 10.0, 120.0, 0.0],
            "y": [0.0, 6.0, 0.0, -90.0],
            "z": [3.5, 0.0, 0.0, 0.0],
            "name": ["Inside1", "Inside2", "FarRight", "FarBack"],
        }
    ).to_csv(folder / "seeds.tsv", sep="\t", index=False)
    return folder


def write_run(folder: Path, sub: str, nan_voxels: int = 0, seed: int = 0) -> RunInputs:
    """One fMRIPrep-like run: preprocessed BOLD, brain mask, confounds and BOLD sidecar;
    ``nan_voxels`` voxels of the left region are NaN in some volumes."""
    func = folder / f"sub-{sub}" / "func"
    func.mkdir(parents=True)
    stem = f"sub-{sub}_task-rest"
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal(SHAPE + (T,)) * 10 + 100).astype(np.float32)
    for k in range(nan_voxels):
        data[2, 3 + k, 3, 5 : 5 + k + 1] = np.nan
    bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"
    nib.Nifti1Image(data, AFFINE).to_filename(bold)
    mask = func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz"
    nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE).to_filename(mask)
    side = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    side.write_text(json.dumps({"RepetitionTime": 2.0, "SkullStripped": False}))
    confounds = func / f"{stem}_desc-confounds_timeseries.tsv"
    columns = ["csf", "white_matter", "global_signal", "framewise_displacement"]
    table = pd.DataFrame(rng.standard_normal((T, len(columns))), columns=columns)
    table["framewise_displacement"] = np.abs(table["framewise_displacement"]) * 0.1
    table.loc[0, "framewise_displacement"] = np.nan
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    return RunInputs(
        bold=bold,
        mask=mask,
        confounds=confounds,
        confounds_json=None,
        entities={"sub": sub, "task": "rest", "space": SPACE},
        sidecars=(side,),
    )


def context(atlas_dir: Path, tmp_path: Path, *atlases: dict) -> RunContext:
    config = parse_config(
        {
            "space": SPACE,
            "denoise": {"name": "none", "strategy": "none"},
            "atlases": list(atlases),
        },
        atlas_dir,
    )
    sources = [extract.load_atlas(cfg) for cfg in config.atlases]
    return RunContext(config, sources, tmp_path / "out", tmp_path, "sha256:test")


LABELS = {
    "name": "Toy",
    "kind": "labels",
    "image": "atlas-Toy_dseg.nii.gz",
    "labels": "atlas-Toy_dseg.tsv",
}
SEEDS = {"name": "Seeds", "kind": "spheres", "coordinates": "seeds.tsv", "radius": 4.5}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_label_value_missing_from_the_table_is_named_once(atlas_dir, caplog):
    cfg = parse_config({"atlases": [LABELS]}, atlas_dir).atlases[0]
    with caplog.at_level(logging.WARNING):
        src = extract.load_atlas(cfg)
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "atlas-Toy_dseg.nii.gz" in messages[0] and "atlas-Toy_dseg.tsv" in messages[0]
    assert "1 label values" in messages[0] and "[7]" in messages[0]
    assert src.lut["name"].tolist() == ["Left", "Right", "7"]  # named by its value


def test_regions_outside_the_field_of_view_one_warning_per_atlas_and_run(
    atlas_dir, tmp_path, caplog
):
    ctx = context(atlas_dir, tmp_path, LABELS, SEEDS)
    runs = [write_run(tmp_path / "bids", sub, seed=i) for i, sub in enumerate(("01", "02"))]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        records = [compute_run(run, ctx) for run in runs]
    empty = [m for m in warnings_of(caplog) if "without signal" in m]
    assert len(empty) == 2, empty  # the seeds atlas, once per run; every label has signal
    for run, message in zip(runs, empty, strict=True):
        assert message.startswith(f"{run.label}: atlas Seeds: 2 region(s) without signal in ")
        assert run.bold.name in message and message.endswith("n/a: FarRight, FarBack")
    for record in records:
        seeds = next(a for a in record.atlases if a.name == "Seeds")
        assert np.isnan(seeds.cleaned[:, 2:]).all() and np.isfinite(seeds.cleaned[:, :2]).all()
        assert seeds.coverage["usable"].tolist() == [True, True, False, False]


def test_nan_voxels_in_the_bold_one_warning_with_the_count(atlas_dir, tmp_path, caplog):
    ctx = context(atlas_dir, tmp_path, LABELS, SEEDS)
    run = write_run(tmp_path / "bids", "01", nan_voxels=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        record = compute_run(run, ctx)
    nan = [m for m in warnings_of(caplog) if "NaN" in m]
    assert len(nan) == 1, nan
    assert nan[0].startswith(f"{run.label}: 3 voxels of {run.bold.name} have NaN")
    toy = next(a for a in record.atlases if a.name == "Toy")
    assert np.isfinite(toy.cleaned).all()  # the other voxels of the region carry it
    assert toy.coverage["n_voxels_usable"].tolist() == [147, 150, 200]
    # a clean run of the same atlases: no warning about voxels
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        compute_run(write_run(tmp_path / "bids", "02"), ctx)
    assert not [m for m in warnings_of(caplog) if "NaN" in m]

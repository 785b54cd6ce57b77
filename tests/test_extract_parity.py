"""Extraction equals nilearn 0.14.1's maskers and region extraction on real atlases.

Synthetic float64 BOLD (few volumes) on fMRIPrep's MNI152NLin2009cAsym 2 mm grid,
no denoising on either side; real atlases from ../shared/data.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app import extract
from bids_app.config import parse_config
from bids_app.demo import GRID_AFFINE, GRID_SHAPE, brain_mask

nilearn = pytest.importorskip(
    "nilearn", reason="nilearn (test extra) is the reference implementation"
)
pytestmark = pytest.mark.shared

N_VOLUMES = 12
LABELS = "atlases/labels"
SCHAEFER_2MM = f"{LABELS}/tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-400Parcels17Networks_dseg.nii.gz"
SCHAEFER_TSV = f"{LABELS}/atlas-Schaefer2018v0143_desc-400Parcels17Networks_dseg.tsv"
SCHAEFER_1MM = f"{LABELS}/tpl-MNI152NLin2009cAsym_res-01_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.nii.gz"
HO_MAPS = "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz"
MOTOR = "statmaps/neurovault_coll658_img10426_left_vs_right_motor.nii.gz"


def atlas_cfg(**kwargs):
    return parse_config({"atlases": [kwargs]}, Path("/")).atlases[0]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """BOLD (uncompressed, float64, spatially smooth + noise), its mask, and a nilearn image."""
    rng = np.random.default_rng(4)
    from scipy import ndimage

    base = ndimage.gaussian_filter(rng.standard_normal(GRID_SHAPE), 2.0) * 40 + 500
    data = np.empty(GRID_SHAPE + (N_VOLUMES,))
    for t in range(N_VOLUMES):
        vol = ndimage.gaussian_filter(rng.standard_normal(GRID_SHAPE), 1.5) * 30
        data[..., t] = base + vol + rng.standard_normal(GRID_SHAPE)
    mask = brain_mask()
    mask[64:] = False  # x > 30 mm: right lateral regions vanish, others are cut
    data[~mask] = 0
    folder = tmp_path_factory.mktemp("parity")
    img = nib.Nifti1Image(data, GRID_AFFINE)
    path = folder / "bold.nii"
    img.to_filename(path)
    mask_path = folder / "mask.nii.gz"
    nib.Nifti1Image(mask.astype(np.uint8), GRID_AFFINE).to_filename(mask_path)
    return path, mask, mask_path


def ours(cfg, path, mask, smoothing_fwhm=None):
    src = extract.load_atlas(cfg)
    ops = extract.prepare([src], GRID_SHAPE, GRID_AFFINE, mask)
    run = extract.extract_run(path, ops, smoothing_fwhm=smoothing_fwhm)
    return src, run.signals[cfg.name], run.coverage[cfg.name]


def fit(masker, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(str(path)), masker


@pytest.mark.parametrize(
    "atlas, strategy",
    [(SCHAEFER_2MM, "mean"), (SCHAEFER_1MM, "mean"), (SCHAEFER_2MM, "median")],
    ids=["schaefer400-2mm", "schaefer200-1mm", "schaefer400-2mm-median"],
)
def test_labels_match_nilearn(shared_data, grid_run, atlas, strategy):
    from nilearn.maskers import NiftiLabelsMasker

    path, mask, mask_path = grid_run
    labels_tsv = shared_data / SCHAEFER_TSV if "400" in atlas else None
    cfg = atlas_cfg(
        name="S",
        kind="labels",
        image=str(shared_data / atlas),
        labels=labels_tsv,
        strategy=strategy,
    )
    src, got, cov = ours(cfg, path, mask)
    ref, masker = fit(
        NiftiLabelsMasker(str(shared_data / atlas), mask_img=str(mask_path), strategy=strategy),
        path,
    )
    ref_ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    n_labels = 400 if "400" in atlas else 200
    assert got.shape == (N_VOLUMES, n_labels) and len(src.lut) == n_labels
    cols = np.searchsorted(src.lut["index"].to_numpy(), ref_ids)
    np.testing.assert_allclose(got[:, cols], ref, rtol=1e-9, atol=1e-6)
    missing = np.setdiff1d(np.arange(n_labels), cols)
    assert len(missing) > 0, "the ellipsoid mask should empty some regions"
    assert np.isnan(got[:, missing]).all()  # regions nilearn drops stay as n/a columns
    assert (cov["n_voxels_in_mask"].to_numpy()[missing] == 0).all()
    assert (cov["n_voxels_in_mask"].to_numpy()[cols] > 0).all()
    if labels_tsv is not None:
        names = pd.read_csv(labels_tsv, sep="\t")["label"].tolist()
        assert src.region_names == names


def test_labels_smoothing_matches_nilearn(shared_data, grid_run):
    from nilearn.maskers import NiftiLabelsMasker

    path, mask, mask_path = grid_run
    cfg = atlas_cfg(name="S", kind="labels", image=str(shared_data / SCHAEFER_2MM))
    src, got, _ = ours(cfg, path, mask, smoothing_fwhm=6.0)
    ref, masker = fit(
        NiftiLabelsMasker(
            str(shared_data / SCHAEFER_2MM), mask_img=str(mask_path), smoothing_fwhm=6.0
        ),
        path,
    )
    ref_ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    cols = np.searchsorted(src.lut["index"].to_numpy(), ref_ids)
    np.testing.assert_allclose(got[:, cols], ref, rtol=1e-9, atol=1e-6)


@pytest.fixture(scope="module")
def ho_subset(shared_data, tmp_path_factory):
    """24 of the Harvard-Oxford probabilistic maps (1 mm, uint8), as stored."""
    img = nib.load(shared_data / HO_MAPS)
    data = np.asarray(img.dataobj[..., :24])
    path = tmp_path_factory.mktemp("ho") / "ho24.nii.gz"
    nib.Nifti1Image(data, img.affine).to_filename(path)
    return path


def test_maps_match_nilearn(ho_subset, grid_run):
    from nilearn.maskers import NiftiMapsMasker

    path, mask, mask_path = grid_run
    cfg = atlas_cfg(name="HO", kind="maps", image=str(ho_subset))
    src, got, cov = ours(cfg, path, mask)
    ref, _ = fit(NiftiMapsMasker(str(ho_subset), mask_img=str(mask_path)), path)
    kept = cov["n_voxels_in_mask"].to_numpy() > 0
    assert got.shape == (N_VOLUMES, 24) and 0 < kept.sum() < 24
    assert ref.shape == (N_VOLUMES, kept.sum())  # nilearn drops the maps outside the mask
    np.testing.assert_allclose(got[:, kept], ref, rtol=1e-7, atol=1e-5)
    assert np.isnan(got[:, ~kept]).all()
    coverage = cov["coverage"].to_numpy()
    assert ((coverage >= 0) & (coverage <= 1)).all()
    assert (coverage[~kept] == 0).all() and (coverage[kept] > 0).all()
    assert ((coverage > 0) & (coverage < 0.9)).any()  # cut by the mask


def test_power_spheres_match_nilearn(shared_data, grid_run):
    from nilearn.maskers import NiftiSpheresMasker

    path, mask, mask_path = grid_run
    cfg = atlas_cfg(name="P", kind="spheres", coordinates="power2011", radius=5)
    src, got, cov = ours(cfg, path, mask)
    coords = pd.read_csv(shared_data / "atlases/coords/power_2011.csv")[["X", "Y", "Z"]]
    np.testing.assert_array_equal(src.lut[["x", "y", "z"]].to_numpy(), coords.to_numpy())
    inside = cov["n_voxels_in_mask"].to_numpy() > 0
    assert got.shape == (N_VOLUMES, 264) and 150 <= inside.sum() < 264
    ref, _ = fit(
        NiftiSpheresMasker(coords.to_numpy()[inside].tolist(), radius=5, mask_img=str(mask_path)),
        path,
    )
    np.testing.assert_allclose(got[:, inside], ref, rtol=1e-9, atol=1e-6)
    assert np.isnan(got[:, ~inside]).all()


@pytest.mark.parametrize(
    "extract_type, threshold, cluster_threshold",
    [("connected_components", 3.0, 0), ("local_regions", "95%", 0), ("local_regions", 2.5, 10)],
)
def test_regions_match_nilearn(shared_data, grid_run, extract_type, threshold, cluster_threshold):
    from nilearn.image import threshold_img
    from nilearn.maskers import NiftiMapsMasker
    from nilearn.regions import connected_regions

    path, mask, mask_path = grid_run
    motor = shared_data / MOTOR
    cfg = atlas_cfg(
        name="Motor",
        kind="regions",
        image=str(motor),
        threshold=threshold,
        cluster_threshold=cluster_threshold,
        extract_type=extract_type,
        min_region_size=500,
    )
    src, got, _ = ours(cfg, path, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thr = threshold_img(
            str(motor), threshold, two_sided=True, cluster_threshold=cluster_threshold
        )
        ref_img, ref_index = connected_regions(
            thr, min_region_size=500, extract_type=extract_type, smoothing_fwhm=6
        )
    ours_img = src.outputs["probseg"]
    assert ours_img.shape == ref_img.shape and ours_img.shape[3] >= 2
    assert src.lut["parent_map"].tolist() == [int(i) + 1 for i in ref_index]  # 1-based
    n_diff, moved = 0, 0.0
    for k in range(ref_img.shape[3]):  # region by region
        a, b = np.asarray(ours_img.dataobj[..., k]), np.asarray(ref_img.dataobj[..., k])
        support = np.count_nonzero(b)
        differ = np.count_nonzero(a != b)
        n_diff += differ
        moved = max(moved, differ / max(support, 1))
        if extract_type == "connected_components":
            assert differ == 0, k
        else:
            # scikit-image's random walker vs nilearn's older vendored copy: the conjugate
            # gradient stops at a relative tolerance of 1e-3 in both, so a voxel whose walk
            # probabilities for two seeds are that close may go either way; how many do
            # depends on the scipy / scikit-image versions (1 to a few of ~150,000 seen).
            assert differ <= max(4, support // 500), (k, differ, support)
    print(f"{extract_type}: {n_diff} voxels assigned differently")
    ref, _ = fit(NiftiMapsMasker(ref_img, mask_img=str(mask_path)), path)
    if n_diff == 0:
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-5)
    else:
        # A region that lost or gained a fraction f of its voxels has a least-squares signal
        # that moves by about f of the voxel signals' amplitude: the tolerance follows the
        # largest fraction moved (twice it, for the neighbour that received them).
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=0, atol=2 * moved * scale + 1e-5)
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9999

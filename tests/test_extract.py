"""Extraction engine on small synthetic images (no shared data needed)."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy import ndimage

from bids_app import extract
from bids_app.config import parse_config
from bids_app.errors import ConfigError, InputDataError
from bids_app.extract.regions import threshold_maps

SHAPE = (14, 16, 12)
AFFINE = np.array([[3.0, 0, 0, -20], [0, 3.0, 0, -24], [0, 0, 3.0, -15], [0, 0, 0, 1]])
T = 9


def atlas_cfg(**kwargs):
    return parse_config({"atlases": [kwargs]}, Path("/")).atlases[0]


@pytest.fixture(scope="module")
def bold(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(SHAPE + (T,)) * 10 + 100).astype(np.float64)
    folder = tmp_path_factory.mktemp("bold")
    path = folder / "bold.nii"
    nib.Nifti1Image(data, AFFINE).to_filename(path)
    return path, data


@pytest.fixture(scope="module")
def atlas_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[1:6, 2:8, 2:7] = 3
    labels[7:12, 2:8, 2:7] = 5
    labels[2:10, 9:14, 4:9] = 8
    nib.Nifti1Image(labels, AFFINE).to_filename(folder / "labels.nii.gz")
    pd.DataFrame({"index": [3, 5, 8, 9], "name": ["A", "B", "C", "Gone"]}).to_csv(
        folder / "labels.tsv", sep="\t", index=False
    )
    ijk = np.indices(SHAPE).astype(float)
    maps = np.stack(
        [
            np.exp(-((ijk[0] - c[0]) ** 2 + (ijk[1] - c[1]) ** 2 + (ijk[2] - c[2]) ** 2) / 8)
            for c in ((4, 5, 5), (9, 5, 5), (6, 11, 6))
        ],
        axis=-1,
    ).astype(np.float32)
    maps[maps < 0.05] = 0
    nib.Nifti1Image(maps, AFFINE).to_filename(folder / "maps.nii.gz")
    return folder, labels, maps


def run_one(cfg, path, mask=None, **kwargs):
    src = extract.load_atlas(cfg)
    ops = extract.prepare([src], SHAPE, AFFINE, mask)
    return src, extract.extract_run(path, ops, **kwargs)


def test_read_header_does_not_need_data(bold, tmp_path):
    path, data = bold
    shape, affine, zooms = extract.read_header(path)
    assert shape == SHAPE + (T,) and zooms[:3] == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(affine, AFFINE)
    with pytest.raises(InputDataError, match="missing.nii"):
        extract.read_header(tmp_path / "missing.nii")


@pytest.mark.parametrize(
    "dtype, slope, inter, gz, endian",
    [
        (np.float32, None, None, True, "<"),
        (np.int16, 0.25, 7.0, True, "<"),
        (np.float64, None, None, False, ">"),
        (np.uint8, 2.0, -1.0, False, "<"),
    ],
)
def test_streaming_equals_nibabel(tmp_path, dtype, slope, inter, gz, endian):
    rng = np.random.default_rng(1)
    data = (rng.random(SHAPE + (5,)) * 100).astype(dtype)
    img = nib.Nifti1Image(data, AFFINE)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    if endian == ">":
        img = nib.Nifti1Image(
            data.astype(np.dtype(dtype).newbyteorder(">")), AFFINE, img.header.as_byteswapped(">")
        )
    path = tmp_path / ("bold.nii.gz" if gz else "bold.nii")
    img.to_filename(path)
    ref = np.asanyarray(nib.load(path).dataobj)
    vols = [v.copy() for v in extract.VolumeReader(path)]
    assert len(vols) == 5
    for t, vol in enumerate(vols):
        assert vol.dtype == ref.dtype.newbyteorder("=") and vol.dtype.isnative
        np.testing.assert_array_equal(vol.reshape(SHAPE, order="F"), ref[..., t])


def test_truncated_gzip_names_the_file(bold, tmp_path):
    path, _ = bold
    broken = tmp_path / "broken.nii.gz"
    raw = path.read_bytes()
    broken.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    ops = extract.prepare(
        [extract.load_atlas(atlas_cfg(name="P", kind="spheres", coordinates="power2011"))],
        SHAPE,
        AFFINE,
        None,
    )
    with pytest.raises(InputDataError, match="broken.nii.gz: truncated"):
        extract.extract_run(broken, ops)


def test_labels_mean_and_table(bold, atlas_files):
    path, data = bold
    folder, labels, _ = atlas_files
    cfg = atlas_cfg(
        name="L",
        kind="labels",
        image=str(folder / "labels.nii.gz"),
        labels=str(folder / "labels.tsv"),
    )
    src, run = run_one(cfg, path)
    assert src.region_names == ["A", "B", "C", "Gone"]
    assert src.lut["index"].tolist() == [3, 5, 8, 9]
    centre = np.argwhere(labels == 3).mean(0) * 3 + AFFINE[:3, 3]
    np.testing.assert_allclose(src.lut.loc[0, ["x", "y", "z"]].to_numpy(float), centre)
    sig = run.signals["L"]
    assert sig.shape == (T, 4) and sig.dtype == np.float64
    for col, value in enumerate((3, 5, 8)):
        np.testing.assert_allclose(sig[:, col], data[labels == value].mean(axis=0), rtol=1e-12)
    assert np.isnan(sig[:, 3]).all()  # in the table, not in the image: n/a column
    cov = run.coverage["L"]
    assert cov["n_voxels"].tolist() == [150, 150, 200, 0]
    assert cov["usable"].tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    "strategy", ["median", "minimum", "maximum", "variance", "standard_deviation", "sum"]
)
def test_label_strategies(bold, atlas_files, strategy):
    path, data = bold
    folder, labels, _ = atlas_files
    cfg = atlas_cfg(name="L", kind="labels", image=str(folder / "labels.nii.gz"), strategy=strategy)
    _, run = run_one(cfg, path)
    fn = getattr(ndimage, strategy)
    with np.errstate(invalid="ignore"):  # scipy divides by the empty labels in between
        ref = np.array([fn(data[..., t], labels=labels, index=[3, 5, 8]) for t in range(T)])
    np.testing.assert_allclose(run.signals["L"], ref, rtol=1e-10)


def test_mask_empties_a_region_and_coverage(bold, atlas_files):
    path, data = bold
    folder, labels, _ = atlas_files
    mask = np.ones(SHAPE, bool)
    mask[7:] = False  # removes label 5 entirely and 3/8 of label 8
    cfg = atlas_cfg(name="L", kind="labels", image=str(folder / "labels.nii.gz"))
    _, run = run_one(cfg, path, mask)
    sig, cov = run.signals["L"], run.coverage["L"]
    assert sig.shape == (T, 3)  # same columns with and without the mask
    assert np.isnan(sig[:, 1]).all() and not np.isnan(sig[:, [0, 2]]).any()
    np.testing.assert_allclose(sig[:, 2], data[(labels == 8) & mask].mean(0), rtol=1e-12)
    assert cov["n_voxels_in_mask"].tolist() == [150, 0, 125]
    np.testing.assert_allclose(cov["coverage"], [1.0, 0.0, 0.625])
    _, run = run_one(cfg.model_copy(update={"min_coverage": 0.7}), path, mask)
    assert np.isnan(run.signals["L"][:, 2]).all() and not np.isnan(run.signals["L"][:, 0]).any()
    assert run.coverage["L"]["usable"].tolist() == [True, False, False]


def test_constant_voxels_lower_coverage(tmp_path, atlas_files):
    folder, labels, _ = atlas_files
    rng = np.random.default_rng(3)
    data = rng.standard_normal(SHAPE + (T,)).astype(np.float32)
    data[1:3, 2:8, 2:7] = 0  # 60 of label 3's 150 voxels: outside the acquired field of view
    data[11, 3, 3, 4] = np.nan
    path = tmp_path / "b.nii.gz"
    nib.Nifti1Image(data, AFFINE).to_filename(path)
    cfg = atlas_cfg(name="L", kind="labels", image=str(folder / "labels.nii.gz"))
    _, run = run_one(cfg, path)
    cov = run.coverage["L"]
    assert cov["n_voxels_usable"].tolist() == [90, 149, 200]
    np.testing.assert_allclose(cov["coverage"], [0.6, 149 / 150, 1.0], atol=1e-6)
    clean = np.where(np.isfinite(data), data, 0).astype(np.float64)
    np.testing.assert_allclose(run.signals["L"][:, 1], clean[labels == 5].mean(0), rtol=1e-6)


def test_maps_least_squares(bold, atlas_files):
    path, data = bold
    folder, _, maps = atlas_files
    mask = np.ones(SHAPE, bool)
    mask[:, :, :3] = False
    cfg = atlas_cfg(name="M", kind="maps", image=str(folder / "maps.nii.gz"))
    src, run = run_one(cfg, path, mask)
    m = maps[mask].astype(float)
    support = (m != 0).any(axis=1)
    ref = scipy.linalg.lstsq(m[support], data[mask][support])[0].T
    np.testing.assert_allclose(run.signals["M"], ref, rtol=1e-9, atol=1e-9)
    assert src.region_names == ["1", "2", "3"]  # 1-based, as label values
    assert src.lut["index"].tolist() == [1, 2, 3]
    w = np.abs(maps[..., 1])
    np.testing.assert_allclose(run.coverage["M"]["coverage"][1], w[mask].sum() / w.sum(), rtol=1e-6)


def test_rank_deficient_maps_give_the_minimum_norm_solution(bold, tmp_path, atlas_files):
    path, data = bold
    _, _, maps = atlas_files
    twice = np.concatenate([maps, maps[..., :1]], axis=-1)  # map 3 == map 0
    nib.Nifti1Image(twice, AFFINE).to_filename(tmp_path / "twice.nii.gz")
    _, run = run_one(atlas_cfg(name="M", kind="maps", image=str(tmp_path / "twice.nii.gz")), path)
    m = twice.reshape(-1, 4).astype(float)
    ref = (np.linalg.pinv(m) @ data.reshape(-1, T)).T
    np.testing.assert_allclose(run.signals["M"], ref, rtol=1e-7, atol=1e-7)


def test_overlapping_maps_rejected_when_asked(bold, atlas_files):
    folder = atlas_files[0]
    cfg = atlas_cfg(name="M", kind="maps", image=str(folder / "maps.nii.gz"), allow_overlap=False)
    with pytest.raises(InputDataError, match="overlap"):
        run_one(cfg, bold[0])


def test_spheres(bold, tmp_path):
    path, data = bold
    seeds = pd.DataFrame(
        {
            "x": [-5.0, 10.0, 300.0],
            "y": [0.0, 6.0, 0.0],
            "z": [3.5, 0.0, 0.0],
            "name": ["a", "b", "far"],
        }
    )
    seeds.to_csv(tmp_path / "seeds.csv", index=False)
    cfg = atlas_cfg(name="S", kind="spheres", coordinates=str(tmp_path / "seeds.csv"), radius=4.5)
    src, run = run_one(cfg, path)
    assert src.region_names == ["a", "b", "far"] and (src.lut["radius"] == 4.5).all()
    ijk = np.indices(SHAPE).reshape(3, -1).T
    world = ijk * 3.0 + AFFINE[:3, 3]
    flat = data.reshape(-1, T)
    for col in range(2):
        inside = (
            np.linalg.norm(world - seeds.loc[col, ["x", "y", "z"]].to_numpy(float), axis=1) <= 4.5
        )
        np.testing.assert_allclose(run.signals["S"][:, col], flat[inside].mean(0), rtol=1e-12)
    assert np.isnan(run.signals["S"][:, 2]).all()  # outside the image: n/a, not an error
    big = atlas_cfg(name="S", kind="spheres", coordinates=str(tmp_path / "seeds.csv"), radius=12)
    with pytest.raises(ConfigError, match="overlap"):
        run_one(big, path)
    run_one(big.model_copy(update={"allow_overlap": True}), path)


def test_builtin_coordinate_sets():
    counts = {"power2011": 264, "dosenbach2010": 160, "seitzman2018": 300}
    for name, n in counts.items():
        src = extract.load_atlas(atlas_cfg(name="C", kind="spheres", coordinates=name))
        assert len(src.lut) == n and len(set(src.region_names)) == n
        assert np.isfinite(src.seeds).all() and "network" in src.lut.columns
        assert (np.abs(src.seeds) < 120).all()


def test_streaming_equals_full_load_gzip_and_smoothing(bold, atlas_files, tmp_path):
    path, data = bold
    folder, labels, _ = atlas_files
    gz = tmp_path / "bold.nii.gz"
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    cfg = atlas_cfg(name="L", kind="labels", image=str(folder / "labels.nii.gz"))
    _, plain = run_one(cfg, path, smoothing_fwhm=5.0)
    _, packed = run_one(cfg, gz, smoothing_fwhm=5.0)
    np.testing.assert_array_equal(plain.signals["L"], packed.signals["L"])
    sigma = 5.0 / np.sqrt(8 * np.log(2)) / 3.0
    smoothed = ndimage.gaussian_filter(data, (sigma, sigma, sigma, 0), mode="reflect", truncate=4.0)
    ref = np.array([ndimage.mean(smoothed[..., t], labels, [3, 5, 8]) for t in range(T)])
    np.testing.assert_allclose(plain.signals["L"], ref, rtol=1e-12)


def test_grid_mismatch_is_an_input_error(bold, atlas_files):
    folder = atlas_files[0]
    src = extract.load_atlas(
        atlas_cfg(name="L", kind="labels", image=str(folder / "labels.nii.gz"))
    )
    ops = extract.prepare([src], (10, 10, 10), AFFINE, None)
    with pytest.raises(InputDataError, match="bold.nii: grid"):
        extract.extract_run(bold[0], ops)


def test_atlas_source_pickles(atlas_files, tmp_path):
    folder = atlas_files[0]
    src = extract.load_atlas(atlas_cfg(name="M", kind="maps", image=str(folder / "maps.nii.gz")))
    back = pickle.loads(pickle.dumps(src))
    assert back.region_names == src.region_names and (back.maps != src.maps).nnz == 0
    assert len(src.digest) == 64 and back.digest == src.digest


def test_regions_from_a_statistical_map(bold, tmp_path):
    ijk = np.indices(SHAPE).astype(float)
    blob = lambda c, s: np.exp(-sum((ijk[a] - c[a]) ** 2 for a in range(3)) / (2 * s**2))  # noqa: E731
    tmap = (6 * blob((4, 5, 6), 1.5) - 5 * blob((10, 11, 6), 1.5)).astype(np.float32)
    tmap[0, 0, 0] = 4.0  # one isolated voxel: below min_region_size
    nib.Nifti1Image(tmap, AFFINE).to_filename(tmp_path / "t.nii.gz")
    cfg = atlas_cfg(
        name="R",
        kind="regions",
        image=str(tmp_path / "t.nii.gz"),
        threshold=2.0,
        extract_type="connected_components",
        min_region_size=27 * 3,
    )
    src, run = run_one(cfg, bold[0])
    region_maps = np.asarray(src.outputs["probseg"].dataobj)
    assert region_maps.shape == SHAPE + (2,) and src.lut["parent_map"].tolist() == [1, 1]
    assert region_maps[4, 5, 6, 0] == tmap[4, 5, 6] and region_maps[10, 11, 6, 1] == tmap[10, 11, 6]
    assert run.signals["R"].shape == (T, 2)
    local = cfg.model_copy(update={"extract_type": "local_regions", "smoothing_fwhm": 3.0})
    assert len(extract.load_atlas(local).lut) == 1  # the negative blob has no positive peak
    with pytest.raises(ConfigError, match="no region"):
        extract.load_atlas(cfg.model_copy(update={"threshold": 50.0}))


def test_threshold_semantics():
    data = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0]).reshape(7, 1, 1)
    np.testing.assert_array_equal(threshold_maps(data, 1.0).ravel(), [-3, -1, 0, 0, 1, 2, 4])
    np.testing.assert_array_equal(
        threshold_maps(data, 1.5, two_sided=False).ravel(), [0, 0, 0, 0, 0, 2, 4]
    )
    cut = np.percentile(np.abs(data), 50) + 1e-5
    assert (np.abs(threshold_maps(data, "50%")) >= cut).sum() == 3
    with pytest.raises(ValueError, match="positive"):
        threshold_maps(data, -1.0)
    clusters = np.zeros((6, 6, 6))
    clusters[0:2, 0:2, 0:2] = 3.0  # 8 voxels
    clusters[4, 4, 4] = 3.0  # 1 voxel
    clusters[4:6, 0, 0] = -3.0  # 2 voxels, negative
    out = threshold_maps(clusters, 1.0, cluster_threshold=2)
    assert out[0, 0, 0] == 3 and out[4, 4, 4] == 0 and out[5, 0, 0] == -3

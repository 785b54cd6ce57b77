"""Atlas loading and operator preparation: vectorised loaders equal the straightforward
definitions bit for bit, and the grid-level / mask-level split gives the operators of a
one-step preparation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_app import extract
from bids_app.config import parse_config
from bids_app.errors import InputDataError
from bids_app.extract.atlas import label_centroids, maps_to_sparse, present_labels
from bids_app.extract.operators import GridOperators, apply_mask, prepare_grid
from bids_app.extract.spheres import sphere_members
from bids_app.extract.stream import VolumeReader

SHAPE = (20, 22, 18)
AFFINE = np.array([[2.5, 0, 0, -24.0], [0, 2.5, 0, -27.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
# A BOLD grid that is not the atlases' grid: 3 mm, slightly rotated.
_TH = 0.08
BOLD_SHAPE = (18, 20, 15)
BOLD_AFFINE = np.array(
    [
        [3 * np.cos(_TH), -3 * np.sin(_TH), 0, -26.0],
        [3 * np.sin(_TH), 3 * np.cos(_TH), 0, -30.0],
        [0, 0, 3.0, -21.0],
        [0, 0, 0, 1],
    ]
)


def atlas_cfg(**kwargs):
    return parse_config({"atlases": [kwargs]}, Path("/")).atlases[0]


def reference_sparse(volumes, dtype=None):
    """The definition: each volume converted to the maps dtype, non-finite -> 0, non-zeros."""
    indices, values, indptr = [], [], [0]
    for vol in volumes:
        if dtype is None:
            dtype = np.float64 if vol.dtype.itemsize >= 8 else np.float32
        vol = vol.astype(dtype)
        vol = np.where(np.isfinite(vol), vol, 0)
        nz = np.flatnonzero(vol)
        indices.append(nz)
        values.append(vol[nz])
        indptr.append(indptr[-1] + len(nz))
    return np.concatenate(values), np.concatenate(indices), np.array(indptr)


def reference_centres(data, indices, indptr, shape, affine):
    """Centre of mass of |w| per map: index sums accumulated in voxel order."""
    out = np.full((len(indptr) - 1, 3), np.nan)
    for k in range(len(indptr) - 1):
        sl = slice(indptr[k], indptr[k + 1])
        w = np.abs(data[sl].astype(float))
        if w.sum() <= 0:
            continue
        ijk = np.column_stack(np.unravel_index(indices[sl], shape, order="F"))
        out[k] = nib.affines.apply_affine(affine, (ijk * w[:, None]).sum(0) / w.sum())
    return out


def assert_same_operators(a: extract.Operators, b: extract.Operators) -> None:
    """Byte-identical operators (every array, dtype included)."""

    def same(x, y, what):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert x.tobytes() == y.tobytes(), what

    assert (a.gather is None) == (b.gather is None)
    if a.gather is not None:
        same(a.gather, b.gather, "gather")
    for name in ("matrix", "support"):
        ma, mb = getattr(a, name), getattr(b, name)
        assert ma.shape == mb.shape
        for part in ("data", "indices", "indptr"):
            same(getattr(ma, part), getattr(mb, part), f"{name}.{part}")
    assert len(a.atlases) == len(b.atlases)
    for oa, ob in zip(a.atlases, b.atlases, strict=True):
        assert oa.rows == ob.rows and oa.strategy == ob.strategy
        for f in ("n_voxels", "n_in_mask", "weight_total", "valid", "valid_cols"):
            same(getattr(oa, f), getattr(ob, f), f"{oa.name}.{f}")
        for f in ("scale", "gram_inv", "slow_pos", "slow_groups"):
            va, vb = getattr(oa, f), getattr(ob, f)
            assert (va is None) == (vb is None), f
            if va is not None:
                same(va, vb, f"{oa.name}.{f}")


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    """Labels (with negative and large label values), float maps with NaN/inf/negatives,
    integer maps with a scale factor, seeds."""
    folder = tmp_path_factory.mktemp("atlases")
    rng = np.random.default_rng(11)
    ijk = np.indices(SHAPE).astype(float)
    labels = np.zeros(SHAPE, dtype=np.int32)
    for n, value in enumerate((3, 7, 1200, 41, 9)):
        c = rng.uniform(3, np.array(SHAPE) - 3)
        labels[(((ijk.T - c) / (3.0 + n % 3)) ** 2).sum(axis=-1).T <= 1] = value
    nib.Nifti1Image(labels, AFFINE).to_filename(folder / "labels.nii.gz")
    blobs = []
    for _ in range(6):
        c = rng.uniform(2, np.array(SHAPE) - 2)
        blobs.append(np.exp(-(((ijk.T - c) / 3.5) ** 2).sum(axis=-1).T))
    maps = np.stack(blobs, axis=-1)
    maps[maps < 0.05] = 0
    maps[..., 2] -= 0.3 * (maps[..., 2] > 0)  # negative weights
    maps[..., 5] = 0  # an empty map
    fmaps = maps.astype(np.float32)
    fmaps[1, 1, 1, 0] = np.nan
    fmaps[2, 1, 1, 1] = np.inf
    fmaps[3, 1, 1, 3] = -0.0
    nib.Nifti1Image(fmaps, AFFINE).to_filename(folder / "maps_f32.nii.gz")
    imaps = nib.Nifti1Image(np.round(np.clip(maps, 0, None) * 100).astype(np.uint8), AFFINE)
    imaps.header.set_slope_inter(0.01, 0.0)
    imaps.to_filename(folder / "maps_u8_scaled.nii.gz")
    raw = nib.Nifti1Image(np.round(np.clip(maps, 0, None) * 100).astype(np.int16), AFFINE)
    raw.to_filename(folder / "maps_i16.nii")
    pd.DataFrame(
        {"x": [-10.0, 4.3, 12.5, 300.0], "y": [0.0, -7.7, 9.0, 0.0], "z": [2.0, 5.5, -3.1, 0.0]}
    ).to_csv(folder / "seeds.csv", index=False)
    return folder


@pytest.mark.parametrize("name", ["maps_f32.nii.gz", "maps_u8_scaled.nii.gz", "maps_i16.nii"])
def test_maps_to_sparse_equals_the_definition(atlas_dir, name):
    path = atlas_dir / name
    reader = VolumeReader(path)
    got = maps_to_sparse(iter(reader), reader.n_voxels)
    data = np.asanyarray(nib.load(path).dataobj)
    vols = [data[..., k].reshape(-1, order="F") for k in range(data.shape[3])]
    values, indices, indptr = reference_sparse(vols)
    assert got.dtype == values.dtype
    np.testing.assert_array_equal(got.indptr, indptr)
    np.testing.assert_array_equal(got.indices, indices)
    assert got.data.tobytes() == values.tobytes()
    src = extract.load_atlas(atlas_cfg(name="M", kind="maps", image=str(path)))
    centres = reference_centres(values, indices, indptr, reader.shape3, reader.affine)
    got_centres = src.lut[["x", "y", "z"]].to_numpy(float)
    assert got_centres.tobytes() == centres.tobytes()
    assert np.isnan(got_centres[5]).all() and np.isfinite(got_centres[:5]).all()


def test_maps_to_sparse_drops_values_lost_in_the_conversion():
    vol = np.array([0.0, 1e-300, -0.0, np.nan, 2.5, 1e300, -np.inf, -3.0])
    with np.errstate(over="ignore"):  # 1e-300 -> 0, 1e300 -> inf in float32
        got = maps_to_sparse([vol], len(vol), np.dtype(np.float32))
        values, indices, _ = reference_sparse([vol], np.float32)
    np.testing.assert_array_equal(got.indices, indices)
    np.testing.assert_array_equal(got.data, values)
    assert got.indices.tolist() == [4, 7]


def test_ho_1mm_maps_load_as_the_definition(shared_data, tmp_path):
    """The 1 mm Harvard-Oxford probabilistic atlas (uint8): first 16 maps."""
    img = nib.load(shared_data / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz")
    data = np.asarray(img.dataobj[..., :16])
    path = tmp_path / "ho16.nii.gz"
    nib.Nifti1Image(data, img.affine).to_filename(path)
    src = extract.load_atlas(atlas_cfg(name="HO", kind="maps", image=str(path)))
    values, indices, indptr = reference_sparse(
        [data[..., k].reshape(-1, order="F") for k in range(16)]
    )
    assert src.maps.shape == (int(np.prod(data.shape[:3])), 16) and src.maps.nnz > 100_000
    np.testing.assert_array_equal(src.maps.indptr, indptr)
    np.testing.assert_array_equal(src.maps.indices, indices)
    assert src.maps.data.tobytes() == values.tobytes()
    centres = reference_centres(values, indices, indptr, data.shape[:3], img.affine)
    assert src.lut[["x", "y", "z"]].to_numpy(float).tobytes() == centres.tobytes()


@pytest.mark.parametrize("big", [False, True], ids=["lookup-table", "sorted-search"])
def test_labels_ids_and_centroids_equal_numpy_and_scipy(atlas_dir, big):
    labels = np.asanyarray(nib.load(atlas_dir / "labels.nii.gz").dataobj).astype(np.int32)
    if big:  # a value range too wide for a lookup table
        labels[labels == 1200] = 2_000_000_000
        labels[0, 0, 0] = -5
    ids = present_labels(labels)
    np.testing.assert_array_equal(ids, np.unique(labels))
    assert ids.dtype == np.unique(labels).dtype
    query = np.union1d(ids[ids != 0], [8, 10_000])  # 8 and 10000 are absent: NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, query), dtype=float)
    ref = nib.affines.apply_affine(AFFINE, ref.reshape(-1, 3))
    got = label_centroids(labels, AFFINE, query)
    assert got.tobytes() == ref.tobytes()
    assert np.isnan(got[np.isin(query, [8, 10_000])]).all()


def test_spheres_mask_rule_small_voxels():
    """0.4 mm voxels, no radius: the nearest voxel plus, of the voxels sharing the seed's
    truncated coordinates, the first one (C order) inside the mask."""
    shape = (30, 30, 30)
    affine = np.diag([0.4, 0.4, 0.4, 1.0])
    affine[:3, 3] = -6.0
    seeds = np.array([[0.55, -1.3, 2.05], [3.9, 3.9, -4.1], [-2.2, 1.1, 0.3]])
    ijk = np.indices(shape).reshape(3, -1).T  # C order
    world = nib.affines.apply_affine(affine, ijk)
    mask = np.random.default_rng(2).random(shape) < 0.5
    first_is_outside = 0
    for candidates in (None, mask):
        ok = np.ones(len(ijk), bool) if candidates is None else candidates.reshape(-1)
        got = sphere_members(seeds, None, shape, affine, candidates)
        for seed, members in zip(seeds, got, strict=True):
            near = np.round(nib.affines.apply_affine(np.linalg.inv(affine), seed)).astype(int)
            inside = (ijk == near).all(axis=1)
            same = (world.astype(int) == seed.astype(int)).all(axis=1)
            assert same.sum() > 1  # several candidates: the rule matters
            first_is_outside += not ok[np.flatnonzero(same)[0]]
            inside[np.flatnonzero(same & ok)[0]] = True
            inside &= ok
            sel = ijk[inside]
            ref = np.sort(sel[:, 0] + shape[0] * (sel[:, 1] + shape[1] * sel[:, 2]))
            np.testing.assert_array_equal(members, ref)
    assert first_is_outside > 0  # the mask moves the choice for some seed


@pytest.fixture(scope="module")
def sources(atlas_dir):
    cfgs = [
        atlas_cfg(name="L", kind="labels", image=str(atlas_dir / "labels.nii.gz")),
        atlas_cfg(
            name="Lmed", kind="labels", image=str(atlas_dir / "labels.nii.gz"), strategy="median"
        ),
        atlas_cfg(name="M", kind="maps", image=str(atlas_dir / "maps_f32.nii.gz")),
        atlas_cfg(name="U", kind="maps", image=str(atlas_dir / "maps_u8_scaled.nii.gz")),
        atlas_cfg(name="S", kind="spheres", coordinates=str(atlas_dir / "seeds.csv"), radius=6.0),
    ]
    return [extract.load_atlas(c) for c in cfgs]


def _masks():
    rng = np.random.default_rng(5)
    ijk = np.indices(BOLD_SHAPE).reshape(3, -1).T
    ellipsoid = (((ijk - np.array(BOLD_SHAPE) / 2) / (np.array(BOLD_SHAPE) / 2.3)) ** 2).sum(1)
    ellipsoid = (ellipsoid <= 1).reshape(BOLD_SHAPE)
    cut = ellipsoid.copy()
    cut[: BOLD_SHAPE[0] // 2] = False
    return {
        "none": None,
        "ellipsoid": ellipsoid,
        "cut": cut,
        "random": rng.random(BOLD_SHAPE) < 0.7,
    }


def test_one_grid_level_preparation_serves_every_mask(sources):
    grid = prepare_grid(sources, BOLD_SHAPE, BOLD_AFFINE)
    assert isinstance(grid, GridOperators) and len(grid.atlases) == len(sources)
    before = {(i, k): a.copy() for i, ga in enumerate(grid.atlases) for k, a in ga.arrays.items()}
    masks = _masks()
    results = {}
    for name in ("ellipsoid", "none", "cut", "random", "ellipsoid"):
        ops = apply_mask(grid, masks[name])
        fresh = extract.prepare(sources, BOLD_SHAPE, BOLD_AFFINE, masks[name])
        assert_same_operators(ops, fresh)
        if name in results:
            assert_same_operators(ops, results[name])
        results[name] = ops
    # the masks select different voxels (the comparison above is not vacuous) ...
    n_in = {k: int(v.atlases[0].n_in_mask.sum()) for k, v in results.items()}
    assert len(set(n_in.values())) == 4
    assert not np.array_equal(
        results["cut"].atlases[2].gram_inv, results["none"].atlases[2].gram_inv
    )
    # ... and applying masks never modifies the grid-level arrays
    for (i, k), a in before.items():
        assert grid.atlases[i].arrays[k].tobytes() == a.tobytes()


def test_brain_mask_of_the_wrong_shape_is_an_input_error(sources):
    grid = prepare_grid(sources, BOLD_SHAPE, BOLD_AFFINE)
    with pytest.raises(InputDataError, match="does not match the grid"):
        apply_mask(grid, np.ones((4, 4, 4), bool))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float16, np.float32, np.float64, bool]
)
@pytest.mark.parametrize("size", [5, 64, 1001, 4099])
def test_nonzero_indices_is_flatnonzero(dtype, size):
    """The word-at-a-time scan finds what ``flatnonzero(vol != 0)`` finds: NaN counts,
    -0.0 does not, the last elements beyond a whole word too."""
    from bids_app.extract.atlas import nonzero_indices

    rng = np.random.default_rng(size)
    vol = np.zeros(size, dtype=dtype)
    hits = rng.choice(size, size=max(1, size // 20), replace=False)
    vol[hits] = 1
    vol[-1] = 1
    if np.dtype(dtype).kind == "f":
        vol[rng.choice(size, size=3)] = -0.0
        vol[0] = np.nan
    expected = np.flatnonzero(vol != 0)
    got = nonzero_indices(vol)
    assert got.tolist() == expected.tolist()
    assert nonzero_indices(vol[::2]).tolist() == np.flatnonzero(vol[::2] != 0).tolist()


# The maps atlas's grid and grids whose voxels sit on its voxel centres: twice the spacing
# with the first axis flipped and a field of view that cuts the atlas, the same spacing
# shifted by whole voxels, three times the spacing.
LATTICE_GRIDS = {
    "2x-flipped": (
        (9, 12, 8),
        np.array(
            [[-5.0, 0, 0, 2.5 * 14 - 24], [0, 5.0, 0, -27 + 2.5], [0, 0, 5.0, -20], [0, 0, 0, 1]]
        ),
    ),
    "shifted": (
        (22, 20, 15),
        AFFINE @ np.array([[1, 0, 0, 3], [0, 1, 0, -2], [0, 0, 1, 4], [0, 0, 0, 1]]),
    ),
    "3x": ((8, 8, 7), AFFINE @ np.diag([3.0, 3.0, 3.0, 1.0])),
}


@pytest.mark.parametrize("grid", sorted(LATTICE_GRIDS))
@pytest.mark.parametrize("name", ["maps_f32.nii.gz", "maps_u8_scaled.nii.gz"])
def test_maps_on_an_aligned_grid_are_sampled_as_interpolation_gives(
    atlas_dir, name, grid, monkeypatch
):
    """Grids whose voxels fall on the atlas's voxel centres take the sampling path: the
    values linear interpolation (forced for comparison) gives, up to its rounding. The
    affines here (2.5 mm) have no exact inverse, so interpolation also leaves ~1e-16 of a
    value on voxels next to a map: the only voxels sampling does not keep."""
    from bids_app.extract import operators

    shape, affine = LATTICE_GRIDS[grid]
    src = extract.load_atlas(atlas_cfg(name="M", kind="maps", image=str(atlas_dir / name)))
    assert operators.voxel_lattice(src.affine, affine) is not None
    sampled = operators._maps_grid(src, shape, affine)
    monkeypatch.setattr(operators, "voxel_lattice", lambda *args, **kwargs: None)
    interpolated = operators._maps_grid(src, shape, affine)
    assert sampled.keys() == interpolated.keys()
    assert sampled["vals"].dtype == interpolated["vals"].dtype
    scale = np.abs(interpolated["vals"]).max()
    n_maps = len(interpolated["ptr"]) - 1
    for k in range(n_maps):
        part = {}
        for label, ops in (("sampled", sampled), ("interpolated", interpolated)):
            sl = slice(ops["ptr"][k], ops["ptr"][k + 1])
            part[label] = dict(zip(ops["vox"][sl].tolist(), ops["vals"][sl].tolist(), strict=True))
        only_interpolated = part["interpolated"].keys() - part["sampled"].keys()
        assert part["sampled"].keys() <= part["interpolated"].keys()
        assert all(abs(part["interpolated"][v]) < 1e-12 * scale for v in only_interpolated)
        for v, value in part["sampled"].items():
            assert value == pytest.approx(part["interpolated"][v], rel=1e-12, abs=0), (k, v)
    assert sampled["ptr"][-1] > 20  # the grids keep part of the maps
    np.testing.assert_allclose(sampled["weight_total"], interpolated["weight_total"], rtol=1e-12)


def test_grids_off_the_atlas_voxel_centres_are_interpolated():
    half_voxel = AFFINE @ np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    from bids_app.extract.operators import voxel_lattice

    assert voxel_lattice(AFFINE, half_voxel) is None
    assert voxel_lattice(AFFINE, AFFINE @ np.diag([1.5, 1.5, 1.5, 1])) is None
    assert voxel_lattice(AFFINE, BOLD_AFFINE) is None  # rotated
    assert voxel_lattice(AFFINE, AFFINE @ np.diag([0.5, 0.5, 0.5, 1])) is None  # finer
    step, offset = voxel_lattice(AFFINE, LATTICE_GRIDS["2x-flipped"][1])
    assert step.tolist() == [-2, 2, 2] and offset.tolist() == [14, 1, 0]


def test_ho_1mm_maps_on_the_2mm_bold_grid_are_sampled(shared_data, monkeypatch):
    """The real case: FSL's 1 mm Harvard-Oxford maps on fMRIPrep's 2 mm MNI152NLin2009cAsym
    grid (first 16 maps); sampling and interpolation give the same operator bytes."""
    from bids_app.extract import operators

    img = nib.load(shared_data / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz")
    data = np.asarray(img.dataobj[..., :16])
    vols = [data[..., k].reshape(-1, order="F") for k in range(16)]
    src = extract.AtlasSource(
        name="HO",
        kind="maps",
        lut=pd.DataFrame({"index": np.arange(1, 17), "name": [str(k) for k in range(16)]}),
        maps=maps_to_sparse(vols, vols[0].size),
        maps_dtype="float32",
        shape=data.shape[:3],
        affine=img.affine,
    )
    shape = (97, 115, 97)
    affine = np.array([[2.0, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    assert operators.voxel_lattice(src.affine, affine) is not None
    sampled = operators._maps_grid(src, shape, affine)
    monkeypatch.setattr(operators, "voxel_lattice", lambda *args, **kwargs: None)
    interpolated = operators._maps_grid(src, shape, affine)
    for key, value in interpolated.items():
        assert sampled[key].tobytes() == value.tobytes(), key
    assert interpolated["ptr"][-1] > 50_000

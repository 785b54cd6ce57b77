"""Surface extraction (CIFTI-2 and GIFTI runs) and CIFTI-2 outputs.

References: Connectome Workbench's ``wb_command -cifti-parcellate ... -method MEAN``
(test-only, skipped when absent) on the real fsLR parcellations of ../shared/data,
and direct NumPy computations. The dense time series are synthetic float32 data on
the real 91k brain models (few frames).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel import cifti2
from nibabel.affines import apply_affine

from bids_app.errors import ConfigError, InputDataError
from bids_app.extract import AtlasSource
from bids_app.extract.cifti_io import (
    Grayordinates,
    LabelMaps,
    parcels_axis,
    pconn_bytes,
    ptseries_bytes,
    read_cifti,
    write_cifti,
)
from bids_app.extract.surface import (
    extract_surface_run,
    file_grid,
    load_surface_atlas,
    load_surface_atlas_config,
    match_grayordinates,
    open_surface_data,
    prepare_surface,
)

WB = shutil.which("wb_command")
needs_wb = pytest.mark.skipif(
    WB is None,
    reason="wb_command (Connectome Workbench, the reference) is not installed: "
    "apt-get install connectome-workbench",
)

N_FRAMES = 24
SURF = "surfaces/fsLR32k"
DLABELS = {
    "Schaefer100": (
        "tpl-fsLR_atlas-Schaefer2018v0143_den-32k_desc-100Parcels17Networks_dseg.dlabel.nii",
        "../../atlases/labels/atlas-Schaefer2018v0143_desc-100Parcels17Networks_dseg.tsv",
    ),
    "Schaefer400": (
        "tpl-fsLR_atlas-Schaefer2018v0143_den-32k_desc-400Parcels17Networks_dseg.dlabel.nii",
        "../../atlases/labels/atlas-Schaefer2018v0143_desc-400Parcels17Networks_dseg.tsv",
    ),
    "Glasser": ("tpl-fsLR_atlas-Glasser_den-32k_dseg.dlabel.nii", "atlas-Glasser_dseg.tsv"),
    "ciftiSubcortical": (
        "tpl-fsLR_atlas-ciftiSubcortical_den-32k_dseg.dlabel.nii",
        "atlas-ciftiSubcortical_dseg.tsv",
    ),
}
MESH = (
    "S1200.L.midthickness_MSMAll.32k_fs_LR.surf.gii",
    "S1200.R.midthickness_MSMAll.32k_fs_LR.surf.gii",
)


# --- helpers ------------------------------------------------------------------------------


def wb(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WB, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def wb_parcellate(data: Path, label: Path, out: Path, *extra: str) -> np.ndarray:
    res = wb("-cifti-parcellate", data, label, "COLUMN", out, "-method", "MEAN", *extra)
    assert res.returncode == 0, res.stderr
    return np.asanyarray(nib.load(out).dataobj).astype(np.float64)


def write_dtseries(path: Path, data: np.ndarray, bm: cifti2.BrainModelAxis, step=0.8) -> Path:
    series = cifti2.SeriesAxis(0.0, step, data.shape[0], unit="SECOND")
    cifti2.Cifti2Image(np.asarray(data, np.float32), header=(series, bm)).to_filename(path)
    return path


def subset(bm: cifti2.BrainModelAxis, idx: np.ndarray) -> cifti2.BrainModelAxis:
    """``bm[idx]`` (structures kept contiguous by the caller), without nibabel's slow slicing."""
    return cifti2.BrainModelAxis(
        bm.name[idx],
        voxel=bm.voxel[idx],
        vertex=bm.vertex[idx],
        affine=bm.affine,
        volume_shape=bm.volume_shape,
        nvertices=bm.nvertices,
    )


def data_columns(atlas_bm: cifti2.BrainModelAxis, data_bm: cifti2.BrainModelAxis) -> np.ndarray:
    """Reference matching, independent of the code under test: the data column of each
    atlas grayordinate (-1 if absent), joining on (structure, vertex) or voxel ijk."""

    def frame(bm: cifti2.BrainModelAxis) -> pd.DataFrame:
        vox = np.asarray(bm.voxel)
        name = np.where(np.asarray(bm.vertex) >= 0, np.asarray(bm.name), "VOXEL")
        return pd.DataFrame(
            {"s": name, "v": bm.vertex, "i": vox[:, 0], "j": vox[:, 1], "k": vox[:, 2]}
        )

    a = frame(atlas_bm).reset_index(names="a")
    d = frame(data_bm).reset_index(names="d")
    merged = a.merge(d, on=["s", "v", "i", "j", "k"], how="left").sort_values("a")
    return merged["d"].fillna(-1).astype(int).to_numpy()


def reference_means(
    atlas_path: Path, data: np.ndarray, data_bm: cifti2.BrainModelAxis
) -> dict[int, np.ndarray]:
    """Label value -> mean time series over the atlas grayordinates found in the data."""
    img = nib.load(atlas_path)
    values = np.asanyarray(img.dataobj)[0].astype(int)
    cols = data_columns(img.header.get_axis(1), data_bm)
    found = (values != 0) & (cols >= 0)
    return {
        int(v): data[:, cols[found & (values == v)]].astype(np.float64).mean(axis=1)
        for v in np.unique(values[found])
    }


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fslr(shared_data) -> Path:
    folder = shared_data / SURF
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def bm91k(fslr) -> cifti2.BrainModelAxis:
    """fMRIPrep's 91k brain models: cortex without the medial wall + 19 subcortical structures."""
    info = np.load(fslr / "fMRI_vertex_info_32k.npz")
    left = cifti2.BrainModelAxis.from_surface(info["grayl"], int(info["num_meshl"]), "CortexLeft")
    right = cifti2.BrainModelAxis.from_surface(info["grayr"], int(info["num_meshr"]), "CortexRight")
    sub = nib.load(fslr / DLABELS["ciftiSubcortical"][0]).header.get_axis(1)
    bm = left + right + sub
    assert len(bm) == 91282
    return bm


@pytest.fixture(scope="module")
def run91k(tmp_path_factory, bm91k):
    """A 91k float32 dense time series: per-grayordinate offsets, shared signals, noise."""
    rng = np.random.default_rng(7)
    n = len(bm91k)
    shared = rng.standard_normal((4, N_FRAMES))
    data = (
        1000
        + 100 * rng.random(n)
        + (rng.standard_normal((n, 4)) @ shared).T
        + 5 * rng.standard_normal((N_FRAMES, n))
    ).astype(np.float32)
    path = write_dtseries(tmp_path_factory.mktemp("cifti") / "run.dtseries.nii", data, bm91k)
    return path, data


@pytest.fixture(scope="module")
def ctx91k(tmp_path_factory, run91k, bm91k) -> Path:
    """The cortex of ``run91k`` only (59,412 grayordinates, no subcortical voxel)."""
    cortex = np.flatnonzero(~bm91k.volume_mask)
    path = tmp_path_factory.mktemp("ctx") / "ctx.dtseries.nii"
    return write_dtseries(path, run91k[1][:, cortex], subset(bm91k, cortex))


# --- CIFTI header reader ------------------------------------------------------------------


def test_header_reader_matches_nibabel(fslr, run91k):
    files = [fslr / DLABELS[n][0] for n in ("Schaefer400", "ciftiSubcortical")]
    files += [fslr / "S1200.sulc_MSMAll.32k_fs_LR.dscalar.nii", run91k[0]]
    for path in files:
        ours = read_cifti(path)
        img = nib.load(path)
        assert ours.shape == img.shape
        assert ours.axes[1] == Grayordinates.from_axis(img.header.get_axis(1))
        assert ours.axes[1].runs == Grayordinates.from_axis(img.header.get_axis(1)).runs
        if isinstance(ours.axes[0], LabelMaps):
            ref = img.header.get_axis(0).label[0]
            assert ours.axes[0].tables[0] == {k: v[0] for k, v in ref.items()}
        if ours.shape[0] * ours.shape[1] < 2e6:
            np.testing.assert_array_equal(ours.read_all(), np.asanyarray(img.dataobj))
    data = open_surface_data(run91k[0])
    assert data.t_r == pytest.approx(0.8) and data.n_frames == N_FRAMES
    assert data.grayordinates.to_axis() == nib.load(run91k[0]).header.get_axis(1)


# --- Workbench parity ---------------------------------------------------------------------


@needs_wb
@pytest.mark.shared
@pytest.mark.parametrize("atlas", list(DLABELS))
def test_parcel_means_match_workbench(atlas, fslr, run91k, bm91k, tmp_path):
    path, data = run91k
    label = fslr / DLABELS[atlas][0]
    ref = wb_parcellate(path, label, tmp_path / "wb.ptseries.nii")
    wb_parcels = nib.load(tmp_path / "wb.ptseries.nii").header.get_axis(1)

    src = load_surface_atlas(atlas, label)  # names from the dlabel's own label table
    run_data = open_surface_data(path)
    ops = prepare_surface([src], run_data)
    run = extract_surface_run(run_data, ops)
    sig = run.signals[atlas]
    assert sig.shape == ref.shape  # every parcel, subcortical ones included
    assert max_rel(sig, ref) <= 1e-5
    assert list(src.lut["name"]) == list(wb_parcels.name)
    assert ops.parcels(atlas) == wb_parcels  # same parcels, vertices, voxels, geometry

    numpy_ref = reference_means(label, data, bm91k)
    assert sorted(numpy_ref) == list(src.lut["index"])
    np.testing.assert_allclose(
        sig, np.column_stack([numpy_ref[i] for i in src.lut["index"]]), rtol=1e-12
    )
    cov = run.coverage[atlas]
    assert cov["usable"].all() and (cov["coverage"] == 1).all()
    assert (cov["n_grayordinates"] == cov["n_grayordinates_in_data"]).all()


@pytest.mark.shared
def test_labels_tsv_and_all_atlases_in_one_pass(fslr, run91k, tmp_path):
    path, data = run91k
    sources = [
        load_surface_atlas(name, fslr / img, labels=fslr / tsv)
        for name, (img, tsv) in DLABELS.items()
    ]
    glasser = sources[2]
    assert glasser.lut["name"].iloc[0] == "Right_V1"  # from the TSV, not R_V1_ROI
    assert sources[0].lut["name"].iloc[0] == "17Networks_LH_VisCent_ExStr_1"
    assert list(sources[3].lut["index"][:3]) == [8, 10, 11]
    assert sources[3].lut["structure"].iloc[0] == "CEREBELLUM_LEFT"
    run_data = open_surface_data(path)
    ops = prepare_surface(sources, run_data)
    together = extract_surface_run(run_data, ops, block_bytes=1 << 20)  # many small blocks
    for src in sources:
        alone = extract_surface_run(run_data, prepare_surface([src], run_data))
        np.testing.assert_allclose(together.signals[src.name], alone.signals[src.name], rtol=1e-12)
        pd.testing.assert_frame_equal(together.coverage[src.name], alone.coverage[src.name])


@needs_wb
@pytest.mark.shared
def test_missing_grayordinates_and_empty_labels(fslr, run91k, bm91k, tmp_path):
    """Data without some labelled vertices: Workbench refuses (legacy mode drops the
    parcel); ours keeps an n/a column with its coverage row. A label without any vertex:
    Workbench keeps it filled with 0, ours with NaN."""
    path, data = run91k
    label = fslr / DLABELS["Glasser"][0]
    img = nib.load(label)
    abm, values = img.header.get_axis(1), np.asanyarray(img.dataobj)[0].astype(int)
    right = abm.name == "CIFTI_STRUCTURE_CORTEX_RIGHT"
    gone = set(abm.vertex[right & (values == 1)])  # R_V1: every vertex
    half = abm.vertex[right & (values == 2)]  # R_MST: half of them
    gone |= set(half[: len(half) // 2])
    keep = ~((bm91k.name == "CIFTI_STRUCTURE_CORTEX_RIGHT") & np.isin(bm91k.vertex, list(gone)))
    sub_path = write_dtseries(
        tmp_path / "missing.dtseries.nii", data[:, keep], subset(bm91k, np.flatnonzero(keep))
    )

    res = wb("-cifti-parcellate", sub_path, label, "COLUMN", tmp_path / "x.ptseries.nii")
    assert res.returncode != 0 and "missing vertex" in res.stderr
    legacy = wb_parcellate(sub_path, label, tmp_path / "legacy.ptseries.nii", "-legacy-mode")

    src = load_surface_atlas("Glasser", label)
    run_data = open_surface_data(sub_path)
    run = extract_surface_run(run_data, prepare_surface([src], run_data))
    sig, cov = run.signals["Glasser"], run.coverage["Glasser"]
    assert np.isnan(sig[:, 0]).all() and not np.isnan(sig[:, 1:]).any()
    assert legacy.shape[1] == 359
    assert max_rel(sig[:, 1:], legacy) <= 1e-5
    row0, row1 = cov.iloc[0], cov.iloc[1]
    assert (row0.n_grayordinates, row0.n_grayordinates_in_data, row0.usable) == (787, 0, False)
    assert row1.n_grayordinates == 76 and row1.n_grayordinates_in_data == 76 - 38
    assert row1.coverage == pytest.approx(0.5) and row1.usable

    # an extra key in the label table, no vertex: wb fills 0, we keep a NaN column
    lab_axis = img.header.get_axis(0)
    table = dict(lab_axis.label[0])
    table[999] = ("EXTRA", (1.0, 0.0, 0.0, 1.0))
    extra = tmp_path / "extra.dlabel.nii"
    cifti2.Cifti2Image(
        np.asanyarray(img.dataobj), header=(cifti2.LabelAxis(lab_axis.name, [table]), abm)
    ).to_filename(extra)
    ref = wb_parcellate(path, extra, tmp_path / "extra.ptseries.nii")
    assert ref.shape[1] == 361 and (ref[:, -1] == 0).all()
    src = load_surface_atlas("GlasserExtra", extra)
    run_data = open_surface_data(path)
    run = extract_surface_run(run_data, prepare_surface([src], run_data))
    assert src.lut["name"].iloc[-1] == "EXTRA"
    assert np.isnan(run.signals["GlasserExtra"][:, -1]).all()
    assert max_rel(run.signals["GlasserExtra"][:, :-1], ref[:, :-1]) <= 1e-5


@pytest.mark.shared
def test_matching_ignores_array_order(fslr, run91k, ctx91k, bm91k, tmp_path, caplog):
    """Structures in another order and vertices shuffled give the same signals; a
    subcortex-only atlas on cortex-only data is all n/a."""
    path, data = run91k
    rng = np.random.default_rng(3)
    order = np.concatenate(
        [np.flatnonzero(bm91k.volume_mask)]
        + [
            rng.permutation(np.flatnonzero(bm91k.name == s))
            for s in ("CIFTI_STRUCTURE_CORTEX_RIGHT", "CIFTI_STRUCTURE_CORTEX_LEFT")
        ]
    )
    shuffled = write_dtseries(
        tmp_path / "shuffled.dtseries.nii", data[:, order], subset(bm91k, order)
    )
    sources = [
        load_surface_atlas(n, fslr / DLABELS[n][0]) for n in ("Schaefer400", "ciftiSubcortical")
    ]
    a = open_surface_data(path)
    b = open_surface_data(shuffled)
    assert a.key != b.key
    ra = extract_surface_run(a, prepare_surface(sources, a))
    rb = extract_surface_run(b, prepare_surface(sources, b))
    for name in ra.signals:
        np.testing.assert_allclose(ra.signals[name], rb.signals[name], rtol=1e-12)

    c = open_surface_data(ctx91k)
    with caplog.at_level(logging.WARNING):
        rc = extract_surface_run(c, prepare_surface(sources, c))
    assert "none of its 19 regions" in caplog.text
    assert np.isnan(rc.signals["ciftiSubcortical"]).all()
    cov = rc.coverage["ciftiSubcortical"]
    assert (cov["n_grayordinates_in_data"] == 0).all() and not cov["usable"].any()
    assert cov["n_grayordinates"].sum() == 31870
    np.testing.assert_allclose(rc.signals["Schaefer400"], ra.signals["Schaefer400"], rtol=1e-12)


@pytest.mark.shared
def test_centroids(fslr):
    mesh = tuple(fslr / m for m in MESH)
    src = load_surface_atlas("Glasser", fslr / DLABELS["Glasser"][0], mesh=mesh)
    img = nib.load(fslr / DLABELS["Glasser"][0])
    abm, values = img.header.get_axis(1), np.asanyarray(img.dataobj)[0].astype(int)
    coords = {
        "CIFTI_STRUCTURE_CORTEX_LEFT": nib.load(mesh[0]).agg_data("pointset"),
        "CIFTI_STRUCTURE_CORTEX_RIGHT": nib.load(mesh[1]).agg_data("pointset"),
    }
    xyz = np.array([coords[n][v] for n, v in zip(abm.name, abm.vertex, strict=True)], float)
    for row in src.lut.iloc[[0, 100, 359]].itertuples():
        expected = xyz[values == row.index].mean(axis=0)
        np.testing.assert_allclose([row.x, row.y, row.z], expected, rtol=1e-9)
    assert src.lut.iloc[0].x > 0 and src.lut.iloc[359].x < 0  # R_ then L_ parcels
    nomesh = load_surface_atlas("Schaefer100", fslr / DLABELS["Schaefer100"][0])
    assert nomesh.lut[["x", "y", "z"]].isna().all().all()
    sub = load_surface_atlas("sub", fslr / DLABELS["ciftiSubcortical"][0])
    simg = nib.load(fslr / DLABELS["ciftiSubcortical"][0])
    sbm, svals = simg.header.get_axis(1), np.asanyarray(simg.dataobj)[0].astype(int)
    world = apply_affine(sbm.affine, sbm.voxel)
    for row in sub.lut.itertuples():
        np.testing.assert_allclose([row.x, row.y, row.z], world[svals == row.index].mean(0))


# --- maps (dscalar) -----------------------------------------------------------------------


@pytest.mark.shared
def test_dscalar_maps_least_squares(fslr, run91k, bm91k, tmp_path):
    """Weighted least squares pinv(M) d on the data's grayordinates, as for volume maps;
    the atlas covers the whole 32k meshes (medial wall included) and the subcortex."""
    path, data = run91k
    # the left hemisphere's whole mesh (medial wall included) and the thalami
    thal = np.flatnonzero(np.char.startswith(bm91k.name.astype(str), "CIFTI_STRUCTURE_THALAMUS"))
    full = cifti2.BrainModelAxis.from_surface(np.arange(32492), 32492, "CortexLeft")
    full = full + subset(bm91k, thal)
    rng = np.random.default_rng(11)
    n_maps = 6
    weights = np.zeros((n_maps, len(full)), dtype=np.float32)
    for k in range(n_maps):
        support = rng.choice(len(full), size=3000, replace=False)
        # multiples of 1/8: sums of maps are exact in float32 (exact dependence below)
        weights[k, support] = rng.integers(1, 9, 3000) / 8
    names = [f"comp{k}" for k in range(n_maps)]
    dscalar = tmp_path / "maps.dscalar.nii"
    cifti2.Cifti2Image(weights, header=(cifti2.ScalarAxis(names), full)).to_filename(dscalar)

    src = load_surface_atlas("ica", dscalar)
    assert src.kind == "maps" and list(src.lut["name"]) == names
    run_data = open_surface_data(path)
    run = extract_surface_run(run_data, prepare_surface([src], run_data))
    # reference: the maps at the data's grayordinates, by (structure, vertex) / ijk
    rows = data_columns(bm91k, full)  # atlas grayordinate of each data column, or -1
    padded = np.concatenate([weights, np.zeros((n_maps, 1), np.float32)], axis=1)
    m = padded[:, rows].T.astype(np.float64)  # (data grayordinates, maps), 0 outside
    assert (rows >= 0).sum() == 29696 + 1288 + 1248
    expected = np.linalg.lstsq(m, data.T.astype(np.float64), rcond=None)[0].T
    np.testing.assert_allclose(run.signals["ica"], expected, rtol=1e-9, atol=1e-9)
    cov = run.coverage["ica"]
    assert (cov["n_grayordinates"] == 3000).all()
    assert (cov["n_grayordinates_in_data"] == (m != 0).sum(axis=0)).all()
    in_data_w = np.abs(m).sum(axis=0) / np.abs(weights.astype(float)).sum(axis=1)
    np.testing.assert_allclose(cov["coverage"], in_data_w, atol=1e-6)

    # rank deficiency: an exactly dependent map -> minimum-norm solution, no blow-up
    dep = weights.copy()
    dep[5] = dep[0] + dep[1]
    dscalar2 = tmp_path / "dep.dscalar.nii"
    cifti2.Cifti2Image(dep, header=(cifti2.ScalarAxis(names), full)).to_filename(dscalar2)
    tsv = tmp_path / "names.tsv"
    pd.DataFrame({"index": range(n_maps), "name": list("abcdef")}).to_csv(
        tsv, sep="\t", index=False
    )
    src2 = load_surface_atlas("dep", dscalar2, labels=tsv)
    assert list(src2.lut["name"]) == list("abcdef")
    run2 = extract_surface_run(run_data, prepare_surface([src2], run_data))
    m2 = np.concatenate([dep, np.zeros((n_maps, 1), np.float32)], axis=1)[:, rows].T
    m2 = m2.astype(np.float64)
    expected2 = np.linalg.lstsq(m2, data.T.astype(np.float64), rcond=None)[0].T
    assert np.abs(run2.signals["dep"]).max() < 1e4  # no 1e16 blow-up
    np.testing.assert_allclose(run2.signals["dep"], expected2, rtol=1e-7, atol=1e-7)


# --- GIFTI runs ---------------------------------------------------------------------------

N_FS5 = 10242


def _gifti_series(path: Path, values: np.ndarray, hemi: str) -> Path:
    meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": hemi})
    arrays = [
        nib.gifti.GiftiDataArray(col.astype(np.float32), intent="NIFTI_INTENT_TIME_SERIES")
        for col in values.T
    ]
    nib.gifti.GiftiImage(darrays=arrays, meta=meta).to_filename(path)
    return path


def _label_gii(path: Path, values: np.ndarray, table: dict[int, str], hemi: str) -> Path:
    lt = nib.gifti.GiftiLabelTable()
    for key, name in table.items():
        label = nib.gifti.GiftiLabel(key=key, red=1.0, green=0.0, blue=0.0, alpha=1.0)
        label.label = name
        lt.labels.append(label)
    meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": hemi})
    da = nib.gifti.GiftiDataArray(values.astype(np.int32), intent="NIFTI_INTENT_LABEL")
    nib.gifti.GiftiImage(darrays=[da], labeltable=lt, meta=meta).to_filename(path)
    return path


def _mesh(path: Path, xyz: np.ndarray, hemi: str) -> Path:
    faces = np.column_stack(
        [np.arange(len(xyz) - 2), np.arange(1, len(xyz) - 1), np.arange(2, len(xyz))]
    )
    meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": hemi})
    nib.gifti.GiftiImage(
        darrays=[
            nib.gifti.GiftiDataArray(xyz.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE"),
        ],
        meta=meta,
    ).to_filename(path)
    return path


@pytest.fixture(scope="module")
def fsaverage5(tmp_path_factory):
    """A synthetic fsaverage5-like GIFTI run (10,242 vertices per hemisphere, 20 frames),
    per-hemisphere labels 0..5 (0: medial wall) and meshes."""
    folder = tmp_path_factory.mktemp("fs5")
    rng = np.random.default_rng(5)
    n_t = 20
    left = (rng.standard_normal((N_FS5, n_t)) + rng.random((N_FS5, 1)) * 10).astype(np.float32)
    right = (rng.standard_normal((N_FS5, n_t)) + rng.random((N_FS5, 1)) * 10).astype(np.float32)
    lab_l = rng.integers(0, 6, N_FS5)
    lab_r = rng.integers(0, 6, N_FS5)
    lab_r[lab_r == 4] = 3  # right label 4 has no vertex
    return {
        "folder": folder,
        "run": (
            _gifti_series(
                folder / "sub-01_hemi-L_space-fsaverage5_bold.func.gii", left, "CortexLeft"
            ),
            _gifti_series(
                folder / "sub-01_hemi-R_space-fsaverage5_bold.func.gii", right, "CortexRight"
            ),
        ),
        "data": (left, right),
        "labels": (lab_l, lab_r),
        "mesh": (
            _mesh(folder / "lh.surf.gii", rng.standard_normal((N_FS5, 3)) * 50, "CortexLeft"),
            _mesh(folder / "rh.surf.gii", rng.standard_normal((N_FS5, 3)) * 50, "CortexRight"),
        ),
    }


def test_gifti_pair_label_gii(fsaverage5):
    fs = fsaverage5
    (lab_l, lab_r), (left, right) = fs["labels"], fs["data"]
    names = {0: "???", 1: "V1", 2: "V2", 3: "MT", 4: "IPS", 5: "FEF"}
    # right hemisphere values 6..10 in its own table: disjoint key spaces are kept
    right_vals = np.where(lab_r > 0, lab_r + 5, 0)
    lgii = _label_gii(fs["folder"] / "lh.label.gii", lab_l, names, "CortexLeft")
    rgii = _label_gii(
        fs["folder"] / "rh.label.gii",
        right_vals,
        {0: "???", **{k + 5: f"R_{n}" for k, n in names.items() if k}},
        "CortexRight",
    )
    src = load_surface_atlas("toy", lgii, image_right=rgii, mesh=fs["mesh"])
    assert src.grid == "gifti" and src.kind == "labels"
    assert list(src.lut["index"]) == list(range(1, 11))
    assert list(src.lut["name"][:2]) == ["V1", "V2"] and src.lut["name"].iloc[5] == "R_V1"
    data = open_surface_data(fs["run"])
    assert data.kind == "gifti" and data.n_frames == 20 and data.t_r is None
    run = extract_surface_run(data, prepare_surface([src], data))
    sig, cov = run.signals["toy"], run.coverage["toy"]
    for k in range(1, 6):
        np.testing.assert_allclose(
            sig[:, k - 1], left[lab_l == k].astype(float).mean(0), rtol=1e-12
        )
    for k in (1, 2, 3, 5):
        np.testing.assert_allclose(
            sig[:, k + 4], right[lab_r == k].astype(float).mean(0), rtol=1e-12
        )
    assert np.isnan(sig[:, 8]).all() and not cov["usable"].iloc[8]  # R_IPS: no vertex
    assert cov["n_grayordinates"].iloc[8] == 0
    mesh_l = nib.load(fs["mesh"][0]).agg_data("pointset").astype(float)
    np.testing.assert_allclose(
        src.lut.loc[0, ["x", "y", "z"]].to_numpy(float), mesh_l[lab_l == 1].mean(0), rtol=1e-6
    )
    assert list(src.lut["structure"][:2]) == ["CORTEX_LEFT"] * 2
    # outputs for a GIFTI run: a ParcelsAxis over both hemispheres
    parcels = prepare_surface([src], data).parcels("toy")
    assert len(parcels) == 10 and parcels.nvertices == {
        "CIFTI_STRUCTURE_CORTEX_LEFT": N_FS5,
        "CIFTI_STRUCTURE_CORTEX_RIGHT": N_FS5,
    }


def test_gifti_pair_annot(fsaverage5):
    """FreeSurfer annotations number each hemisphere from the same values and use the
    same names: right values are shifted, names get lh_/rh_ prefixes."""
    fs = fsaverage5
    (lab_l, lab_r), (left, right) = fs["labels"], fs["data"]
    ctab = np.array(
        [
            [25, 5, 25, 0, 0],
            [1, 2, 3, 0, 0],
            [4, 5, 6, 0, 0],
            [7, 8, 9, 0, 0],
            [10, 11, 12, 0, 0],
            [13, 14, 15, 0, 0],
        ]
    )
    names = [b"unknown", b"bankssts", b"cuneus", b"fusiform", b"insula", b"precuneus"]
    lh, rh = fs["folder"] / "lh.toy.annot", fs["folder"] / "rh.toy.annot"
    nib.freesurfer.write_annot(lh, lab_l, ctab, names, fill_ctab=True)
    nib.freesurfer.write_annot(rh, lab_r, ctab, names, fill_ctab=True)
    src = load_surface_atlas("aparc", (lh, rh))
    assert list(src.lut["index"]) == list(range(1, 11))
    assert src.lut["name"].iloc[0] == "lh_bankssts" and src.lut["name"].iloc[5] == "rh_bankssts"
    data = open_surface_data(fs["run"])
    run = extract_surface_run(data, prepare_surface([src], data))
    sig = run.signals["aparc"]
    np.testing.assert_allclose(sig[:, 0], left[lab_l == 1].astype(float).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sig[:, 9], right[lab_r == 5].astype(float).mean(0), rtol=1e-12)
    assert np.isnan(sig[:, 8]).all()  # rh_insula: in the table, no vertex
    # a global labels TSV numbers the regions after the shift (Schaefer-style)
    tsv = fs["folder"] / "aparc.tsv"
    pd.DataFrame({"index": range(1, 11), "name": [f"region{i}" for i in range(1, 11)]}).to_csv(
        tsv, sep="\t", index=False
    )
    named = load_surface_atlas("aparc", lh, image_right=rh, labels=tsv)
    assert named.lut["name"].iloc[9] == "region10"
    cfg = SimpleNamespace(name="aparc", kind="labels", image=lh, image_right=rh, labels=tsv)
    pd.testing.assert_frame_equal(load_surface_atlas_config(cfg).lut, named.lut)


def test_gifti_errors(fsaverage5, tmp_path):
    fs = fsaverage5
    lh = _label_gii(tmp_path / "lh.label.gii", fs["labels"][0], {1: "a"}, "CortexLeft")
    rh = _label_gii(tmp_path / "rh.label.gii", fs["labels"][1], {1: "a"}, "CortexRight")
    with pytest.raises(InputDataError, match="declared CORTEX_RIGHT"):
        load_surface_atlas("swapped", rh, image_right=lh)
    with pytest.raises(ConfigError, match="give the right hemisphere"):
        load_surface_atlas("half", lh)
    # an fsaverage6-sized atlas on fsaverage5 data
    big = np.zeros(40962, dtype=int)
    big[:100] = 1
    lh6 = _label_gii(tmp_path / "lh6.label.gii", big, {1: "a"}, "CortexLeft")
    rh6 = _label_gii(tmp_path / "rh6.label.gii", big, {1: "a"}, "CortexRight")
    src = load_surface_atlas("fs6", lh6, image_right=rh6)
    with pytest.raises(InputDataError, match="40962 vertices.*10242 vertices"):
        prepare_surface([src], open_surface_data(fs["run"]))
    # frames differ between hemispheres
    short = _gifti_series(tmp_path / "r.func.gii", fs["data"][1][:, :5], "CortexRight")
    with pytest.raises(InputDataError, match="same number of frames"):
        open_surface_data((fs["run"][0], short))


# --- wrong grid kinds ---------------------------------------------------------------------


@pytest.mark.shared
def test_wrong_grid_kind_errors(fslr, run91k, fsaverage5, shared_data):
    dlabel = fslr / DLABELS["Glasser"][0]
    volume = (
        shared_data
        / "atlases/labels"
        / (
            "tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-100Parcels17Networks_dseg.nii.gz"
        )
    )
    with pytest.raises(ConfigError, match="is a volume image"):
        load_surface_atlas("vol", volume)
    assert file_grid(volume) == "volume" and file_grid(dlabel) == "cifti"
    assert file_grid(fsaverage5["run"][0]) == "gifti"

    volume_src = AtlasSource(  # what load_atlas gives for a volume labels atlas
        name="SchaeferVol",
        kind="labels",
        lut=pd.DataFrame({"index": [1], "name": ["a"]}),
        source=str(volume),
    )
    cifti_run = open_surface_data(run91k[0])
    with pytest.raises(
        ConfigError, match=r"SchaeferVol: .*res-02.* is a volume atlas.*run\.dtseries\.nii"
    ):
        prepare_surface([volume_src], cifti_run)
    gifti_run = open_surface_data(fsaverage5["run"])
    with pytest.raises(ConfigError, match=r"Glasser: .*dlabel\.nii is a CIFTI atlas .*GIFTI run"):
        prepare_surface([load_surface_atlas("Glasser", dlabel)], gifti_run)
    lh = _label_gii(
        fsaverage5["folder"] / "lh2.label.gii", fsaverage5["labels"][0], {1: "a"}, "CortexLeft"
    )
    rh = _label_gii(
        fsaverage5["folder"] / "rh2.label.gii", fsaverage5["labels"][1], {1: "a"}, "CortexRight"
    )
    with pytest.raises(
        ConfigError, match=r"is a GIFTI atlas .*CIFTI run; this run needs a \.dlabel"
    ):
        prepare_surface([load_surface_atlas("pair", lh, image_right=rh)], cifti_run)
    with pytest.raises(ConfigError, match="labels atlas"):
        load_surface_atlas("k", dlabel, kind="maps")
    with pytest.raises(InputDataError, match="not a CIFTI-2 file|expected a series"):
        open_surface_data(dlabel)


@pytest.mark.shared
def test_volume_grid_mismatch(fslr, bm91k):
    sub = nib.load(fslr / DLABELS["ciftiSubcortical"][0]).header.get_axis(1)
    moved = np.array(sub.affine, dtype=float)
    moved[0, 3] += 2.0
    shifted = cifti2.BrainModelAxis(
        sub.name, voxel=sub.voxel, vertex=sub.vertex, affine=moved, volume_shape=sub.volume_shape
    )
    with pytest.raises(InputDataError, match="atlas.dlabel.nii: subcortical voxels .*not the grid"):
        match_grayordinates(shifted, bm91k, "atlas.dlabel.nii", "run.dtseries.nii")
    # the same voxels on the same grid match one to one
    col = match_grayordinates(sub, bm91k)
    assert (col >= 0).all() and len(np.unique(col)) == len(sub)


# --- non-finite values, strategies --------------------------------------------------------


def test_nonfinite_constant_and_strategies(tmp_path):
    """Non-finite values count as 0 and make their grayordinate unusable, as do
    constant ones; median uses the volume engine's grouped reduction."""
    rng = np.random.default_rng(2)
    n_v, n_t = 200, 15
    bm = cifti2.BrainModelAxis.from_surface(np.arange(n_v), n_v, "CortexLeft")
    data = rng.standard_normal((n_t, n_v)).astype(np.float32)
    data[3, 0] = np.nan
    data[:, 1] = 7.0  # constant
    path = write_dtseries(tmp_path / "small.dtseries.nii", data, bm)
    labels = np.repeat(np.arange(1, 5), 50)
    lab_axis = cifti2.LabelAxis(
        ["m"], [{0: ("???", (1, 1, 1, 0)), **{k: (f"p{k}", (1, 0, 0, 1)) for k in range(1, 5)}}]
    )
    dlabel = tmp_path / "small.dlabel.nii"
    cifti2.Cifti2Image(labels[None].astype(np.float32), header=(lab_axis, bm)).to_filename(dlabel)
    mean = load_surface_atlas("mean", dlabel, min_coverage=0.97)
    median = load_surface_atlas("median", dlabel, strategy="median")
    run_data = open_surface_data(path)
    run = extract_surface_run(run_data, prepare_surface([mean, median], run_data), block_bytes=4096)
    clean = np.where(np.isfinite(data), data, 0).astype(float)
    cov = run.coverage["mean"]
    assert list(cov["n_grayordinates_usable"]) == [48, 50, 50, 50]
    assert cov["coverage"].iloc[0] == pytest.approx(0.96) and not cov["usable"].iloc[0]
    assert np.isnan(run.signals["mean"][:, 0]).all()  # below min_coverage
    np.testing.assert_allclose(run.signals["mean"][:, 1], clean[:, 50:100].mean(1), rtol=1e-12)
    np.testing.assert_allclose(
        run.signals["median"][:, 0], np.median(clean[:, :50], axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        run.signals["median"][:, 3], np.median(clean[:, 150:], axis=1), rtol=1e-6
    )
    with pytest.raises(ConfigError, match="unknown strategy"):
        prepare_surface([load_surface_atlas("bad", dlabel, strategy="mode")], run_data)


# --- CIFTI outputs ------------------------------------------------------------------------


@needs_wb
@pytest.mark.shared
def test_ptseries_and_pconn_outputs(fslr, run91k, ctx91k, tmp_path):
    path, _ = run91k
    glasser, sub = (
        load_surface_atlas(n, fslr / DLABELS[n][0]) for n in ("Glasser", "ciftiSubcortical")
    )
    # cortex-only data: every subcortical parcel is empty, its columns NaN
    for run_path, sources in ((path, [glasser, sub]), (ctx91k, [sub])):
        data = open_surface_data(run_path)
        ops = prepare_surface(sources, data)
        run = extract_surface_run(data, ops)
        for src in sources:
            parcels = ops.parcels(src.name)
            ts = run.signals[src.name]
            raw = ptseries_bytes(ts, parcels, step=data.t_r)
            assert raw == ptseries_bytes(ts, ops.parcels(src.name), step=data.t_r)
            written = []
            dest = write_cifti(
                tmp_path / f"{src.name}.ptseries.nii", raw, writer=_recording_writer(written)
            )
            assert written == [dest]
            back = nib.load(dest)
            assert back.header.get_axis(1) == parcels
            np.testing.assert_array_equal(np.asanyarray(back.dataobj), ts.astype(np.float32))
            info = wb("-file-information", dest).stdout
            assert "CIFTI - Parcel Series" in info
            assert f"Number of Rows:           {src.n_regions}" in info
            assert f"Number of Maps:           {N_FRAMES}" in info
            with np.errstate(invalid="ignore"):
                conn = np.corrcoef(np.nan_to_num(ts).T)
            pconn = write_cifti(tmp_path / f"{src.name}.pconn.nii", pconn_bytes(conn, parcels))
            assert pconn_bytes(conn, parcels) == pconn.read_bytes()
            info = wb("-file-information", pconn).stdout
            assert "CIFTI - Parcel" in info and f"Number of Rows:           {src.n_regions}" in info
            assert f"Number of Columns:        {src.n_regions}" in info


def _recording_writer(written: list):
    def writer(path: Path, data: bytes) -> None:
        written.append(path)
        path.write_bytes(data)

    return writer


def test_parcels_axis_from_assignment():
    g = Grayordinates.surfaces(5, 4)
    axis = parcels_axis(["a", "b", "c"], np.array([1, 1, -1, 0, 0, 0, 1, -1, 1]), g)
    assert list(axis.name) == ["a", "b", "c"]
    assert {k: list(v) for k, v in axis.vertices[0].items()} == {
        "CIFTI_STRUCTURE_CORTEX_LEFT": [3, 4],
        "CIFTI_STRUCTURE_CORTEX_RIGHT": [0],
    }
    assert {k: list(v) for k, v in axis.vertices[1].items()} == {
        "CIFTI_STRUCTURE_CORTEX_LEFT": [0, 1],
        "CIFTI_STRUCTURE_CORTEX_RIGHT": [1, 3],
    }
    assert axis.vertices[2] == {} and len(axis.voxels[2]) == 0
    raw = ptseries_bytes(np.zeros((3, 3)), axis, step=2.0)
    back = nib.Cifti2Image.from_bytes(raw)
    assert (
        back.header.get_axis(0).step == 2.0
        and back.nifti_header.get_intent()[0] == "ConnParcelSries"
    )

"""Surface runs end to end: the demo's fsLR 91k CIFTI runs and a GIFTI fsaverage5 pair,
participant and group level through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo
from bids_app.write import read_tsv

pytestmark = pytest.mark.slow
STEM = "task-rest_space-fsLR_den-91k"


@pytest.fixture(scope="module")
def cifti_demo(tmp_path_factory) -> tuple[Path, Path, Path]:
    dest = tmp_path_factory.mktemp("cifti")
    config = build_demo(
        dest, DemoSpec(n_subjects=3, n_sessions=1, n_volumes=50, seed=4, cifti=True)
    )
    out = dest / "out"
    assert (
        main(
            [
                str(dest / "fmriprep"),
                str(out),
                "participant",
                "--config",
                str(config),
                "--space",
                "fsLR",
                "--no-reports",
            ]
        )
        == 0
    )
    return dest / "fmriprep", config, out


def test_cifti_runs_give_tables_and_workbench_files(cifti_demo, caplog):
    bids, config, out = cifti_demo
    func = out / "sub-01" / "func"
    ts = read_tsv(func / f"sub-01_{STEM}_atlas-DemoSurf_desc-simple_timeseries.tsv")
    lut = read_tsv(out / "atlas-DemoSurf_dseg.tsv")
    assert list(ts.columns) == list(lut["name"]) and len(ts) == 48  # 2 non-steady-state
    side = json.loads(
        (func / f"sub-01_{STEM}_atlas-DemoSurf_desc-simple_timeseries.json").read_text()
    )
    assert side["SamplingFrequency"] == pytest.approx(0.5)  # the sidecar's TR
    assert any("space-fsLR_den-91k_bold.dtseries.nii" in s for s in side["Sources"])
    cov = read_tsv(func / f"sub-01_{STEM}_atlas-DemoSurf_desc-simple_coverage.tsv")
    assert (cov["coverage"] == 1).all()
    # structure: the demo's networks are recovered on the surface too
    rel = read_tsv(func / f"sub-01_{STEM}_atlas-DemoSurf_meas-correlation_desc-simple_relmat.tsv")
    m = rel.to_numpy()
    net = np.array(
        [next(p for p in name.split("_") if p.startswith("Net")) for name in lut["name"]]
    )
    same = (net[:, None] == net[None]) & ~np.eye(len(net), dtype=bool)
    assert m[same].mean() > m[net[:, None] != net[None]].mean() + 0.2
    # CIFTI outputs: the same numbers as the tables
    pts = nib.load(func / f"sub-01_{STEM}_atlas-DemoSurf_desc-simple_timeseries.ptseries.nii")
    np.testing.assert_allclose(np.asanyarray(pts.dataobj), ts.to_numpy(), rtol=1e-6, atol=1e-6)
    assert list(pts.header.get_axis(1).name) == list(lut["name"])
    pconn = nib.load(
        func / f"sub-01_{STEM}_atlas-DemoSurf_meas-correlation_desc-simple_relmat.pconn.nii"
    )
    np.testing.assert_allclose(np.asanyarray(pconn.dataobj), m, rtol=1e-6, atol=1e-6)
    wb = shutil.which("wb_command")
    if wb is None:
        pytest.skip(
            "wb_command (Connectome Workbench) not installed: apt-get install connectome-workbench"
        )
    for path, maps in ((pts.get_filename(), "48"), (pconn.get_filename(), str(len(lut)))):
        info = subprocess.run([wb, "-file-information", path], capture_output=True, text=True)
        assert info.returncode == 0, info.stderr
        assert (
            f"Number of Maps:  {maps}" in " ".join(info.stdout.split("  ")) or maps in info.stdout
        )
        assert "Parcels" in info.stdout or "PARCELS" in info.stdout


def test_cifti_parcel_means_equal_numpy(cifti_demo):
    """Extraction (no denoising) against a direct computation on the dtseries."""
    from bids_app.config import load_config
    from bids_app.discover import Selection, find_runs
    from bids_app.extract.surface import extract_surface_run, open_surface_data, prepare_surface
    from bids_app.participant import load_atlases, make_context

    bids, config_path, _ = cifti_demo
    config = load_config(config_path, space="fsLR")
    (run, *_) = find_runs(bids, Selection(space="fsLR", den="91k"))
    ctx = make_context(config, Path("/nonexistent"), bids, reports=False)
    load_atlases(ctx)
    data = open_surface_data(run.data)
    signals = extract_surface_run(data, prepare_surface(ctx.sources, data))
    img = nib.load(run.bold)
    values = np.asanyarray(img.dataobj).astype(np.float64)
    labels = np.asanyarray(nib.load(config.atlases[-1].image).dataobj)[0].astype(int)
    assert len(labels) == values.shape[1]  # the demo's parcellation is on the same 91k model
    expected = np.stack(
        [values[:, labels == k].mean(axis=1) for k in range(1, labels.max() + 1)], 1
    )
    np.testing.assert_allclose(signals.signals["DemoSurf"], expected, rtol=1e-10)


def test_cifti_group_level_and_grid_checks(cifti_demo, caplog, capsys):
    bids, config, out = cifti_demo
    assert (
        main(
            [
                str(bids),
                str(out),
                "group",
                "--config",
                str(config),
                "--space",
                "fsLR",
                "--no-reports",
            ]
        )
        == 0
    )
    mean = read_tsv(
        out / "group" / f"{STEM}_atlas-DemoSurf_meas-correlation_desc-simple_relmat.tsv"
    )
    assert mean.shape[0] == mean.shape[1] == len(read_tsv(out / "atlas-DemoSurf_dseg.tsv"))
    # the volume runs of the same dataset, with the same configuration: the surface atlas skipped
    vol = out.parent / "out-volume"
    caplog.clear()
    assert (
        main(
            [
                str(bids),
                str(vol),
                "participant",
                "--config",
                str(config),
                "--no-reports",
                "--participant-label",
                "01",
            ]
        )
        == 0
    )
    assert "atlases DemoSurf: not for volume runs" in caplog.text
    assert not list(vol.rglob("*DemoSurf*_timeseries.tsv"))
    # smoothing is a volume operation
    bad = config.with_name("smooth.yaml")
    bad.write_text(
        config.read_text().replace("high_pass: 0.01", "high_pass: 0.01\n  smoothing_fwhm: 6")
    )
    code = main(
        [str(bids), str(out.parent / "o2"), "participant", "--config", str(bad), "--space", "fsLR"]
    )
    assert code == 64 and "smoothing_fwhm" in capsys.readouterr().err


def _gifti_func(path: Path, data: np.ndarray, hemi: str) -> None:
    structure = "CortexLeft" if hemi == "L" else "CortexRight"
    arrays = [
        nib.gifti.GiftiDataArray(col.astype(np.float32), intent="NIFTI_INTENT_TIME_SERIES")
        for col in data
    ]
    img = nib.gifti.GiftiImage(darrays=arrays)
    img.meta["AnatomicalStructurePrimary"] = structure
    nib.save(img, path)


def _gifti_labels(path: Path, labels: np.ndarray, hemi: str, names: list[str]) -> None:
    table = nib.gifti.GiftiLabelTable()
    for k, name in enumerate(["???"] + names):
        lab = nib.gifti.GiftiLabel(k, *np.random.default_rng(k).random(3), 1.0)
        lab.label = name
        table.labels.append(lab)
    img = nib.gifti.GiftiImage(
        labeltable=table,
        darrays=[nib.gifti.GiftiDataArray(labels.astype(np.int32), intent="NIFTI_INTENT_LABEL")],
    )
    img.meta["AnatomicalStructurePrimary"] = "CortexLeft" if hemi == "L" else "CortexRight"
    nib.save(img, path)


def test_gifti_hemisphere_pair_is_one_run(cifti_demo, tmp_path):
    bids, _, _ = cifti_demo
    n_vert, n_vol, k = 10242, 50, 6  # fsaverage5
    rng = np.random.default_rng(0)
    root = tmp_path / "fmriprep"
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    shutil.copy(bids / "dataset_description.json", root)
    for suffix in ("tsv", "json"):
        shutil.copy(
            next(bids.glob(f"sub-01/func/*_desc-confounds_timeseries.{suffix}")),
            func / f"sub-01_task-rest_desc-confounds_timeseries.{suffix}",
        )
    (func / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.json").write_text(
        '{"RepetitionTime": 2.0}'
    )  # fMRIPrep < 21 wrote no sidecar for GIFTI: this one is used
    networks = rng.standard_normal((n_vol, 2))
    atlas = tmp_path / "atlas"
    atlas.mkdir()
    for hemi in ("L", "R"):
        labels = (np.arange(n_vert) * k) // n_vert + 1
        labels[:300] = 0  # medial wall
        signal = networks[:, (labels - 1) % 2] * (labels > 0) + rng.standard_normal((n_vol, n_vert))
        _gifti_func(
            func / f"sub-01_task-rest_hemi-{hemi}_space-fsaverage5_bold.func.gii",
            1000 + 10 * signal,
            hemi,
        )
        _gifti_labels(
            atlas / f"{hemi.lower()}h.parcels.label.gii",
            labels,
            hemi,
            [f"{hemi}_P{i + 1}" for i in range(k)],
        )
    config = tmp_path / "surf.yaml"
    config.write_text(
        "space: fsaverage5\n"
        "denoise: {name: simple, strategy: simple, high_pass: 0.01}\n"
        f"atlases: [{{name: Parcels, kind: labels, image: {atlas}/lh.parcels.label.gii, "
        f"image_right: {atlas}/rh.parcels.label.gii}}]\n"
    )
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--config", str(config), "--no-reports"]) == 0
    (ts_path,) = out.glob("sub-01/func/*_timeseries.tsv")
    assert (
        ts_path.name == "sub-01_task-rest_space-fsaverage5_atlas-Parcels_desc-simple_timeseries.tsv"
    )
    ts = read_tsv(ts_path)
    assert list(ts.columns) == [f"L_P{i + 1}" for i in range(k)] + [f"R_P{i + 1}" for i in range(k)]
    rel = read_tsv(
        next(out.glob("sub-01/func/*_meas-correlation_desc-simple_relmat.tsv"))
    ).to_numpy()
    assert rel[0, 2] > 0.5 and abs(rel[0, 1]) < 0.3  # parcels 1 and 3 share a network
    assert not list(out.rglob("*.ptseries.nii"))  # CIFTI outputs for CIFTI runs only

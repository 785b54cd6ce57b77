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
_DLABEL = "tpl-fsLR_atlas-DemoSurf_den-91k_dseg.dlabel.nii"


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


def test_cifti_report_says_why_surface_regions_are_na(cifti_demo, tmp_path):
    """A cortex-only dtseries (no subcortical grayordinate) with one parcel constant: the
    participant report names the surface reasons read from the coverage table."""
    bids, config, _ = cifti_demo
    root = tmp_path / "fmriprep"
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    shutil.copy(bids / "dataset_description.json", root)
    for path in (bids / "sub-01" / "func").iterdir():
        if not path.name.endswith(("_bold.nii.gz", ".dtseries.nii")):
            shutil.copy(path, func)
    (dense,) = (bids / "sub-01" / "func").glob("*_bold.dtseries.nii")
    img = nib.load(dense)
    series, brain = img.header.get_axis(0), img.header.get_axis(1)
    cortex = brain.surface_mask
    values = np.asanyarray(img.dataobj)[:, cortex]
    labels = np.asanyarray(nib.load(config.parent / "atlas" / _DLABEL).dataobj)[0].astype(int)
    values[:, labels[cortex] == 1] = 1000.0  # parcel 1: constant over the run
    nib.Cifti2Image(values, header=(series, brain[cortex])).to_filename(func / dense.name)
    out = tmp_path / "out"
    args = [str(root), str(out), "participant", "--config", str(config), "--space", "fsLR"]
    assert main(args + ["--atlas-cache", str(tmp_path / "cache")]) == 0
    cov = read_tsv(next(out.glob("sub-01/func/*_atlas-DemoSurf_desc-simple_coverage.tsv")))
    lut = read_tsv(out / "atlas-DemoSurf_dseg.tsv")
    subcortex = [n for n in lut["name"] if n.startswith("Thalamus")]
    assert len(subcortex) == 2
    cov = cov.set_index("name")
    assert (cov.loc[subcortex, "n_grayordinates_in_data"] == 0).all()
    assert (cov.loc[subcortex, "n_grayordinates"] > 0).all()
    first = lut["name"][0]
    assert cov.loc[first, "n_grayordinates_in_data"] > 0 == cov.loc[first, "n_grayordinates_usable"]
    assert (cov.drop(index=[first, *subcortex])["coverage"] == 1).all()
    page = (out / "sub-01.html").read_text()
    for name in subcortex:
        assert f"{name} (no grayordinate in the data)" in page
    assert f"{first} (no usable grayordinate (constant or n/a data))" in page
    assert "below min_coverage" not in page
    assert "3 n/a" in page
    methods = (out / "logs" / "desc-simple_methods.md").read_text()
    assert "extracted from 1 atlas: DemoSurf (a labels atlas, mean of each region's " in methods
    assert "DemoGrid" not in methods  # volume atlases are skipped for surface runs
    assert "without usable grayordinates in the data were n/a" in methods


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


N_VERT, N_VOL, K = 10242, 50, 6  # fsaverage5 vertices a hemisphere, volumes, parcels
GIFTI_SUBJECTS = ("01", "02", "03")


@pytest.fixture(scope="module")
def gifti_dataset(cifti_demo, tmp_path_factory) -> tuple[Path, Path]:
    """fsaverage5 hemisphere pairs of three participants (the demo's confounds; parcels
    1, 3, 5 share one network, 2, 4, 6 another), a .label.gii pair and a configuration."""
    bids, _, _ = cifti_demo
    tmp = tmp_path_factory.mktemp("gifti")
    root = tmp / "fmriprep"
    root.mkdir()
    shutil.copy(bids / "dataset_description.json", root)
    labels = (np.arange(N_VERT) * K) // N_VERT + 1
    labels[:300] = 0  # medial wall
    atlas = tmp / "atlas"
    atlas.mkdir()
    for hemi in ("L", "R"):
        _gifti_labels(
            atlas / f"{hemi.lower()}h.parcels.label.gii",
            labels,
            hemi,
            [f"{hemi}_P{i + 1}" for i in range(K)],
        )
    for sub in GIFTI_SUBJECTS:
        rng = np.random.default_rng(int(sub))
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        for suffix in ("tsv", "json"):
            shutil.copy(
                next(bids.glob(f"sub-{sub}/func/*_desc-confounds_timeseries.{suffix}")),
                func / f"sub-{sub}_task-rest_desc-confounds_timeseries.{suffix}",
            )
        # fMRIPrep < 21 wrote no sidecar for GIFTI: the volume BOLD's is used
        volume = f"sub-{sub}_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.json"
        (func / volume).write_text('{"RepetitionTime": 2.0}')
        networks = rng.standard_normal((N_VOL, 2))
        for hemi in ("L", "R"):
            noise = rng.standard_normal((N_VOL, N_VERT))
            signal = networks[:, (labels - 1) % 2] * (labels > 0) + noise
            _gifti_func(
                func / f"sub-{sub}_task-rest_hemi-{hemi}_space-fsaverage5_bold.func.gii",
                1000 + 10 * signal,
                hemi,
            )
    config = tmp / "surf.yaml"
    config.write_text(
        "space: fsaverage5\n"
        "denoise: {name: simple, strategy: simple, high_pass: 0.01}\n"
        f"atlases: [{{name: Parcels, kind: labels, image: {atlas}/lh.parcels.label.gii, "
        f"image_right: {atlas}/rh.parcels.label.gii}}]\n"
    )
    return root, config


def test_gifti_hemisphere_pair_is_one_run(gifti_dataset, tmp_path):
    root, config = gifti_dataset
    out = tmp_path / "out"
    args = [str(root), str(out), "participant", "--config", str(config), "--no-reports"]
    assert main(args + ["--participant-label", "01"]) == 0
    (ts_path,) = out.glob("sub-01/func/*_timeseries.tsv")
    assert (
        ts_path.name == "sub-01_task-rest_space-fsaverage5_atlas-Parcels_desc-simple_timeseries.tsv"
    )
    ts = read_tsv(ts_path)
    assert list(ts.columns) == [f"{h}_P{i + 1}" for h in "LR" for i in range(K)]
    rel = read_tsv(
        next(out.glob("sub-01/func/*_meas-correlation_desc-simple_relmat.tsv"))
    ).to_numpy()
    assert rel[0, 2] > 0.5 and abs(rel[0, 1]) < 0.3  # parcels 1 and 3 share a network
    assert not list(out.rglob("*.ptseries.nii"))  # CIFTI outputs for CIFTI runs only


def test_gifti_group_level(gifti_dataset, tmp_path):
    """Participant and group level of the GIFTI runs through the CLI, with reports: the
    group mean is the Fisher-z mean of the three participants' matrices."""
    root, config = gifti_dataset
    out = tmp_path / "out"
    args = [str(root), str(out), "--config", str(config), "--atlas-cache", str(tmp_path / "c")]
    assert main(args[:2] + ["participant"] + args[2:]) == 0
    assert main(args[:2] + ["group"] + args[2:]) == 0
    key = "task-rest_space-fsaverage5_atlas-Parcels_meas-correlation_desc-simple"
    mean = read_tsv(out / "group" / f"{key}_relmat.tsv")
    assert list(mean.columns) == [f"{h}_P{i + 1}" for h in "LR" for i in range(K)]
    side = json.loads((out / "group" / f"{key}_relmat.json").read_text())
    assert side["NumberOfParticipants"] == len(GIFTI_SUBJECTS)
    runs = [
        read_tsv(out / f"sub-{s}" / "func" / f"sub-{s}_{key}_relmat.tsv").to_numpy()
        for s in GIFTI_SUBJECTS
    ]
    off = ~np.eye(2 * K, dtype=bool)
    expected = np.tanh(np.mean([np.arctanh(m[off]) for m in runs], axis=0))
    np.testing.assert_allclose(mean.to_numpy()[off], expected, atol=1e-5)
    assert mean.to_numpy()[0, 2] > 0.5  # the shared network, in the group mean too
    qc = read_tsv(out / "group" / "task-rest_space-fsaverage5_desc-simple_qc.tsv")
    assert len(qc) == len(GIFTI_SUBJECTS)
    assert not any("hemi" in p.name for p in out.rglob("*") if p.is_file())
    assert (out / "group" / "report.html").is_file()
    for sub in GIFTI_SUBJECTS:
        page = (out / f"sub-{sub}.html").read_text()
        assert "_carpet.png" in page and "_relmat.png" in page


def test_gifti_lone_hemisphere_fails_naming_the_file(gifti_dataset, tmp_path, capsys):
    """A hemi-L file without its hemi-R partner is not a run: the run fails with a message
    naming the file (single hemispheres are not supported, see docs/surfaces.md)."""
    root, config = gifti_dataset
    lone = tmp_path / "fmriprep"
    shutil.copytree(root / "sub-01", lone / "sub-01")
    shutil.copy(root / "dataset_description.json", lone)
    next(lone.glob("sub-01/func/*_hemi-R_*.func.gii")).unlink()
    (left,) = lone.resolve().glob("sub-01/func/*_hemi-L_*.func.gii")
    out = tmp_path / "out"
    code = main([str(lone), str(out), "participant", "--config", str(config), "--no-reports"])
    assert code == 65
    assert f"{left}: no hemi-R file to pair with it" in capsys.readouterr().err
    assert not list(out.rglob("*_timeseries.tsv"))

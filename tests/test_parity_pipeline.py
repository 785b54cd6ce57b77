"""The CLI's outputs equal the equivalent nilearn 0.14.1 script (the reference) on a demo run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo
from bids_app.write import read_tsv

pytestmark = pytest.mark.slow
nilearn = pytest.importorskip(
    "nilearn", reason="nilearn (test extra) is the reference implementation"
)


@pytest.fixture(scope="module")
def run_pair(tmp_path_factory):
    dest = tmp_path_factory.mktemp("parity")
    config = build_demo(dest, DemoSpec(n_subjects=1, n_sessions=1, n_runs=1, n_volumes=60, seed=11))
    data = yaml.safe_load(config.read_text())
    data["atlases"] = data["atlases"][:3]  # labels, maps, spheres
    data["connectivity"]["measures"] = ["correlation", "partialcorrelation", "covariance"]
    config.write_text(yaml.safe_dump(data))
    out = dest / "out"
    assert main([str(dest / "fmriprep"), str(out), "participant", "--config", str(config)]) == 0
    func = dest / "fmriprep" / "sub-01" / "func"
    bold = next(func.glob("*_desc-preproc_bold.nii.gz"))
    mask = next(func.glob("*_desc-brain_mask.nii.gz"))
    return dest, out, bold, mask


def ours(out, atlas, suffix="timeseries", meas=None):
    meas_part = f"_meas-{meas}" if meas else ""
    name = f"sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_atlas-{atlas}{meas_part}_desc-simple_{suffix}.tsv"
    return read_tsv(out / "sub-01" / "func" / name)


def test_signals_and_matrices_match_nilearn(run_pair):
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiLabelsMasker, NiftiMapsMasker, NiftiSpheresMasker

    dest, out, bold, mask = run_pair
    confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
    common = dict(
        mask_img=str(mask), detrend=True, standardize="zscore_sample", high_pass=0.01, t_r=2.0
    )
    seeds = pd.read_csv(dest / "atlas" / "demo_seeds.tsv", sep="\t")
    maskers = {
        "DemoGrid": NiftiLabelsMasker(str(dest / "atlas" / "atlas-DemoGrid_dseg.nii.gz"), **common),
        "DemoMaps": NiftiMapsMasker(str(dest / "atlas" / "demo_maps.nii.gz"), **common),
        "DemoSeeds": NiftiSpheresMasker(
            seeds[["x", "y", "z"]].to_numpy().tolist(), radius=6, allow_overlap=True, **common
        ),
    }
    # nilearn keeps float32 data in float32; we reduce in float64. Give it a float64 copy so the
    # comparison measures the methods, not float32 rounding (which reaches ~2e-5 here).
    import nibabel as nib

    img = nib.load(bold)
    bold64 = nib.Nifti1Image(img.get_fdata(dtype=np.float64), img.affine, img.header)
    bold64.set_data_dtype(np.float64)
    for atlas, masker in maskers.items():
        ref = masker.fit_transform(bold64, confounds=confounds, sample_mask=sample_mask)
        got = ours(out, atlas).to_numpy()
        assert got.shape == ref.shape, atlas
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=atlas)
        for kind, meas in (
            ("correlation", "correlation"),
            ("partial correlation", "partialcorrelation"),
            ("covariance", "covariance"),
        ):
            ref_m = ConnectivityMeasure(kind=kind).fit_transform([ref])[0]
            got_m = ours(out, atlas, "relmat", meas).to_numpy()
            np.testing.assert_allclose(got_m, ref_m, atol=1e-5, err_msg=f"{atlas} {kind}")

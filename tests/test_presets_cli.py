"""Every shipped preset and every measure x estimator, through the CLI, on the demo dataset.

The time-series sidecars must tell exactly what was removed: the confound columns, the
non-steady-state and scrubbed volumes and the kept volumes, checked against nilearn's
``load_confounds_strategy`` (the reference) on the same fMRIPrep-style confounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bids_app.cli import main
from bids_app.config import list_presets, packaged_config
from bids_app.demo import DemoSpec, build_demo
from bids_app.naming import measure_label
from bids_app.presets import OVERRIDES
from bids_app.write import read_tsv

pytestmark = pytest.mark.slow
nilearn = pytest.importorskip(
    "nilearn", reason="nilearn (test extra) is the reference implementation"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("presets")
    config = build_demo(dest, DemoSpec(n_subjects=3, n_sessions=1, n_runs=1, n_volumes=80, seed=5))
    return dest, yaml.safe_load(config.read_text())


def _with_demo_atlas(preset: dict, demo_cfg: dict) -> dict:
    data = dict(preset)
    data["atlases"] = [
        demo_cfg["atlases"][0]
    ]  # the demo's labels atlas (absolute-free paths below)
    return data


@pytest.mark.parametrize("preset", list_presets())
def test_each_preset_writes_sidecars_that_say_what_was_removed(preset, demo, tmp_path):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    dest, demo_cfg = demo
    data = yaml.safe_load(packaged_config(preset).read_text())
    data = _with_demo_atlas(data, demo_cfg)
    cfg = dest / f"{preset}.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert (
        main(
            [str(dest / "fmriprep"), str(out), "participant", "--no-reports", "--config", str(cfg)]
        )
        == 0
    )

    den = data["denoise"]
    atlas = data["atlases"][0]["name"]
    kwargs = {k: den[k] for k in OVERRIDES if den.get(k) is not None}
    bolds = sorted((dest / "fmriprep").rglob("*_desc-preproc_bold.nii.gz"))
    assert len(bolds) == 3
    excluded = 0
    for bold in bolds:
        ref_conf, ref_mask = load_confounds_strategy(
            str(bold), denoise_strategy=den["strategy"], **kwargs
        )
        stem = bold.name.replace("_desc-preproc_bold.nii.gz", "")
        func = out / bold.relative_to(dest / "fmriprep").parent
        n_total = len(ref_conf)
        kept = list(range(n_total)) if ref_mask is None else [int(i) for i in ref_mask]
        qc = json.loads((func / f"{stem}_desc-{den['name']}_qc.json").read_text())
        assert qc["VolumesKept"] == len(kept)
        assert qc["VolumesTotal"] == n_total
        if qc["Excluded"]:  # too few volumes left: recorded, no time series
            assert len(kept) < len(qc["ConfoundRegressors"]) + 10
            assert "volumes" in qc["ExclusionReason"]
            assert not list(func.glob(f"{stem}_atlas-*_timeseries.tsv"))
            excluded += 1
            continue
        side = json.loads(
            (func / f"{stem}_atlas-{atlas}_desc-{den['name']}_timeseries.json").read_text()
        )
        ts = read_tsv(func / f"{stem}_atlas-{atlas}_desc-{den['name']}_timeseries.tsv")
        assert sorted(side["ConfoundRegressors"]) == sorted(ref_conf.columns)
        assert side["SampleMask"] == kept
        assert len(ts) == len(kept)
        removed = set(side["NonSteadyStateVolumes"]) | set(side["ScrubbedVolumes"])
        assert sorted(removed) == sorted(set(range(n_total)) - set(kept))
        assert side["NonSteadyStateVolumes"] == [0, 1]  # the demo marks two volumes
        if den["strategy"] == "scrubbing":
            fd = read_tsv(
                next(bold.parent.glob(f"{stem.split('_space-')[0]}_desc-confounds_timeseries.tsv"))
            )["framewise_displacement"]
            high = set(np.flatnonzero(fd.to_numpy() > den["fd_threshold"]).tolist()) - {0, 1}
            assert high <= set(side["ScrubbedVolumes"])
        assert side["MeanFramewiseDisplacement"] > 0
        assert side["SamplingFrequency"] == pytest.approx(0.5)
    assert excluded < len(bolds)


def test_every_measure_and_estimator_from_the_cli(demo, tmp_path):
    dest, demo_cfg = demo
    seeds = read_tsv(dest / "atlas" / "demo_seeds.tsv").iloc[:12]
    seeds.to_csv(dest / "seeds12.tsv", sep="\t", index=False)
    data = {
        "denoise": {"name": "simple", "strategy": "simple"},
        "atlases": [
            {"name": "Seeds", "kind": "spheres", "coordinates": "seeds12.tsv", "radius": 6}
        ],
        "connectivity": {
            "measures": [
                "correlation",
                "partial correlation",
                "covariance",
                "precision",
                "tangent",
            ],
            "estimator": ["ledoit_wolf", "empirical", "graphical_lasso"],
        },
    }
    cfg = dest / "all-measures.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    bids = str(dest / "fmriprep")
    assert main([bids, str(out), "participant", "--no-reports", "--config", str(cfg)]) == 0
    assert main([bids, str(out), "group", "--no-reports", "--config", str(cfg)]) == 0
    atlas = data["atlases"][0]["name"]
    n_regions = len(read_tsv(out / f"atlas-{atlas}_dseg.tsv"))
    for est in data["connectivity"]["estimator"]:
        for meas in ("correlation", "partialcorrelation", "covariance", "precision"):
            label = measure_label(meas, est, True)
            files = sorted(
                out.glob(f"sub-*/func/*_atlas-{atlas}_meas-{label}_desc-simple_relmat.tsv")
            )
            assert len(files) == 3, label
            m = read_tsv(files[0]).to_numpy()
            assert m.shape == (n_regions, n_regions)
            np.testing.assert_allclose(m, m.T, atol=1e-10)
            side = json.loads(files[0].with_suffix(".json").read_text())
            assert (
                side["CovarianceEstimator"].split()[0]
                == {
                    "ledoit_wolf": "LedoitWolf",
                    "empirical": "EmpiricalCovariance",
                    "graphical_lasso": "GraphicalLassoCV",
                }[est]
            )
            if meas == "correlation":
                np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-10)
        tangent = measure_label("tangent", est, True)
        group = list((out / "group").glob(f"*_atlas-{atlas}_meas-{tangent}_desc-simple_relmat.tsv"))
        assert len(group) == 1, tangent
        assert read_tsv(group[0]).shape == (n_regions, n_regions)

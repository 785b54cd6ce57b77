"""End to end through the CLI on the synthetic multi-subject, multi-session demo dataset."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo
from bids_app.write import read_tsv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    dest = tmp_path_factory.mktemp("demo")
    config = build_demo(dest, DemoSpec(n_subjects=3, n_sessions=2, n_runs=1, n_volumes=60))
    return dest / "fmriprep", config


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's hash; ``logs/`` (one timestamped log per invocation) left out."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "logs"
    }


@pytest.fixture(scope="module")
def outputs(demo, tmp_path_factory) -> Path:
    bids, config = demo
    out = tmp_path_factory.mktemp("out") / "derivatives"  # same depth as tmp_path / "again"
    before = tree_digest(bids)
    assert main([str(bids), str(out), "participant", "--no-reports", "--config", str(config)]) == 0
    assert main([str(bids), str(out), "group", "--no-reports", "--config", str(config)]) == 0
    assert tree_digest(bids) == before, "nothing may be written into BIDS_DIR"
    return out


def test_dataset_description(outputs, demo):
    desc = json.loads((outputs / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    gen = desc["GeneratedBy"][0]
    assert (
        gen["Name"] == "bids-connectome"
        and gen["Version"]
        and gen["CodeURL"].startswith("https://")
    )
    assert desc["SourceDatasets"][0]["Name"].startswith("bids-connectome synthetic demo")
    link = desc["DatasetLinks"]["fmriprep"]
    assert (outputs / link).resolve() == demo[0].resolve()  # bids:fmriprep: URIs resolve
    record = json.loads((outputs / "code/bids-connectome/desc-simple_config.json").read_text())
    assert (
        record["ConfigurationHash"].startswith("sha256:") and len(record["ConfigurationHash"]) == 71
    )
    assert record["Configuration"]["denoise"]["name"] == "simple"
    side = next(outputs.rglob("*_timeseries.json"))
    assert json.loads(side.read_text())["ConfigurationHash"] == record["ConfigurationHash"]


def test_participant_files_names_headers_symmetry(outputs):
    lut = read_tsv(outputs / "atlas-DemoGrid_dseg.tsv")
    seeds = read_tsv(outputs / "atlas-DemoSeeds_dseg.tsv")
    assert {"index", "name", "x", "y", "z", "radius"} <= set(seeds.columns)
    for sub in ("01", "02", "03"):
        for ses in ("1", "2"):
            func = outputs / f"sub-{sub}" / f"ses-{ses}" / "func"
            stem = f"sub-{sub}_ses-{ses}_task-rest_space-MNI152NLin2009cAsym_res-2"
            ts_path = func / f"{stem}_atlas-DemoGrid_desc-simple_timeseries.tsv"
            ts = read_tsv(ts_path)
            assert list(ts.columns) == list(lut["name"])  # region names, ascending label value
            side = json.loads(ts_path.with_suffix(".json").read_text())
            assert side["SamplingFrequency"] == pytest.approx(0.5)
            assert len(ts) == len(side["SampleMask"]) == 58  # 2 non-steady-state volumes removed
            assert side["NonSteadyStateVolumes"] == [0, 1]
            assert any(c.startswith("trans_x") for c in side["ConfoundRegressors"])
            np.testing.assert_allclose(ts.mean(), 0, atol=1e-7)  # zscore_sample
            np.testing.assert_allclose(ts.std(ddof=1), 1, atol=1e-6)
            for meas in ("correlation", "partialcorrelation"):
                rel_path = func / f"{stem}_atlas-DemoGrid_meas-{meas}_desc-simple_relmat.tsv"
                rel = read_tsv(rel_path)
                assert list(rel.columns) == list(lut["name"])
                m = rel.to_numpy()
                assert m.shape == (len(lut), len(lut))
                np.testing.assert_allclose(m, m.T, atol=1e-12)
                np.testing.assert_allclose(np.diag(m), 1.0)
                meta = json.loads(rel_path.with_suffix(".json").read_text())
                for key in (
                    "RelationshipMeasure",
                    "Directed",
                    "ValidDiagonal",
                    "Weighted",
                    "Software",
                    "CovarianceEstimator",
                ):
                    assert key in meta
                assert meta["RelationshipMeasure"] == meas and meta["Directed"] is False
            assert (
                func / f"{stem}_atlas-DemoSeeds_meas-correlation_desc-simple_relmat.tsv"
            ).is_file()
            for atlas in ("DemoMaps", "DemoTmap"):
                rel = read_tsv(
                    func / f"{stem}_atlas-{atlas}_meas-correlation_desc-simple_relmat.tsv"
                )
                assert rel.shape[0] == rel.shape[1] >= 3
            qc = json.loads((func / f"{stem}_desc-simple_qc.json").read_text())
            assert qc["VolumesTotal"] == 60 and qc["Excluded"] is False


def test_group_mean_recovers_networks(outputs):
    group = outputs / "group"
    mean = read_tsv(
        group
        / "task-rest_space-MNI152NLin2009cAsym_res-2_atlas-DemoGrid_meas-correlation_desc-simple_relmat.tsv"
    )
    lut = read_tsv(outputs / "atlas-DemoGrid_dseg.tsv")
    net = ((lut["index"].to_numpy() - 1) % 4)[:, None]
    same = (net == net.T) & ~np.eye(len(net), dtype=bool)
    diff = net != net.T
    m = mean.to_numpy()
    assert m[same].mean() > 0.3
    assert abs(m[diff].mean()) < 0.1
    assert m[same].mean() - m[diff].mean() > 0.3


def test_rerun_and_parallel_are_byte_identical(outputs, demo, tmp_path):
    bids, config = demo
    again = tmp_path / "again"
    assert (
        main(
            [str(bids), str(again), "participant", "--no-reports", "--config", str(config)]
            + ["--n-jobs", "2"]
        )
        == 0
    )
    assert main([str(bids), str(again), "group", "--no-reports", "--config", str(config)]) == 0
    assert tree_digest(again) == tree_digest(outputs)


def test_bad_run_fails_clearly_others_go_on(demo, tmp_path, capsys):
    bids, config = demo
    broken = tmp_path / "broken"
    shutil.copytree(bids, broken)
    bold = next(broken.glob("sub-02/ses-1/func/*_desc-preproc_bold.nii.gz"))
    raw = gzip.decompress(bold.read_bytes())
    bold.write_bytes(gzip.compress(raw[: len(raw) // 3]))  # truncated data
    out = tmp_path / "out"
    code = main(
        [
            str(broken),
            str(out),
            "participant",
            "--no-reports",
            "--config",
            str(config),
            "--participant-label",
            "02",
        ]
    )
    err = capsys.readouterr().err
    assert code == 65
    assert bold.name in err
    assert not (out / "sub-02" / "ses-1").exists(), "no partial output for the failed run"
    assert list((out / "sub-02" / "ses-2" / "func").glob("*_relmat.tsv"))
    assert not list(out.rglob("*.tmp"))


def test_aggregate_session_and_subject(tmp_path):
    config = build_demo(
        tmp_path / "d", DemoSpec(n_subjects=1, n_sessions=2, n_runs=2, n_volumes=40, seed=3)
    )
    bids = tmp_path / "d" / "fmriprep"
    for level in ("session", "subject"):
        data = yaml.safe_load(config.read_text())
        data["connectivity"]["aggregate"] = level
        data["connectivity"]["measures"] = ["correlation"]
        data["atlases"] = data["atlases"][:1]
        cfg = tmp_path / "d" / f"{level}.yaml"  # beside demo.yaml: relative atlas paths hold
        cfg.write_text(yaml.safe_dump(data))
        out = tmp_path / f"out-{level}"
        assert main([str(bids), str(out), "participant", "--no-reports", "--config", str(cfg)]) == 0
        rel = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_relmat.tsv"))
        ts = sorted(out.rglob("*_timeseries.tsv"))
        assert len(ts) == 4  # time series stay per run
        if level == "session":
            assert rel == [
                f"sub-01/ses-{s}/func/sub-01_ses-{s}_task-rest_space-MNI152NLin2009cAsym_res-2_atlas-DemoGrid_meas-correlation_desc-simple_relmat.tsv"
                for s in ("1", "2")
            ]
        else:
            assert rel == [
                "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_atlas-DemoGrid_meas-correlation_desc-simple_relmat.tsv"
            ]
        meta = json.loads((out / rel[0]).with_suffix(".json").read_text())
        assert meta["Aggregate"] == level
        runs = meta["Runs"]
        assert len(runs) == (2 if level == "session" else 4)
        assert meta["VolumesUsed"] == sum(r["volumes"] for r in runs) == 38 * len(runs)
        assert all(r["timeseries"].startswith("bids::sub-01/") for r in runs)
        frames = [read_tsv(out / r["timeseries"].removeprefix("bids::")) for r in runs]
        stacked = pd.concat(frames).to_numpy()
        matrix = read_tsv(out / rel[0]).to_numpy()
        assert np.corrcoef(stacked.T)[0, 1] == pytest.approx(matrix[0, 1], abs=0.05)


def test_fully_censored_run_fails_clearly_excluded_run_is_recorded(tmp_path, capsys):
    config = build_demo(
        tmp_path / "d", DemoSpec(n_subjects=3, n_sessions=1, n_runs=1, n_volumes=60, seed=2)
    )
    bids = tmp_path / "d" / "fmriprep"
    # sub-02: every volume moves too much; sub-03: only 20 volumes stay below the threshold
    for sub, fd in (("02", np.full(60, 0.9)), ("03", np.r_[np.full(40, 0.9), np.full(20, 0.1)])):
        path = next(bids.glob(f"sub-{sub}/func/*_desc-confounds_timeseries.tsv"))
        table = read_tsv(path)
        table["framewise_displacement"] = fd
        table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    data = yaml.safe_load(config.read_text())
    data["denoise"] = {
        "name": "scrub",
        "strategy": "scrubbing",
        "fd_threshold": 0.5,
        "std_dvars_threshold": 100.0,  # FD alone decides here
    }
    data["atlases"] = data["atlases"][:1]
    cfg = tmp_path / "d" / "scrub.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--no-reports", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "every volume is censored" in err and "sub-02_task-rest_desc-confounds" in err
    stem = "task-rest_space-MNI152NLin2009cAsym_res-2"
    assert list((out / "sub-01" / "func").glob("*_timeseries.tsv")), "the other runs go on"
    for sub, kept in (("02", 0), ("03", 20)):
        qc = json.loads(
            (out / f"sub-{sub}" / "func" / f"sub-{sub}_{stem}_desc-scrub_qc.json").read_text()
        )
        assert qc["Excluded"] is True and qc["VolumesKept"] == kept
        assert qc["VolumesCensored"] == 60 - kept - 2  # two non-steady-state volumes
        assert not list((out / f"sub-{sub}" / "func").glob("*_timeseries.tsv"))
    assert (
        "volumes"
        in json.loads((out / "sub-03" / "func" / f"sub-03_{stem}_desc-scrub_qc.json").read_text())[
            "ExclusionReason"
        ]
    )
    assert main([str(bids), str(out), "group", "--no-reports", "--config", str(cfg)]) == 0
    qc_table = read_tsv(out / "group" / "task-rest_space-MNI152NLin2009cAsym_desc-scrub_qc.tsv")
    assert qc_table["excluded"].tolist() == [False, True, True]

"""Group level on synthetic participant outputs with a known network structure and motion."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app import connect, naming
from bids_app.config import parse_config
from bids_app.errors import NoInputError, NothingSelectedError
from bids_app.group import run_group
from bids_app.naming import measure_label
from bids_app.write import read_tsv, write_json, write_tsv

SPACE = "MNI152NLin2009cAsym"
N_NETWORKS, PER_NETWORK = 3, 4
N_REGIONS = N_NETWORKS * PER_NETWORK
NETWORK = np.arange(N_REGIONS) // PER_NETWORK
REGIONS = [f"Net{k // PER_NETWORK + 1}_{k % PER_NETWORK + 1}" for k in range(N_REGIONS)]


@dataclass(frozen=True)
class Spec:
    n_subjects: int = 10
    sessions: tuple[str, ...] = ("1", "2")
    runs: tuple[str | None, ...] = ("1", "2")
    n_volumes: int = 80
    artifact: float = 1.5  # amplitude of the motion artifact per mm of mean FD
    measures: tuple[str, ...] = ("correlation", "partialcorrelation")
    estimators: tuple[str, ...] = ("ledoit_wolf",)
    aggregate: str = "run"
    seed: int = 0


def make_config(spec: Spec, tangent: bool = True, desc: str = "simple"):
    measures = list(spec.measures) + (["tangent"] if tangent else [])
    return parse_config(
        {
            "space": SPACE,
            "denoise": {"name": desc},
            "atlases": [{"name": "Nets", "kind": "labels", "image": "atlas.nii.gz"}],
            "connectivity": {
                "measures": measures,
                "estimator": list(spec.estimators),
                "aggregate": spec.aggregate,
            },
        },
        Path("/"),
    )


def coordinates() -> np.ndarray:
    """Regions of a network close together (centres 60 mm apart, members within ~15 mm)."""
    centres = np.array([[-40.0, -20.0, 10.0], [20.0, 30.0, 20.0], [30.0, -50.0, 30.0]])
    offsets = np.array([[0, 0, 0], [12, 0, 0], [0, 12, 0], [0, 0, 12]], dtype=float)
    return np.vstack([c + offsets for c in centres])


def series(rng, n_volumes: int, fd: float, artifact: float) -> np.ndarray:
    """Cleaned-looking signals: 3 latent networks + noise + a global motion artifact ~ FD."""
    latent = rng.standard_normal((n_volumes, N_NETWORKS))
    x = latent[:, NETWORK] + 1.0 * rng.standard_normal((n_volumes, N_REGIONS))
    x += artifact * fd * rng.standard_normal((n_volumes, 1))
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    return x


RECORDED = {"atlases": [{"name": "Nets", "image": "sha256:" + "ab" * 32}]}  # no atlas file


def configuration_hash(config) -> str:
    return "sha256:" + config.digest(participant_only=True, recorded=RECORDED)


def build_outputs(out: Path, spec: Spec) -> dict[str, float]:
    """Participant outputs exactly as the participant level names and writes them."""
    rng = np.random.default_rng(spec.seed)
    config = make_config(spec)
    desc = config.denoise.name
    chash = configuration_hash(config)
    write_json(
        naming.config_path(out, desc),
        naming.configuration_record(config.canonical(recorded=RECORDED), chash, {}),
    )
    lut = pd.DataFrame({"index": np.arange(1, N_REGIONS + 1), "name": REGIONS})
    lut[["x", "y", "z"]] = coordinates()
    write_tsv(naming.atlas_lut_path(out, "Nets"), lut)
    fds = {}
    several = len(spec.estimators) > 1
    for s in range(spec.n_subjects):
        sub = f"{s + 1:02d}"
        fd = float(rng.uniform(0.05, 0.6))
        fds[sub] = fd
        blocks: dict[tuple, list] = {}
        for ses in spec.sessions:
            for run in spec.runs:
                ents = {"sub": sub, "ses": ses, "task": "rest", "run": run, "space": SPACE}
                ents = {k: v for k, v in ents.items() if v is not None}
                run_fd = fd * float(rng.uniform(0.8, 1.2))
                excluded = sub == "03" and ses == spec.sessions[-1] and run == spec.runs[-1]
                censored = int(rng.integers(0, 6))
                qc = {
                    "VolumesTotal": spec.n_volumes + 2 + censored,
                    "VolumesKept": 0 if excluded else spec.n_volumes,
                    "VolumesCensored": censored,
                    "NonSteadyStateVolumes": 2,
                    "MeanFramewiseDisplacement": run_fd,
                    "Excluded": excluded,
                    "ExclusionReason": "too few volumes left" if excluded else None,
                    "Task": "rest",
                    "ConfigurationHash": chash,
                }
                write_json(naming.participant_path(out, ents, "qc", ".json", desc=desc), qc)
                if excluded:
                    continue
                ts = series(rng, spec.n_volumes, run_fd, spec.artifact)
                missing = []
                if sub == "05" and ses == spec.sessions[0]:
                    ts[:, 7] = np.nan  # region n/a in this session (e.g. outside the FOV)
                    missing = [REGIONS[7]]
                ts_path = naming.participant_path(
                    out, ents, "timeseries", ".tsv", atlas="Nets", desc=desc
                )
                write_tsv(ts_path, pd.DataFrame(ts, columns=REGIONS))
                write_json(
                    ts_path.with_suffix(".json"),
                    {"Columns": REGIONS, "MissingRegions": missing, "ConfigurationHash": chash},
                )
                unit = {
                    "run": ents,
                    "session": {k: v for k, v in ents.items() if k != "run"},
                    "subject": {k: v for k, v in ents.items() if k not in ("run", "ses")},
                }[spec.aggregate]
                blocks.setdefault(tuple(unit.items()), []).append((ts, ts_path, ts.shape[0]))
        for unit, items in blocks.items():
            ts = np.vstack([t for t, _, _ in items])
            extra = {"VolumesUsed": int(ts.shape[0])}
            if spec.aggregate != "run":
                extra["Runs"] = [
                    {"timeseries": p.relative_to(out).as_posix(), "volumes": v} for _, p, v in items
                ]
            for measure in spec.measures:
                for est in spec.estimators:
                    label = measure_label(measure, est, several)
                    path = naming.participant_path(
                        out, dict(unit), "relmat", ".tsv", atlas="Nets", meas=label, desc=desc
                    )
                    matrix = connect.connectivity_matrix(ts, measure, est)
                    write_tsv(path, pd.DataFrame(matrix, columns=REGIONS))
                    write_json(
                        path.with_suffix(".json"),
                        {
                            "RelationshipMeasure": measure,
                            "CovarianceEstimator": est,
                            "ConfigurationHash": chash,
                            **extra,
                        },
                    )
    return fds


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


STEM = f"task-rest_space-{SPACE}_atlas-Nets"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "derivatives"
    spec = Spec()
    fds = build_outputs(out, spec)
    written = run_group(out, make_config(spec)).written
    return out, spec, fds, written


def test_group_mean_recovers_networks(dataset):
    out, _, _, written = dataset
    path = out / "group" / f"{STEM}_meas-correlation_desc-simple_relmat.tsv"
    assert path in written
    mean = read_tsv(path)
    assert list(mean.columns) == REGIONS
    m = mean.to_numpy()
    same = (NETWORK[:, None] == NETWORK[None]) & ~np.eye(N_REGIONS, dtype=bool)
    diff = NETWORK[:, None] != NETWORK[None]
    assert m[same].mean() > 0.35
    assert abs(m[diff].mean()) < 0.15
    assert m[same].min() > m[diff].max()  # every within-network edge beats every between one
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["RelationshipMeasure"] == "correlation"
    assert meta["NumberOfParticipants"] == 10
    assert meta["NumberOfMatrices"] == 10 * 4 - 1  # one run excluded
    assert meta["RegionsMissing"] == {REGIONS[7]: 2}  # sub-05 ses-1, both runs
    partial = read_tsv(
        out / "group" / f"{STEM}_meas-partialcorrelation_desc-simple_relmat.tsv"
    ).to_numpy()
    assert partial[same].mean() > partial[diff].mean() + 0.1


def test_stacked_matrices_round_trip(dataset):
    out, _, _, _ = dataset
    stem = out / "group" / f"{STEM}_meas-correlation_desc-simple_relmats"
    stack = np.load(stem.with_suffix(".npy"))
    index = read_tsv(stem.with_suffix(".tsv"))
    side = json.loads(stem.with_suffix(".json").read_text())
    assert stack.shape == (39, N_REGIONS, N_REGIONS) == tuple(side["Shape"])
    assert side["Regions"] == REGIONS
    assert list(index.columns[:4]) == ["participant_id", "session_id", "run", "task"]
    assert len(index) == 39
    assert index["participant_id"].iloc[0] == "sub-01" and index["session_id"].iloc[0] == "ses-1"
    assert ((index["participant_id"] == "sub-03") & (index["session_id"] == "ses-2")).sum() == 1
    for i in (0, 17, 38):
        original = read_tsv(out / index["source"].iloc[i]).to_numpy()
        np.testing.assert_array_equal(stack[i], original)
        assert Path(index["source"].iloc[i]).name.startswith(
            f"{index['participant_id'].iloc[i]}_{index['session_id'].iloc[i]}_task-rest_"
            f"run-{index['run'].iloc[i]}_"
        )
    # the group mean is the participant-first Fisher mean of the stack
    subs = index["participant_id"].to_numpy()
    per_sub = np.stack([connect.fisher_mean(stack[subs == s]) for s in np.unique(subs)])
    mean = read_tsv(out / "group" / f"{STEM}_meas-correlation_desc-simple_relmat.tsv")
    np.testing.assert_allclose(mean.to_numpy(), connect.fisher_mean(per_sub), atol=1e-9)
    assert (index["mean_fd"] > 0).all()


def test_qc_table(dataset):
    out, _, fds, _ = dataset
    path = out / "group" / "task-rest_space-MNI152NLin2009cAsym_desc-simple_qc.tsv"
    qc = read_tsv(path)
    assert len(qc) == 40  # every run, the excluded one included
    assert list(qc.columns[:3]) == ["participant_id", "session_id", "run"]
    for col in ("volumes_kept", "volumes_censored", "mean_fd", "excluded", "exclusion_reason"):
        assert col in qc.columns
    excluded = qc[qc["excluded"]]
    assert excluded[["participant_id", "session_id", "run"]].values.tolist() == [
        ["sub-03", "ses-2", 2]
    ]
    assert excluded["exclusion_reason"].iloc[0] == "too few volumes left"
    assert qc["exclusion_reason"].isna().sum() == 39
    assert qc["participant_id"].tolist() == sorted(qc["participant_id"])
    per_sub = qc.groupby("participant_id")["mean_fd"].mean()
    truth = pd.Series({f"sub-{k}": v for k, v in fds.items()})
    assert np.corrcoef(per_sub.to_numpy(), truth[per_sub.index].to_numpy())[0, 1] > 0.95
    assert qc["excluded"].dtype == bool and (~qc["excluded"]).sum() == 39
    kept = qc[~qc["excluded"]]
    assert (kept["volumes_kept"] + kept["volumes_censored"] + 2 == kept["volumes_total"]).all()


def test_qcfc_detects_motion_artifact(dataset, tmp_path):
    out, _, _, _ = dataset
    clean_out = tmp_path / "clean"
    clean_spec = Spec(artifact=0.0)
    build_outputs(clean_out, clean_spec)
    run_group(clean_out, make_config(clean_spec, tangent=False))
    name = f"{STEM}_meas-correlation_desc-simple_qcfc"
    noisy = json.loads((out / "group" / f"{name}.json").read_text())["Summary"]
    clean = json.loads((clean_out / "group" / f"{name}.json").read_text())["Summary"]
    assert noisy["MedianAbsQCFC"] > clean["MedianAbsQCFC"] + 0.2
    assert noisy["PercentEdgesSignificant"] > clean["PercentEdgesSignificant"]
    assert noisy["MeanQCFC"] > 0.3  # motion inflates every correlation
    assert noisy["NumberOfSubjects"] == 10
    assert noisy["DistanceDependence"] is not None
    table = read_tsv(out / "group" / f"{name}.tsv")
    assert len(table) == N_REGIONS * (N_REGIONS - 1) // 2
    assert list(table.columns) == ["region1", "region2", "distance", "qcfc", "p", "n"]
    xyz = coordinates()
    d = np.linalg.norm(xyz[REGIONS.index(table["region1"][0])] - xyz[REGIONS.index("Net1_1")])
    assert table["distance"][0] == pytest.approx(d)
    assert ((table["p"] >= 0) & (table["p"] <= 1)).all()


def test_tangent_outputs(dataset):
    out, _, _, _ = dataset
    stem = out / "group" / f"{STEM}_meas-tangent_desc-simple"
    gmean = read_tsv(Path(f"{stem}_relmat.tsv"))
    stack = np.load(f"{stem}_relmats.npy")
    index = read_tsv(Path(f"{stem}_relmats.tsv"))
    assert stack.shape == (39, N_REGIONS, N_REGIONS) and len(index) == 39
    # region 7 is n/a for sub-05 in a session: left out for everybody
    assert np.isnan(stack[:, 7]).all() and np.isnan(gmean.to_numpy()[7]).all()
    keep = np.arange(N_REGIONS) != 7
    series = [read_tsv(out / s).to_numpy()[:, keep] for s in index["source"]]
    nilearn = pytest.importorskip("nilearn.connectome")
    cm = nilearn.ConnectivityMeasure(kind="tangent")
    ref = cm.fit_transform(series)
    np.testing.assert_allclose(gmean.to_numpy()[np.ix_(keep, keep)], cm.mean_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stack[5][np.ix_(keep, keep)], ref[5], rtol=1e-6, atol=1e-8)
    meta = json.loads(Path(f"{stem}_relmat.json").read_text())
    assert meta["RegionsLeftOut"] == [REGIONS[7]]
    assert (out / "group" / f"{STEM}_meas-tangent_desc-simple_qcfc.tsv").is_file()


def test_rerun_is_byte_identical(dataset, tmp_path):
    out, spec, _, written = dataset
    again = tmp_path / "again"
    build_outputs(again, spec)
    written_again = run_group(again, make_config(spec)).written
    assert [p.relative_to(again) for p in written_again] == [p.relative_to(out) for p in written]
    assert tree_digest(again / "group") == tree_digest(out / "group")
    assert written == sorted(written)


def test_subject_aggregate_and_several_estimators(tmp_path):
    spec = Spec(
        n_subjects=4,
        n_volumes=50,
        aggregate="subject",
        measures=("correlation",),
        estimators=("ledoit_wolf", "empirical"),
        seed=1,
    )
    out = tmp_path / "out"
    build_outputs(out, spec)
    lut = naming.atlas_lut_path(out, "Nets")
    write_tsv(lut, read_tsv(lut)[["index", "name"]])  # no coordinates: no distance dependence
    written = {p.name for p in run_group(out, make_config(spec)).written}
    for label in ("correlationLedoitwolf", "correlationEmpirical", "tangentEmpirical"):
        assert f"{STEM}_meas-{label}_desc-simple_relmat.tsv" in written
        assert f"{STEM}_meas-{label}_desc-simple_relmats.npy" in written
    index = read_tsv(out / "group" / f"{STEM}_meas-correlationEmpirical_desc-simple_relmats.tsv")
    assert len(index) == 4 and index["session_id"].isna().all() and index["run"].isna().all()
    assert (index["volumes"] == [200, 200, 150, 200]).all()  # sub-03 lost a run
    tangent = read_tsv(out / "group" / f"{STEM}_meas-tangentLedoitwolf_desc-simple_relmats.tsv")
    assert tangent["source"].str.count(";").tolist() == [3, 3, 2, 3]  # runs concatenated
    qcfc = out / "group" / f"{STEM}_meas-correlationEmpirical_desc-simple_qcfc"
    assert read_tsv(qcfc.with_suffix(".tsv"))["distance"].isna().all()
    summary = json.loads(qcfc.with_suffix(".json").read_text())["Summary"]
    assert summary["DistanceDependence"] is None and summary["MedianAbsQCFC"] > 0


def test_filters_and_missing_inputs(dataset, tmp_path):
    out, spec, _, _ = dataset
    with pytest.raises(NoInputError, match="run the participant level first"):
        run_group(tmp_path, make_config(spec))
    with pytest.raises(NoInputError, match="desc-other.*found desc: simple"):
        run_group(out, make_config(spec, desc="other"))
    with pytest.raises(NothingSelectedError, match="labels found: 01 02 03"):
        run_group(out, make_config(spec), participants=["42"])
    sub = tmp_path / "subset"
    build_outputs(sub, Spec(n_subjects=3, sessions=("1",), runs=(None,), seed=2))
    result = run_group(sub, make_config(spec, tangent=False), participants=["01", "02"])
    assert result.folder.parent == sub / "group" and result.folder.name.startswith("subset-")
    index = read_tsv(result.folder / f"{STEM}_meas-correlation_desc-simple_relmats.tsv")
    assert index["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert index["run"].isna().all()
    assert not (result.folder / f"{STEM}_meas-correlation_desc-simple_qcfc.tsv").exists()


def test_mismatched_regions_are_left_out_clearly(tmp_path, caplog):
    spec = Spec(n_subjects=3, sessions=("1",), runs=(None,))
    build_outputs(tmp_path, spec)
    bad = next(tmp_path.glob("sub-02/ses-1/func/*meas-correlation*_relmat.tsv"))
    frame = read_tsv(bad)
    write_tsv(bad, frame.rename(columns={REGIONS[0]: "Other"}))
    result = run_group(tmp_path, make_config(spec, tangent=False))
    assert "regions differ" in caplog.text and bad.name in caplog.text
    assert result.exit_code == 1
    assert result.left_out == [bad.relative_to(tmp_path).as_posix()]
    index = read_tsv(tmp_path / "group" / f"{STEM}_meas-correlation_desc-simple_relmats.tsv")
    assert index["participant_id"].tolist() == ["sub-01"]  # sub-03's only run is excluded

"""Confound reading and selection: nilearn 0.14.1 load_confounds(_strategy) parity and errors."""

from __future__ import annotations

import itertools
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app.config import DenoiseConfig
from bids_app.confounds import (
    LEGACY_NAMES,
    exclusion_reason,
    read_confounds,
    select_confounds,
)
from bids_app.errors import InputDataError
from bids_app.presets import effective_parameters, unused_overrides

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
BOLD = "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
AROMA_BOLD = "sub-01_task-rest_space-MNI152NLin6Asym_desc-smoothAROMAnonaggr_bold.nii.gz"
REAL = {
    "fmriprep1x": "nilearn_fmriprep/test_desc-confounds_regressors",
    "fmriprep1x_nojson": "nilearn_fmriprep/no_nonsteady_desc-confounds_regressors",
    "fmriprep21": "nilearn_fmriprep/test-v21_desc-confounds_timeseries",
    "fmriprep25": "abide_fmriprep25/sub-v1s0x0050642_ses-1_task-rest_run-1_desc-confounds_timeseries",
}
# Overrides each preset accepts, beyond global_signal (nilearn preset keys).
OVERRIDE_CASES = {
    "simple": [{}, {"motion": "basic"}, {"wm_csf": "power2", "demean": False}],
    "scrubbing": [{}, {"scrub": 0, "fd_threshold": 0.2}, {"std_dvars_threshold": 1.0, "scrub": 3}],
    "compcor": [
        {},
        {"compcor": "temporal_anat_separated", "n_compcor": 3},
        {"compcor": "anat_separated", "n_compcor": 2, "motion": "derivatives"},
        {"compcor": "temporal"},
    ],
    "ica_aroma": [{}, {"wm_csf": "full"}],
}


# --- synthetic fMRIPrep-like confounds -------------------------------------------------------
def synthetic_table(n: int = 80, seed: int = 0, n_nss: int = 2) -> tuple[pd.DataFrame, dict]:
    """A fMRIPrep >= 20.2 style table (all expansions, CompCor, cosines, AROMA) and its sidecar."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}

    def expand(base: str, x: np.ndarray) -> None:
        d = np.concatenate([[np.nan], np.diff(x)])
        cols[base] = x
        cols[f"{base}_derivative1"] = d
        cols[f"{base}_power2"] = x**2
        cols[f"{base}_derivative1_power2"] = d**2

    for name in MOTION:
        expand(name, np.cumsum(rng.normal(0, 0.05, n)))
    for name in ("csf", "white_matter", "global_signal"):
        expand(name, 500 + rng.normal(0, 5, n).cumsum())
    fd = np.abs(rng.normal(0.15, 0.1, n))
    spikes = [i for i in (20, 21, 50, 75) if i < n]
    fd[spikes] = [0.9, 0.7, 1.2, 0.8][: len(spikes)]
    fd[0] = np.nan
    dvars = np.abs(rng.normal(1.0, 0.2, n))
    dvars[min(33, n - 1)] = 2.5
    dvars[0] = np.nan
    cols["framewise_displacement"] = fd
    cols["std_dvars"] = dvars
    cols["dvars"] = dvars * 20
    meta: dict = {}
    for prefix, mask, count in (
        ("a", "combined", 6),
        ("w", "WM", 4),
        ("c", "CSF", 3),
        ("t", None, 5),
    ):
        for i in range(count):
            name = f"{prefix}_comp_cor_{i:02d}"
            cols[name] = rng.normal(0, 0.1, n)
            entry = {"Method": "tCompCor" if prefix == "t" else "aCompCor", "Retained": True}
            if mask:
                entry["Mask"] = mask
            meta[name] = entry
    for i in range(4):
        meta[f"dropped_{i}"] = {"Method": "aCompCor", "Mask": "combined", "Retained": False}
    k = np.arange(n) + 0.5
    for j in range(1, 4):
        cols[f"cosine{j - 1:02d}"] = np.sqrt(2 / n) * np.cos(np.pi / n * k * j)
    for i in range(n_nss):
        col = np.zeros(n)
        col[i] = 1
        cols[f"non_steady_state_outlier{i:02d}"] = col
    for i in (1, 4, 7):
        cols[f"aroma_motion_{i:02d}"] = rng.normal(0, 1, n)
    return pd.DataFrame(cols), meta


def write_fmriprep(folder: Path, table: pd.DataFrame, meta: dict | None, suffix: str) -> Path:
    """Write the table as fMRIPrep names beside (empty) BOLD file names; returns the TSV."""
    folder.mkdir(parents=True, exist_ok=True)
    tsv = folder / f"sub-01_task-rest_desc-confounds_{suffix}.tsv"
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    if meta is not None:
        tsv.with_suffix(".json").write_text(json.dumps(meta))
    (folder / BOLD).touch()
    (folder / AROMA_BOLD).touch()
    return tsv


def nilearn_strategy(folder: Path, strategy: str, **kwargs):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    bold = folder / (AROMA_BOLD if strategy == "ica_aroma" else BOLD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds_strategy(str(bold), denoise_strategy=strategy, **kwargs)


def ours(tsv: Path, strategy: str, **kwargs):
    js = tsv.with_suffix(".json")
    table, meta = read_confounds(tsv, js if js.is_file() else None)
    return select_confounds(
        table, meta, DenoiseConfig(strategy=strategy, **kwargs), len(table), str(tsv)
    )


def assert_same_as_nilearn(sel, ref_confounds, ref_mask) -> None:
    assert list(sel.confounds.columns) == list(ref_confounds.columns)
    a, b = sel.confounds.to_numpy(), ref_confounds.to_numpy(dtype=float)
    scale = np.nanmax(np.abs(b), axis=0, initial=1.0)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    if ref_mask is None:
        assert sel.sample_mask is None
    else:
        np.testing.assert_array_equal(sel.sample_mask, ref_mask)


def parity_cases():
    for strategy, overrides in OVERRIDE_CASES.items():
        for extra, gsr in itertools.product(overrides, (None, "basic", "full")):
            kwargs = dict(extra)
            if gsr:
                kwargs["global_signal"] = gsr
            yield strategy, kwargs


# --- synthetic parity (no shared data needed) ------------------------------------------------
@pytest.mark.parametrize("strategy,kwargs", list(parity_cases()))
def test_presets_match_nilearn_on_synthetic_confounds(tmp_path, strategy, kwargs):
    table, meta = synthetic_table()
    tsv = write_fmriprep(tmp_path, table, meta, "timeseries")
    ref_conf, ref_mask = nilearn_strategy(tmp_path, strategy, **kwargs)
    sel = ours(tsv, strategy, **kwargs)
    assert_same_as_nilearn(sel, ref_conf, ref_mask)
    assert sel.provenance["ConfoundRegressors"] == list(ref_conf.columns)


def test_ica_aroma_basic_matches_load_confounds(tmp_path):
    from nilearn.interfaces.fmriprep import load_confounds

    table, meta = synthetic_table()
    tsv = write_fmriprep(tmp_path, table, meta, "timeseries")
    ref_conf, ref_mask = load_confounds(
        str(tmp_path / BOLD), strategy=("high_pass", "wm_csf", "ica_aroma"), ica_aroma="basic"
    )
    sel = ours(tsv, "ica_aroma", ica_aroma="basic")
    assert_same_as_nilearn(sel, ref_conf, ref_mask)
    assert [c for c in sel.confounds.columns if "aroma" in c] == [
        "aroma_motion_01",
        "aroma_motion_04",
        "aroma_motion_07",
    ]


def test_scrub_rule_by_hand():
    n = 40
    table = pd.DataFrame({"framewise_displacement": np.full(n, 0.1), "std_dvars": np.full(n, 1.0)})
    table.loc[[3, 10, 12, 30], "framewise_displacement"] = 0.6
    table.loc[37, "std_dvars"] = 1.6
    table.loc[20, "framewise_displacement"] = 0.5  # equal to the threshold: kept (strict >)
    table.loc[21, "std_dvars"] = np.nan  # n/a is never an outlier
    table["trans_x"] = 0.0
    den = DenoiseConfig(strategy="scrubbing", motion="basic", wm_csf=None)
    table = table.assign(
        **{c: 0.0 for c in ("trans_y", "trans_z", "rot_x", "rot_y", "rot_z")},
        **{
            f"{b}{s}": 1.0
            for b in ("csf", "white_matter")
            for s in ("", "_derivative1", "_power2", "_derivative1_power2")
        },
    )
    sel = select_confounds(table, None, den, n, "conf.tsv")
    # head segment 0-2 (3 < 5), 11 (1 < 5) and tail 38-39 (2 < 5) are removed with the outliers;
    # 4-9 (6), 13-29 (17) and 31-36 (6) are kept.
    censored = [0, 1, 2, 3, 10, 11, 12, 30, 37, 38, 39]
    assert sel.provenance["ScrubbedVolumes"] == censored
    np.testing.assert_array_equal(sel.sample_mask, np.setdiff1d(np.arange(n), censored))
    sel0 = select_confounds(
        table, None, DenoiseConfig(strategy="scrubbing", motion="basic", scrub=0), n, "c.tsv"
    )
    assert sel0.provenance["ScrubbedVolumes"] == [3, 10, 12, 30, 37]
    sel_loose = select_confounds(
        table,
        None,
        DenoiseConfig(strategy="scrubbing", motion="basic", fd_threshold=0.45, scrub=0),
        n,
        "c.tsv",
    )
    assert sel_loose.provenance["ScrubbedVolumes"] == [3, 10, 12, 20, 30, 37]


def test_provenance_counts_and_demeaning():
    table, meta = synthetic_table(n=80, n_nss=3)
    sel = select_confounds(table, meta, DenoiseConfig(strategy="scrubbing"), 80, "c.tsv")
    prov = sel.provenance
    assert prov["NonSteadyStateVolumes"] == [0, 1, 2]
    scrubbed = prov["ScrubbedVolumes"]
    assert set(scrubbed).isdisjoint(prov["NonSteadyStateVolumes"])
    assert {20, 21, 33, 50, 75} <= set(scrubbed)
    assert len(sel.sample_mask) == 80 - 3 - len(scrubbed)
    fd = table["framewise_displacement"].to_numpy()
    assert prov["MeanFramewiseDisplacement"] == pytest.approx(np.nanmean(fd))
    assert prov["ConfoundStrategy"] == "scrubbing"
    assert prov["ConfoundParameters"]["fd_threshold"] == 0.5
    assert prov["ConfoundParameters"]["std_dvars_threshold"] == 1.5
    assert prov["ConfoundParameters"]["scrub"] == 5
    assert prov["ConfoundParameters"]["wm_csf"] == "full"
    json.dumps(prov)  # JSON-able
    # Demeaned over the kept volumes only; first row of derivatives filled from the second.
    values = sel.confounds.to_numpy()
    np.testing.assert_allclose(values[sel.sample_mask].mean(axis=0), 0, atol=1e-9)
    raw = table["trans_x_derivative1"].to_numpy()
    col = sel.confounds["trans_x_derivative1"].to_numpy()
    np.testing.assert_allclose(col[0] - col[1], 0, atol=1e-12)
    np.testing.assert_allclose(col[2:] - col[1], raw[2:] - raw[1], atol=1e-12)
    assert len(sel.confounds) == 80


def test_none_strategy_keeps_nonsteady_state_removal():
    table, meta = synthetic_table(n=50, n_nss=2)
    sel = select_confounds(table, meta, DenoiseConfig(strategy="none"), 50, "c.tsv")
    assert sel.confounds is None
    np.testing.assert_array_equal(sel.sample_mask, np.arange(2, 50))
    assert sel.provenance["ConfoundRegressors"] == []
    gsr = select_confounds(
        table, meta, DenoiseConfig(strategy="none", global_signal="basic"), 50, "c.tsv"
    )
    assert list(gsr.confounds.columns) == ["global_signal"]
    no_nss = select_confounds(
        synthetic_table(n=50, n_nss=0)[0], meta, DenoiseConfig(strategy="none"), 50, "c.tsv"
    )
    assert no_nss.sample_mask is None and no_nss.provenance["NonSteadyStateVolumes"] == []


def test_custom_columns_names_and_regex():
    table, meta = synthetic_table(n=50)
    den = DenoiseConfig(strategy="none", confounds=["csf", r"a_comp_cor_0[0-2]", "trans_.*"])
    sel = select_confounds(table, meta, den, 50, "c.tsv")
    expected = sorted(
        ["csf", "a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02"]
        + [c for c in table.columns if c.startswith("trans_")]
    )
    assert list(sel.confounds.columns) == expected
    # Added to a preset: deduplicated and sorted with the preset's columns.
    both = select_confounds(
        table, meta, DenoiseConfig(strategy="simple", confounds=["csf", "dvars"]), 50, "c.tsv"
    )
    assert "dvars" in both.confounds.columns
    assert list(both.confounds.columns).count("csf") == 1
    assert list(both.confounds.columns) == sorted(both.confounds.columns)
    with pytest.raises(InputDataError, match=r"c\.tsv: no confound column matches .*'respiration'"):
        select_confounds(
            table, meta, DenoiseConfig(strategy="none", confounds=["respiration"]), 50, "c.tsv"
        )
    # an invalid regular expression is a configuration error, found before any work
    with pytest.raises(ValueError, match="nor a valid regular expression"):
        DenoiseConfig(strategy="none", confounds=["(csf"])


# --- reading ----------------------------------------------------------------------------------
def test_read_modern_table_na_and_sidecar(tmp_path):
    table, meta = synthetic_table(n=30)
    tsv = write_fmriprep(tmp_path, table, meta, "timeseries")
    read, read_meta = read_confounds(tsv, tsv.with_suffix(".json"))
    assert list(read.columns) == list(table.columns)
    assert np.isnan(read["framewise_displacement"].iloc[0])
    assert read_meta == meta
    assert read.attrs["renamed"] == {}
    _, no_meta = read_confounds(tsv, None)
    assert no_meta is None


def legacy_table(n: int = 40, seed: int = 1) -> pd.DataFrame:
    """fMRIPrep 1.0/1.1 style (camel case, no expansions)."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.normal(0, 1, n) for name in LEGACY_NAMES}
    cols["FramewiseDisplacement"] = np.abs(cols["FramewiseDisplacement"]) * 0.2
    cols["FramewiseDisplacement"][0] = np.nan
    cols["stdDVARS"] = np.abs(cols["stdDVARS"])
    cols["stdDVARS"][0] = np.nan
    for i in range(3):
        cols[f"aCompCor{i:02d}"] = rng.normal(0, 1, n)
        cols[f"tCompCor{i:02d}"] = rng.normal(0, 1, n)
        cols[f"Cosine{i:02d}"] = rng.normal(0, 1, n)
    nss = np.zeros(n)
    nss[0] = 1
    cols["NonSteadyStateOutlier00"] = nss
    cols["AROMAAggrComp01"] = rng.normal(0, 1, n)
    return pd.DataFrame(cols)


def test_read_legacy_camel_case_names(tmp_path):
    tsv = tmp_path / "sub-01_task-rest_bold_confounds.tsv"
    legacy_table().to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    table, meta = read_confounds(tsv, None)
    assert meta is None
    for new in (
        "trans_x",
        "rot_z",
        "framewise_displacement",
        "std_dvars",
        "dvars",
        "white_matter",
        "csf",
        "global_signal",
        "a_comp_cor_00",
        "t_comp_cor_02",
        "cosine01",
        "non_steady_state_outlier00",
        "aroma_motion_01",
    ):
        assert new in table.columns, new
    assert table.attrs["renamed"]["RotX"] == "rot_x"
    den = DenoiseConfig(strategy="simple", motion="basic", global_signal="basic")
    sel = select_confounds(table, meta, den, 40, str(tsv))
    assert list(sel.confounds.columns) == sorted(
        MOTION + ["csf", "white_matter", "global_signal", "cosine00", "cosine01", "cosine02"]
    )
    np.testing.assert_array_equal(sel.sample_mask, np.arange(1, 40))
    assert sel.provenance["ConfoundColumnsRenamed"]["X"] == "trans_x"
    # No derivative expansions in 1.0/1.1: the default 'full' motion model fails clearly.
    with pytest.raises(InputDataError, match="trans_x_derivative1.*'basic'"):
        select_confounds(table, meta, DenoiseConfig(strategy="simple"), 40, str(tsv))
    with pytest.raises(InputDataError, match="JSON sidecar"):
        select_confounds(
            table, meta, DenoiseConfig(strategy="compcor", motion="basic"), 40, str(tsv)
        )


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00garbage\x00\x81", b"1.0\t2.0\n3.0\t4.0\n", None],
    ids=["empty", "binary", "no-header", "missing"],
)
def test_unreadable_table_names_the_file(tmp_path, content):
    tsv = tmp_path / "sub-01_desc-confounds_timeseries.tsv"
    if content is not None:
        tsv.write_bytes(content)
    with pytest.raises(InputDataError) as err:
        read_confounds(tsv, None)
    assert str(tsv) in str(err.value)


def test_bad_sidecar_names_the_file(tmp_path):
    table, _ = synthetic_table(n=10)
    tsv = write_fmriprep(tmp_path, table, None, "timeseries")
    js = tsv.with_suffix(".json")
    js.write_text("{not json")
    with pytest.raises(InputDataError, match=rf"{js.name}: cannot read the confounds sidecar"):
        read_confounds(tsv, js)


# --- errors -----------------------------------------------------------------------------------
def test_row_count_mismatch():
    table, meta = synthetic_table(n=30)
    with pytest.raises(InputDataError, match=r"conf\.tsv: 30 rows, but the BOLD series has 32"):
        select_confounds(table, meta, DenoiseConfig(), 32, "conf.tsv")


@pytest.mark.parametrize(
    "strategy,drop,column",
    [
        ("simple", "rot_y_power2", "rot_y_power2"),
        ("simple", "white_matter", "white_matter"),
        ("scrubbing", "std_dvars", "std_dvars"),
        ("compcor", "a_comp_cor_03", "a_comp_cor_03"),
        ("simple", "trans_x", "trans_x"),
    ],
)
def test_missing_column_names_file_and_column(strategy, drop, column):
    table, meta = synthetic_table(n=30)
    table = table.drop(columns=[drop])
    with pytest.raises(
        InputDataError, match=rf"conf\.tsv: missing confound column\(s\) .*{column}"
    ):
        select_confounds(table, meta, DenoiseConfig(strategy=strategy), 30, "conf.tsv")


def test_compcor_without_sidecar():
    table, _ = synthetic_table(n=30)
    with pytest.raises(
        InputDataError, match=r"sub-01_desc-confounds_timeseries\.tsv: compcor .*JSON sidecar"
    ):
        select_confounds(
            table,
            None,
            DenoiseConfig(strategy="compcor"),
            30,
            "sub-01_desc-confounds_timeseries.tsv",
        )


def test_nan_in_kept_volume_is_an_error():
    table, meta = synthetic_table(n=30)
    table.loc[10, "csf"] = np.nan
    with pytest.raises(InputDataError, match=r"c\.tsv: n/a .* csf \(volumes 10\)"):
        select_confounds(table, meta, DenoiseConfig(), 30, "c.tsv")
    table.loc[10, "csf"] = 1.0
    table.loc[1, "csf"] = np.nan  # a non-steady-state volume: censored, not an error
    select_confounds(table, meta, DenoiseConfig(), 30, "c.tsv")


@pytest.mark.parametrize(
    "strategy,key,value",
    [
        ("simple", "scrub", 3),
        ("simple", "compcor", "temporal"),
        ("compcor", "wm_csf", "basic"),
        ("ica_aroma", "motion", "full"),
        ("none", "fd_threshold", 0.3),
    ],
)
def test_override_not_used_by_preset_is_ignored_as_nilearn_does(strategy, key, value):
    den = DenoiseConfig(strategy=strategy, **{key: value})
    assert unused_overrides(den) == [key]
    params = effective_parameters(den)
    assert params == effective_parameters(DenoiseConfig(strategy=strategy))


def test_global_signal_applies_to_every_preset():
    for strategy in ("simple", "scrubbing", "compcor", "ica_aroma", "none"):
        params = effective_parameters(DenoiseConfig(strategy=strategy, global_signal="power2"))
        assert params["strategy"][-1] == "global_signal"
        assert params["global_signal"] == "power2"


def test_exclusion_reason():
    den = DenoiseConfig()
    assert exclusion_reason(100, 30, 2.0, den) is None
    assert exclusion_reason(40, 30, 2.0, den) is None  # 30 + min_dof 10
    reason = exclusion_reason(39, 30, 2.0, den)
    assert "39 volumes kept" in reason and "40 needed" in reason
    assert exclusion_reason(0, 30, 2.0, den).startswith("every volume is censored")
    assert "min_volumes 60" in exclusion_reason(50, 3, 2.0, DenoiseConfig(min_volumes=60))
    assert exclusion_reason(60, 3, 2.0, DenoiseConfig(min_volumes=60)) is None
    secs = exclusion_reason(100, 3, 2.0, DenoiseConfig(min_seconds=240))
    assert "200.0 s" in secs and "240" in secs
    band = DenoiseConfig(low_pass=0.08, high_pass=0.01, min_volumes=5)
    assert "Butterworth" in exclusion_reason(33, 3, 2.0, band)
    assert exclusion_reason(34, 3, 2.0, band) is None


# --- real fMRIPrep files (../shared/data/confounds) --------------------------------------------
def stage_real(shared_data: Path, key: str, dest: Path) -> Path:
    stem = shared_data / "confounds" / REAL[key]
    suffix = "regressors" if stem.name.endswith("regressors") else "timeseries"
    dest.mkdir(parents=True, exist_ok=True)
    for ext in ("tsv", "json"):
        src = Path(f"{stem}.{ext}")
        if src.is_file():
            shutil.copy(src, dest / f"sub-01_task-rest_desc-confounds_{suffix}.{ext}")
    (dest / BOLD).touch()
    (dest / AROMA_BOLD).touch()
    return dest / f"sub-01_task-rest_desc-confounds_{suffix}.tsv"


@pytest.mark.shared
@pytest.mark.parametrize("key", ["fmriprep1x", "fmriprep21", "fmriprep25"])
def test_presets_match_nilearn_on_real_files(shared_data, tmp_path, key):
    tsv = stage_real(shared_data, key, tmp_path)
    n_checked = 0
    for strategy, kwargs in parity_cases():
        try:
            ref_conf, ref_mask = nilearn_strategy(tmp_path, strategy, **kwargs)
        except (ValueError, KeyError):
            with pytest.raises(InputDataError):
                ours(tsv, strategy, **kwargs)
            continue
        sel = ours(tsv, strategy, **kwargs)
        if ref_mask is not None and ref_mask.size == 0:  # every volume censored
            assert sel.sample_mask.size == 0
            assert exclusion_reason(0, 10, 2.0, DenoiseConfig()).startswith("every volume")
            continue
        assert_same_as_nilearn(sel, ref_conf, ref_mask)
        n_checked += 1
    assert n_checked >= 27  # fMRIPrep 21: scrubbing censors every volume of this 30-volume run


@pytest.mark.shared
def test_real_compcor_without_sidecar_fails_like_nilearn(shared_data, tmp_path):
    tsv = stage_real(shared_data, "fmriprep1x_nojson", tmp_path)
    with pytest.raises(ValueError, match="json"):
        nilearn_strategy(tmp_path, "compcor")
    with pytest.raises(InputDataError, match="JSON sidecar"):
        ours(tsv, "compcor")
    ref_conf, ref_mask = nilearn_strategy(tmp_path, "simple")
    sel = ours(tsv, "simple")
    assert_same_as_nilearn(sel, ref_conf, ref_mask)
    assert sel.sample_mask is None  # this file has no non-steady-state column


@pytest.mark.shared
def test_real_scrubbing_provenance(shared_data, tmp_path):
    tsv = stage_real(shared_data, "fmriprep25", tmp_path)
    sel = ours(tsv, "scrubbing")
    table, _ = read_confounds(tsv, None)
    prov = sel.provenance
    assert len(sel.sample_mask) + len(prov["ScrubbedVolumes"]) + len(
        prov["NonSteadyStateVolumes"]
    ) == len(table)
    fd = table["framewise_displacement"].to_numpy()
    assert prov["MeanFramewiseDisplacement"] == pytest.approx(np.nanmean(fd))
    # Every volume above a threshold is scrubbed.
    above = np.flatnonzero((fd > 0.5) | (table["std_dvars"].to_numpy() > 1.5))
    assert set(above) <= set(prov["ScrubbedVolumes"])


@pytest.mark.shared
def test_real_legacy_renamed_file_matches_modern(shared_data, tmp_path):
    """The fMRIPrep 1.x file written with 1.0 camel-case names selects the same data."""
    tsv = stage_real(shared_data, "fmriprep1x", tmp_path / "modern")
    table = pd.read_csv(tsv, sep="\t")
    inverse = {v: k for k, v in LEGACY_NAMES.items()}
    keep = [c for c in table.columns if c in inverse or c.startswith(("cosine", "non_steady"))]
    legacy = table[keep].rename(
        columns=lambda c: (
            inverse.get(c)
            or c.replace("cosine", "Cosine").replace(
                "non_steady_state_outlier", "NonSteadyStateOutlier"
            )
        )
    )
    legacy_tsv = tmp_path / "sub-01_task-rest_bold_confounds.tsv"
    legacy.to_csv(legacy_tsv, sep="\t", index=False, na_rep="n/a")
    kwargs = {"motion": "basic", "global_signal": "basic"}
    ref_conf, ref_mask = nilearn_strategy(tmp_path / "modern", "simple", **kwargs)
    leg, meta = read_confounds(legacy_tsv, None)
    sel = select_confounds(
        leg, meta, DenoiseConfig(strategy="simple", **kwargs), len(leg), str(legacy_tsv)
    )
    assert_same_as_nilearn(sel, ref_conf, ref_mask)

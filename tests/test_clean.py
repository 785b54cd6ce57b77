"""Signal cleaning: nilearn.signal.clean 0.14.1 parity, correct censoring, empty regions."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from bids_app.clean import butterworth_padlen, clean, cosine_drifts
from bids_app.config import DenoiseConfig
from bids_app.confounds import exclusion_reason, read_confounds, select_confounds

T_R = 2.0
FILTERS = {
    "none": ("butterworth", None, None),
    "lowpass": ("butterworth", 0.1, None),
    "highpass": ("butterworth", None, 0.01),
    "bandpass": ("butterworth", 0.08, 0.01),
    "cosine": ("cosine", None, 0.01),
}


def nilearn_clean(signals, **kwargs):
    from nilearn import signal as nsignal

    mask = kwargs.pop("sample_mask", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nsignal.clean(
            signals.copy(), sample_mask=None if mask is None else np.array(mask), **kwargs
        )


def region_signals(n: int = 120, k: int = 9, seed: int = 0) -> np.ndarray:
    """Drifting, autocorrelated, positive series like BOLD region means."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    drift = 0.05 * t * rng.normal(0, 1, k) + 3 * np.sin(t / 15 + rng.uniform(0, 6, k))
    return 1000 + 50 * rng.normal(size=k) + drift + rng.normal(0, 2, (n, k)).cumsum(axis=0) / 3


def confound_matrix(n: int = 120, k: int = 6, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, k)).cumsum(axis=0)


def nilearn_bug_cannot_fire(sample_mask: np.ndarray, n: int) -> bool:
    """nilearn writes interpolated values into rows n-1-i of the kept indices i; it is right only
    when every censored row is among them."""
    written = set((n - 1 - np.asarray(sample_mask)).tolist())
    return set(np.setdiff1d(np.arange(n), sample_mask).tolist()) <= written


@pytest.mark.parametrize("standardize", ["zscore_sample", "psc", None])
@pytest.mark.parametrize("filt", list(FILTERS))
def test_parity_with_nilearn_grid(filt, standardize):
    n = 120
    signals = region_signals(n)
    confounds = confound_matrix(n)
    f, low, high = FILTERS[filt]
    leading = np.arange(4, n)  # non-steady-state style: nilearn's interpolation is right here
    scrubbed = np.setdiff1d(np.arange(n), [0, 1, 30, 31, 32, 77, 118])
    masks = [None, leading]
    if filt in ("none", "cosine"):  # censoring without interpolation: any mask is comparable
        masks.append(scrubbed)
    worst = 0.0
    for detrend, conf_on, std_conf, mask in itertools.product(
        (True, False), (True, False), (True, False), masks
    ):
        kwargs = dict(
            t_r=T_R,
            detrend=detrend,
            standardize=standardize,
            standardize_confounds=std_conf,
            filter=f,
            low_pass=low,
            high_pass=high,
            confounds=confounds if conf_on else None,
            sample_mask=mask,
        )
        ref = nilearn_clean(signals, **kwargs)
        got = clean(signals, **kwargs)
        assert got.dtype == np.float64
        assert got.shape == ref.shape
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got - ref).max()) / scale
        worst = max(worst, err)
        assert err <= 1e-6, (detrend, conf_on, std_conf, None if mask is None else len(mask))
    assert worst < 1e-9


def textbook_scrub_filter(signals, kept, t_r, low_pass, high_pass):
    """Interpolate censored volumes by a cubic spline through the kept ones (inside the kept range),
    detrend, zero-phase band-pass, then keep the kept volumes."""
    first, last = kept[0], kept[-1]
    x = signals[first : last + 1].copy()
    times = np.arange(len(signals)) * t_r
    inside = np.setdiff1d(np.arange(first, last + 1), kept)
    x[inside - first] = CubicSpline(times[kept], signals[kept])(times[inside])
    x = sp_signal.detrend(x, axis=0, type="linear")
    band = [w for w in (high_pass, low_pass) if w is not None]
    btype = "band" if len(band) == 2 else ("high" if high_pass is not None else "low")
    sos = sp_signal.butter(5, band if len(band) == 2 else band[0], btype, fs=1 / t_r, output="sos")
    return sp_signal.sosfiltfilt(sos, x, axis=0)[kept - first]


@pytest.mark.parametrize(
    "censored",
    [[30, 31, 68, 69], [0, 1, 45, 54, 98, 99], [2, 3, 4, 50, 95, 96, 97, 99]],
    ids=["mirrored-interior", "edges", "last-volume"],
)
def test_censoring_with_filter_is_textbook_and_nilearn_is_not(censored):
    n = 100
    signals = region_signals(n, 5, seed=3)
    signals[censored] += 80.0  # motion spikes in the censored volumes
    kept = np.setdiff1d(np.arange(n), censored)
    assert not nilearn_bug_cannot_fire(kept, n)
    kwargs = dict(t_r=T_R, detrend=True, standardize=None, low_pass=0.1, high_pass=0.01)
    ours = clean(signals, sample_mask=kept, **kwargs)
    reference = textbook_scrub_filter(signals, kept, T_R, 0.1, 0.01)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)
    theirs = nilearn_clean(signals, sample_mask=kept, **kwargs)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - reference).max() > 1.0  # nilearn 0.14.1 keeps spikes / shifts rows


def test_censoring_spike_does_not_leak():
    """A spike in a censored volume must not change the cleaned kept volumes."""
    n = 100
    signals = region_signals(n, 4, seed=5)
    kept = np.setdiff1d(np.arange(n), [40, 59])  # 59 is the mirror of 40
    spiky = signals.copy()
    spiky[[40, 59]] += 500.0
    kwargs = dict(t_r=T_R, sample_mask=kept, low_pass=0.1, confounds=confound_matrix(n, 3))
    np.testing.assert_allclose(clean(spiky, **kwargs), clean(signals, **kwargs), atol=1e-10)


def test_sample_mask_is_not_modified_and_bool_masks_work():
    n = 80
    signals = region_signals(n, 3)
    mask = np.arange(5, n, dtype=np.int32)
    before = mask.copy()
    got = clean(signals, t_r=T_R, sample_mask=mask, high_pass=0.01)
    np.testing.assert_array_equal(mask, before)
    as_bool = np.zeros(n, dtype=bool)
    as_bool[5:] = True
    np.testing.assert_array_equal(clean(signals, t_r=T_R, sample_mask=as_bool, high_pass=0.01), got)
    full = clean(signals, t_r=T_R, sample_mask=np.arange(n), high_pass=0.01)
    np.testing.assert_allclose(full, clean(signals, t_r=T_R, high_pass=0.01), atol=1e-12)


@pytest.mark.parametrize("standardize", ["zscore_sample", "psc", None])
@pytest.mark.parametrize(
    "options",
    [
        dict(filter="butterworth", low_pass=0.08, high_pass=0.01),
        dict(filter="butterworth", low_pass=0.08, high_pass=0.01, sample_mask="scrub"),
        dict(filter="cosine", high_pass=0.01, sample_mask="scrub"),
        dict(filter="butterworth", detrend=False),
    ],
    ids=["bandpass", "bandpass-scrub", "cosine-scrub", "plain"],
)
def test_all_nan_columns_pass_through(options, standardize):
    n = 100
    signals = region_signals(n, 6, seed=7)
    options = dict(options)
    if options.get("sample_mask") == "scrub":
        options["sample_mask"] = np.setdiff1d(np.arange(n), [0, 1, 40, 41, 59, 99])
    kwargs = dict(t_r=T_R, confounds=confound_matrix(n, 4), standardize=standardize, **options)
    with_empty = np.insert(signals, [0, 3, 6], np.nan, axis=1)
    with_empty[10, 5] = np.nan  # a partly n/a column (signals[:, 3]) is treated as empty too
    got = clean(with_empty, **kwargs)
    expected = clean(np.delete(signals, 3, axis=1), **kwargs)
    empty = [0, 4, 5, 8]
    assert np.isnan(got[:, empty]).all()
    np.testing.assert_array_equal(np.delete(got, empty, axis=1), expected)


def test_cosine_drifts_not_duplicated_when_fmriprep_cosines_are_confounds():
    n = 120
    signals = region_signals(n, 4)
    drifts = cosine_drifts(n, 0.01, T_R)
    assert drifts.shape == (n, 4)  # floor(2 * 120 * 0.01 * 2) = 4
    np.testing.assert_allclose(drifts.T @ drifts, np.eye(4), atol=1e-12)
    conf = np.hstack([confound_matrix(n, 3), drifts])
    with_cos = clean(signals, t_r=T_R, confounds=conf, filter="cosine", high_pass=0.01)
    without = clean(signals, t_r=T_R, confounds=conf)
    np.testing.assert_allclose(with_cos, without, atol=1e-12)
    ref = nilearn_clean(signals, t_r=T_R, confounds=conf, filter="cosine", high_pass=0.01)
    np.testing.assert_allclose(with_cos, ref, atol=1e-9)


def test_output_is_orthogonal_to_confounds_and_standardized():
    n = 150
    signals = region_signals(n, 5)
    conf = confound_matrix(n, 4)
    kept = np.arange(3, n)
    got = clean(signals, t_r=T_R, confounds=conf, sample_mask=kept, detrend=False)
    centered = conf[kept] - conf[kept].mean(axis=0)
    np.testing.assert_allclose(centered.T @ got, 0, atol=1e-8)
    np.testing.assert_allclose(got.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(got.std(axis=0, ddof=1), 1, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(standardize="zscore"), "standardize"),
        (dict(filter="cosine"), "high_pass"),
        (dict(filter="cosine", high_pass=0.01, low_pass=0.1), "high-pass only"),
        (dict(filter="fft"), "filter"),
        (dict(low_pass=0.01, high_pass=0.02), "lower than low_pass"),
        (dict(sample_mask=np.array([], dtype=int)), "every volume is censored"),
        (dict(sample_mask=np.array([0, 60])), r"\[0, 60\)"),
        (dict(confounds=np.full((60, 2), np.nan)), "NaN"),
        (dict(confounds=np.ones((59, 2))), "shape"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        clean(region_signals(60, 2), t_r=T_R, **kwargs)


@pytest.mark.parametrize("t_r", [0.5, 2.0, 3.0])
@pytest.mark.parametrize(("low", "high"), [(0.08, 0.01), (0.1, None), (None, 0.01), (0.15, 0.001)])
def test_padlen_is_that_of_the_scipy_design(low, high, t_r):
    """The analytic padding length equals sosfiltfilt's for scipy's order-5 design."""
    from scipy import signal

    wn = [high, low] if low and high else (low or high)
    btype = "band" if low and high else ("low" if low else "high")
    sos = signal.butter(N=5, Wn=wn, btype=btype, output="sos", fs=1.0 / t_r)
    zeros = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    assert butterworth_padlen(low, high, t_r) == 3 * (2 * len(sos) + 1 - zeros)


def test_too_short_for_the_filter():
    assert butterworth_padlen(0.08, 0.01) == 33
    assert butterworth_padlen(0.1, None) == 18
    assert butterworth_padlen(None, 0.01) == 18
    assert butterworth_padlen(None, None) == 0
    with pytest.raises(ValueError, match="33 volumes are too few.*more than 33"):
        clean(region_signals(33, 2), t_r=T_R, low_pass=0.08, high_pass=0.01)
    assert clean(region_signals(34, 2), t_r=T_R, low_pass=0.08, high_pass=0.01).shape == (34, 2)


def test_cutoff_above_nyquist_is_clipped_like_nilearn():
    signals = region_signals(80, 3)
    got = clean(signals, t_r=T_R, low_pass=0.3, high_pass=0.01)  # Nyquist is 0.25 Hz
    np.testing.assert_allclose(
        got, nilearn_clean(signals, t_r=T_R, low_pass=0.3, high_pass=0.01), atol=1e-9
    )


# --- real fMRIPrep confounds -> clean, against nilearn end to end ------------------------------
REAL = {
    "fmriprep1x": "nilearn_fmriprep/test_desc-confounds_regressors",
    "fmriprep21": "nilearn_fmriprep/test-v21_desc-confounds_timeseries",
    "fmriprep25": "abide_fmriprep25/sub-v1s0x0050642_ses-1_task-rest_run-1_desc-confounds_timeseries",
}
BOLD = "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
AROMA_BOLD = "sub-01_task-rest_space-MNI152NLin6Asym_desc-smoothAROMAnonaggr_bold.nii.gz"


@pytest.mark.shared
@pytest.mark.parametrize("key", list(REAL))
def test_real_confounds_clean_parity(shared_data, tmp_path, key):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    stem = shared_data / "confounds" / REAL[key]
    suffix = "regressors" if stem.name.endswith("regressors") else "timeseries"
    tsv = tmp_path / f"sub-01_task-rest_desc-confounds_{suffix}.tsv"
    shutil.copy(f"{stem}.tsv", tsv)
    shutil.copy(f"{stem}.json", tsv.with_suffix(".json"))
    (tmp_path / BOLD).touch()
    (tmp_path / AROMA_BOLD).touch()
    table, meta = read_confounds(tsv, tsv.with_suffix(".json"))
    n = len(table)
    signals = region_signals(n, 12, seed=11)
    compared = {"filtered": 0, "censored_only": 0}
    for strategy, gsr in itertools.product(
        ("simple", "scrubbing", "compcor", "ica_aroma"), (None, "basic")
    ):
        overrides = {"global_signal": gsr} if gsr else {}
        bold = tmp_path / (AROMA_BOLD if strategy == "ica_aroma" else BOLD)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_conf, ref_mask = load_confounds_strategy(str(bold), strategy, **overrides)
        sel = select_confounds(
            table, meta, DenoiseConfig(strategy=strategy, **overrides), n, str(tsv)
        )
        n_kept = n if sel.sample_mask is None else sel.sample_mask.size
        if exclusion_reason(n_kept, sel.confounds.shape[1], T_R, DenoiseConfig()):
            continue  # too few volumes for the regressors: the pipeline excludes the run
        # psc is not compared: the psc of mean-removed confound-cleaned data divides by ~0.
        for filt, standardize in itertools.product(FILTERS, ("zscore_sample", None)):
            f, low, high = FILTERS[filt]
            filtering = f == "butterworth" and (low or high)
            if filtering and ref_mask is not None and not nilearn_bug_cannot_fire(ref_mask, n):
                continue  # compared against the textbook reference in the test above
            if filtering and n <= butterworth_padlen(low, high):
                continue
            kwargs = dict(t_r=T_R, filter=f, low_pass=low, high_pass=high, standardize=standardize)
            ref = nilearn_clean(
                signals, confounds=ref_conf.to_numpy(), sample_mask=ref_mask, **kwargs
            )
            got = clean(
                signals, confounds=sel.confounds.to_numpy(), sample_mask=sel.sample_mask, **kwargs
            )
            scale = max(1.0, float(np.abs(ref).max()))
            assert np.abs(got - ref).max() / scale <= 1e-6, (strategy, gsr, filt, standardize)
            compared["filtered" if filtering else "censored_only"] += 1
    # The 30-volume nilearn test files keep enough degrees of freedom only for ica_aroma.
    assert compared["censored_only"] >= (24 if key == "fmriprep25" else 4)
    assert compared["filtered"] >= (16 if key == "fmriprep25" else 0)


@pytest.mark.shared
def test_real_scrubbing_mask_with_bandpass_textbook(shared_data, tmp_path):
    """Real fMRIPrep 25 motion (FD > 0.3 mm): our scrub + band-pass + confound regression equals
    an independent textbook computation; nilearn 0.14.1 does not."""
    stem = shared_data / "confounds" / REAL["fmriprep25"]
    table, meta = read_confounds(Path(f"{stem}.tsv"), Path(f"{stem}.json"))
    n = len(table)
    den = DenoiseConfig(strategy="scrubbing", fd_threshold=0.3, motion="basic", wm_csf="basic")
    sel = select_confounds(table, meta, den, n, str(stem))
    kept = sel.sample_mask
    assert not nilearn_bug_cannot_fire(kept, n)
    signals = region_signals(n, 6, seed=2)
    censored = np.setdiff1d(np.arange(n), kept)
    signals[censored] += 60.0
    conf = sel.confounds.to_numpy()
    kwargs = dict(t_r=T_R, low_pass=0.08, high_pass=0.01, standardize=None)
    ours = clean(signals, confounds=conf, sample_mask=kept, **kwargs)

    x = textbook_scrub_filter(signals, kept, T_R, 0.08, 0.01)
    c = textbook_scrub_filter(conf, kept, T_R, 0.08, 0.01)
    c = (c - c.mean(axis=0)) / c.std(axis=0, ddof=1)
    beta, *_ = np.linalg.lstsq(c, x, rcond=None)
    reference = x - c @ beta
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-8 * np.abs(reference).max())
    theirs = nilearn_clean(signals, confounds=conf, sample_mask=kept, **kwargs)
    assert np.abs(theirs - reference).max() > 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("shape", [(100, 5), (300, 800), (37, 1)])
def test_linear_detrend_is_scipy_detrend_bit_for_bit(shape):
    from scipy import signal

    from bids_app.clean import linear_detrend

    x = np.random.default_rng(shape[0]).standard_normal(shape) * 100 + 5
    np.testing.assert_array_equal(linear_detrend(x), signal.detrend(x, axis=0, type="linear"))


BUTTERWORTH_CASES = [
    (t_r, low, high)
    for t_r in (0.5, 0.72, 1.0, 2.0, 3.0)
    for low, high in [
        (0.08, 0.01),  # the usual band: real poles paired in one section at short TRs
        (0.1, 0.009),
        (0.03, 0.02),  # narrow band: every pole complex
        (0.3, 0.001),  # low cutoff clipped below Nyquist at TR >= 2
        (0.1, None),
        (1.5, None),
        (None, 0.01),
        (None, 0.1),
    ]
]


def _scipy_butter(t_r: float, low: float | None, high: float | None) -> np.ndarray:
    nyquist = 0.5 / t_r
    clipped = nyquist * (1 - 10 * np.finfo(np.float32).eps)  # as the app, as nilearn
    low = None if low is None else min(low, clipped)
    wn = [high, low] if low and high else (low or high)
    btype = "band" if low and high else ("low" if low else "high")
    return sp_signal.butter(N=5, Wn=wn, btype=btype, output="sos", fs=1.0 / t_r)


@pytest.mark.parametrize(("t_r", "low", "high"), BUTTERWORTH_CASES)
def test_butterworth_design_is_scipys(t_r, low, high):
    """Our order-5 design: scipy.signal.butter's sections, up to rounding."""
    from bids_app.clean import butterworth_sos

    ref = _scipy_butter(t_r, low, high)
    ours = butterworth_sos(low, high, t_r)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("t_r", "low", "high"), BUTTERWORTH_CASES)
def test_butterworth_filter_is_scipys_sosfiltfilt(t_r, low, high):
    """Zero-phase filtering: bit for bit sosfiltfilt with the same sections, and within
    1e-12 of sosfiltfilt with scipy's own design."""
    from bids_app.clean import butterworth, butterworth_sos

    x = np.random.default_rng(7).standard_normal((120, 6)).cumsum(axis=0) * 50 + 300
    ours = butterworth(x, t_r, low, high)
    sos = butterworth_sos(low, high, t_r)
    np.testing.assert_array_equal(ours, sp_signal.sosfiltfilt(sos, x, axis=0, padtype="odd"))
    ref = sp_signal.sosfiltfilt(_scipy_butter(t_r, low, high), x, axis=0, padtype="odd")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_filtered_clean_does_not_import_scipy_signal():
    """The filter is ours: a band-passed, censored clean leaves scipy.signal unimported."""
    code = (
        "import sys, numpy as np\n"
        "from bids_app.clean import clean\n"
        "x = np.random.default_rng(0).standard_normal((200, 4))\n"
        "c = np.random.default_rng(1).standard_normal((200, 3))\n"
        "clean(x, t_r=2.0, confounds=c, sample_mask=np.r_[0:50, 60:200],"
        " low_pass=0.08, high_pass=0.01)\n"
        "print('scipy.signal' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

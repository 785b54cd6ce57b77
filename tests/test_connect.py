"""Connectivity measures: parity with nilearn's ConnectivityMeasure, n/a regions, group stats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.covariance import GraphicalLassoCV

from bids_app import connect

nilearn_connectome = pytest.importorskip("nilearn.connectome")
ConnectivityMeasure = nilearn_connectome.ConnectivityMeasure

NILEARN_KIND = {
    "correlation": "correlation",
    "partialcorrelation": "partial correlation",
    "covariance": "covariance",
    "precision": "precision",
}


def network_signals(
    rng: np.random.Generator, n_volumes: int = 120, n_regions: int = 9, n_networks: int = 3
) -> np.ndarray:
    """Region signals from latent network signals + noise, with different scales and offsets."""
    latent = rng.standard_normal((n_volumes, n_networks))
    member = np.arange(n_regions) % n_networks
    x = latent[:, member] + 0.8 * rng.standard_normal((n_volumes, n_regions))
    return x * rng.uniform(0.5, 3.0, n_regions) + rng.uniform(-5, 5, n_regions)


def assert_rel(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-6) -> None:
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


def reference_estimator(estimator: str):
    return None if estimator == "ledoit_wolf" else connect.make_estimator(estimator)


@pytest.mark.parametrize("estimator", ["ledoit_wolf", "empirical"])
@pytest.mark.parametrize("measure", connect.MEASURES)
def test_parity_with_nilearn(measure, estimator):
    ts = network_signals(np.random.default_rng(0))
    ours = connect.connectivity_matrix(ts, measure, estimator)
    ref = ConnectivityMeasure(
        cov_estimator=reference_estimator(estimator), kind=NILEARN_KIND[measure]
    ).fit_transform([ts])[0]
    assert_rel(ours, ref)
    np.testing.assert_array_equal(ours, ours.T)
    if measure in connect.CORRELATION_LIKE:
        np.testing.assert_array_equal(np.diag(ours), 1.0)


@pytest.mark.parametrize("measure", connect.MEASURES)
def test_parity_graphical_lasso(measure):
    ts = network_signals(np.random.default_rng(1), n_volumes=80, n_regions=6, n_networks=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = connect.connectivity_matrix(ts, measure, "graphical_lasso")
        ref = ConnectivityMeasure(
            cov_estimator=GraphicalLassoCV(), kind=NILEARN_KIND[measure]
        ).fit_transform([ts])[0]
    assert_rel(ours, ref)
    assert isinstance(connect.make_estimator("graphical_lasso"), GraphicalLassoCV)


def test_nilearn_kind_spelling_and_errors():
    ts = network_signals(np.random.default_rng(2))
    a = connect.connectivity_matrix(ts, "partial correlation")
    b = connect.connectivity_matrix(ts, "partialcorrelation")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown measure"):
        connect.connectivity_matrix(ts, "coherence")
    with pytest.raises(ValueError, match="unknown estimator"):
        connect.connectivity_matrix(ts, "correlation", "oas")


@pytest.mark.parametrize("measure", connect.MEASURES)
def test_na_regions_are_left_out(measure):
    ts = network_signals(np.random.default_rng(3), n_regions=8)
    holed = ts.copy()
    holed[:, 2] = np.nan  # region without signal
    holed[10:, 5] = np.nan  # region missing in part of the data (e.g. one of two runs)
    ours = connect.connectivity_matrix(holed, measure)
    keep = np.array([i not in (2, 5) for i in range(8)])
    assert np.isnan(ours[2]).all() and np.isnan(ours[:, 5]).all()
    assert np.isfinite(ours[np.ix_(keep, keep)]).all()
    ref = ConnectivityMeasure(kind=NILEARN_KIND[measure]).fit_transform([ts[:, keep]])[0]
    assert_rel(ours[np.ix_(keep, keep)], ref)
    all_na = connect.connectivity_matrix(np.full((20, 3), np.nan), measure)
    assert all_na.shape == (3, 3) and np.isnan(all_na).all()


def test_tangent_parity_mean_and_transforms():
    rng = np.random.default_rng(4)
    subjects = [network_signals(rng, n_volumes=100, n_regions=7) for _ in range(5)]
    mean, tangents = connect.tangent(subjects)
    cm = ConnectivityMeasure(kind="tangent")
    ref = cm.fit_transform(subjects)
    assert_rel(mean, cm.mean_)
    for ours, theirs in zip(tangents, ref, strict=True):
        assert_rel(ours, theirs)
        np.testing.assert_array_equal(ours, ours.T)
    res = connect.tangent_space(subjects, "empirical")
    cm = ConnectivityMeasure(kind="tangent", cov_estimator=connect.make_estimator("empirical"))
    ref = cm.fit_transform(subjects)
    assert_rel(res.mean, cm.mean_)
    assert_rel(res.whitening, cm.whitening_)
    for ours, theirs in zip(res.matrices, ref, strict=True):
        assert_rel(ours, theirs)


def test_tangent_na_in_any_subject_and_errors():
    rng = np.random.default_rng(5)
    subjects = [network_signals(rng, n_volumes=90, n_regions=6) for _ in range(4)]
    holed = [s.copy() for s in subjects]
    holed[1][:, 0] = np.nan
    holed[3][:, 4] = np.nan
    mean, tangents = connect.tangent(holed)
    keep = np.array([True, True, True, True, False, True])
    keep[0] = False
    for m in [mean, *tangents]:
        assert np.isnan(m[~keep]).all() and np.isnan(m[:, ~keep]).all()
        assert np.isfinite(m[np.ix_(keep, keep)]).all()
    cm = ConnectivityMeasure(kind="tangent")
    ref = cm.fit_transform([s[:, keep] for s in subjects])
    assert_rel(mean[np.ix_(keep, keep)], cm.mean_)
    assert_rel(tangents[2][np.ix_(keep, keep)], ref[2])
    with pytest.raises(ValueError, match="at least 2"):
        connect.tangent(subjects[:1])


def test_geometric_mean_properties():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 5))
    spd = a @ a.T + 5 * np.eye(5)
    np.testing.assert_allclose(connect.geometric_mean([spd, spd, spd]), spd, rtol=1e-10)
    # commuting matrices: the geometric mean of diagonals is the elementwise geometric mean
    d1, d2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    np.testing.assert_allclose(connect.geometric_mean([d1, d2]), np.diag([2.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="positive definite"):
        connect.geometric_mean([spd, -spd])


def test_fisher_mean():
    r1 = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, -0.3], [0.2, -0.3, 1.0]])
    r2 = np.array([[1.0, 0.9, np.nan], [0.9, 1.0, 0.1], [np.nan, 0.1, 1.0]])
    m = connect.fisher_mean(np.stack([r1, r2]))
    assert m[0, 1] == pytest.approx(np.tanh((np.arctanh(0.5) + np.arctanh(0.9)) / 2))
    assert m[0, 1] > (0.5 + 0.9) / 2  # z-averaging weighs strong correlations more
    assert m[0, 2] == pytest.approx(0.2)  # NaN-aware
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_array_equal(m, m.T)
    r3 = np.full((3, 3), np.nan)
    r3[:2, :2] = [[1.0, 1.0], [1.0, 1.0]]  # perfect correlation stays finite
    m = connect.fisher_mean(np.stack([r3, r3]))
    assert np.isfinite(m[0, 1]) and m[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(m[2]).all()
    np.testing.assert_allclose(connect.group_mean(np.stack([r1, r1 * 3]), "covariance"), r1 * 2)


def test_qc_fc_matches_pearson_and_detects_motion():
    rng = np.random.default_rng(7)
    n_sub, n_reg = 40, 10
    fd = rng.uniform(0.05, 0.6, n_sub)
    base = rng.uniform(-0.2, 0.2, (n_reg, n_reg))
    base = (base + base.T) / 2
    coords = rng.uniform(-60, 60, (n_reg, 3))
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    # motion inflates short-distance connectivity more than long-distance (as in real data)
    effect = np.exp(-dist / 40.0)
    mats = (
        base + fd[:, None, None] * effect * 1.5 + 0.1 * rng.standard_normal((n_sub, n_reg, n_reg))
    )
    mats = (mats + mats.transpose(0, 2, 1)) / 2
    mats[3, 1, 0] = mats[3, 0, 1] = np.nan
    res = connect.qc_fc(fd, mats, coordinates=coords)
    rows, cols = np.tril_indices(n_reg, -1)
    for k in (0, 5, 17):
        i, j = rows[k], cols[k]
        ok = np.isfinite(mats[:, i, j])
        ref = stats.pearsonr(fd[ok], mats[ok, i, j])
        assert res.r[k] == pytest.approx(ref.statistic, rel=1e-10)
        assert res.p[k] == pytest.approx(ref.pvalue, rel=1e-8)
    assert res.n[0] == n_sub - 1 and res.n[1] == n_sub
    clean = connect.qc_fc(fd, base + 0.1 * rng.standard_normal((n_sub, n_reg, n_reg)), coords)
    s, c = res.summary, clean.summary
    assert s["MedianAbsQCFC"] > c["MedianAbsQCFC"] + 0.2
    assert s["PercentEdgesSignificant"] > 50 > 20 > c["PercentEdgesSignificant"]
    assert s["DistanceDependence"] < -0.3  # stronger motion effect at short distances
    assert s["NumberOfEdges"] == n_reg * (n_reg - 1) // 2


def test_qc_fc_covariates_remove_a_shared_cause():
    rng = np.random.default_rng(8)
    n_sub, n_reg = 60, 6
    age = rng.uniform(20, 80, n_sub)  # older subjects move more AND have lower connectivity
    fd = 0.004 * age + 0.05 * rng.standard_normal(n_sub)
    mats = 0.6 - 0.006 * age[:, None, None] + 0.05 * rng.standard_normal((n_sub, n_reg, n_reg))
    mats = (mats + mats.transpose(0, 2, 1)) / 2
    pearson = connect.qc_fc(fd, mats)
    partial = connect.qc_fc(fd, mats, covariates=age[:, None])
    assert pearson.summary["MedianAbsQCFC"] > 0.5
    assert partial.summary["MedianAbsQCFC"] < 0.25
    assert partial.summary["Covariates"] == 1
    # the partial correlation equals Pearson's on the residuals, with n - 3 degrees of freedom
    design = np.column_stack([np.ones(n_sub), age])
    res = lambda v: v - design @ np.linalg.lstsq(design, v, rcond=None)[0]  # noqa: E731
    r = np.corrcoef(res(fd), res(mats[:, 1, 0]))[0, 1]
    assert partial.r[0] == pytest.approx(r, rel=1e-9)
    t = r * np.sqrt((n_sub - 3) / (1 - r**2))
    assert partial.p[0] == pytest.approx(2 * stats.t.sf(abs(t), n_sub - 3), rel=1e-8)

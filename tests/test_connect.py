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


# --- cohort scale: batched tangent, chunked group statistics -------------------------------------


def lw_covariances(subjects: list[np.ndarray]) -> np.ndarray:
    return np.stack([connect.covariance(s) for s in subjects])


def test_tangent_from_covariances_parity_across_chunks():
    rng = np.random.default_rng(10)
    # fewer volumes than regions (as at cohort scale): near-singular shrunk covariances
    subjects = [network_signals(rng, n_volumes=12, n_regions=15, n_networks=4) for _ in range(13)]
    covs = lw_covariances(subjects)
    original = covs.copy()
    cm = ConnectivityMeasure(kind="tangent")
    ref = cm.fit_transform(subjects)
    mean, whitening = connect.tangent_from_covariances(covs, chunk_size=4)  # 4 chunks, 1 partial
    assert_rel(mean, cm.mean_)
    assert_rel(whitening, cm.whitening_)
    assert_rel(covs, ref)  # written in place
    np.testing.assert_array_equal(covs, covs.transpose(0, 2, 1))
    assert np.abs(covs).max() > 0.5  # real deviations from the group, not ~0
    # same bytes whatever the chunking, into ``out``, and run to run
    out = np.empty_like(original)
    again = original.copy()
    mean_out, whitening_out = connect.tangent_from_covariances(again, out=out)
    np.testing.assert_array_equal(again, original)
    np.testing.assert_array_equal(out, covs)
    np.testing.assert_array_equal(mean_out, mean)
    np.testing.assert_array_equal(whitening_out, whitening)
    np.testing.assert_array_equal(
        connect.geometric_mean(list(original)), connect.geometric_mean(original)
    )
    np.testing.assert_array_equal(connect.geometric_mean(original), mean)


def test_tangent_space_nan_regions_many_chunks(monkeypatch):
    monkeypatch.setattr(connect, "_CHUNK_BYTES", 3 * 8 * 7 * 7)  # 3 matrices of 7 x 7
    rng = np.random.default_rng(11)
    subjects = [network_signals(rng, n_volumes=40, n_regions=9) for _ in range(10)]
    holed = [s.copy() for s in subjects]
    holed[0][:, 8] = np.nan
    holed[6][5:, 3] = np.nan
    keep = np.ones(9, bool)
    keep[[3, 8]] = False
    res = connect.tangent_space(holed)
    cm = ConnectivityMeasure(kind="tangent")
    ref = cm.fit_transform([s[:, keep] for s in subjects])
    np.testing.assert_array_equal(res.regions, keep)
    assert_rel(res.mean[np.ix_(keep, keep)], cm.mean_)
    assert_rel(res.whitening[np.ix_(keep, keep)], cm.whitening_)
    assert len(res.matrices) == 10
    for ours, theirs in zip(res.matrices, ref, strict=True):
        assert ours.shape == (9, 9)
        assert np.isnan(ours[~keep]).all() and np.isnan(ours[:, ~keep]).all()
        assert_rel(ours[np.ix_(keep, keep)], theirs)
    # one (n_subjects, n, n) stack behind the per-subject matrices
    assert all(np.shares_memory(m, res.matrices[0].base) for m in res.matrices)


def test_tangent_spd_failures_are_named_and_leave_input_alone():
    rng = np.random.default_rng(12)
    covs = lw_covariances([network_signals(rng, n_volumes=50, n_regions=5) for _ in range(7)])
    bad = covs.copy()
    bad[5] -= 2.0 * np.abs(np.linalg.eigvalsh(bad[5])).max() * np.eye(5)
    before = bad.copy()
    with pytest.raises(ValueError, match=r"positive definite \(matrix 5 has smallest eigenvalue -"):
        connect.tangent_from_covariances(bad, chunk_size=2)
    np.testing.assert_array_equal(bad, before)
    bad = covs.copy()
    bad[2, 0, 1] *= 1.001
    with pytest.raises(ValueError, match=r"matrix 2 is not symmetric"):
        connect.tangent_from_covariances(bad, chunk_size=2)
    bad[2] = covs[2]
    bad[6, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"matrix 6 has non-finite values"):
        connect.tangent_from_covariances(bad)
    with pytest.raises(ValueError, match="at least 2"):
        connect.tangent_from_covariances(covs[:1].copy())
    with pytest.raises(TypeError, match="float64"):
        connect.tangent_from_covariances(covs.astype(np.float32))
    with pytest.raises(ValueError, match="partly overlaps"):
        connect.tangent_from_covariances(covs[:4], out=covs[1:5])
    with pytest.warns(RuntimeWarning, match="not reached in 1 iterations"):
        connect.tangent_from_covariances(covs.copy(), max_iter=1)
    holed = network_signals(rng, n_volumes=50, n_regions=5)
    holed[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        connect.covariance(holed)


def test_tangent_temporaries_stay_small():
    import tracemalloc

    rng = np.random.default_rng(13)
    covs = lw_covariances([network_signals(rng, n_volumes=30, n_regions=20) for _ in range(192)])
    connect.tangent_from_covariances(covs.copy(), chunk_size=8)  # imports, caches
    work = covs.copy()
    tracemalloc.start()
    try:
        connect.tangent_from_covariances(work, chunk_size=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # about 5 chunks of 8 matrices in each half of the stack (two threads), no stack copy
    assert peak < 0.6 * covs.nbytes


def reference_fisher_mean(mats: np.ndarray, clip: float = 1.0 - 1e-7) -> np.ndarray:
    """The unchunked implementation (whole-stack temporaries)."""
    z = np.arctanh(np.clip(mats, -clip, clip))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.tanh(np.nanmean(z, axis=0))
    present = ~np.isnan(np.diagonal(mats, axis1=1, axis2=2)).all(axis=0)
    np.fill_diagonal(mean, np.where(present, 1.0, np.nan))
    return (mean + mean.T) / 2.0


def reference_arithmetic_mean(mats: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(mats, axis=0)
    return (mean + mean.T) / 2.0


def correlation_stack(rng: np.random.Generator, n_matrices: int, n: int) -> np.ndarray:
    mats = np.stack(
        [np.corrcoef(network_signals(rng, 30, n, 3), rowvar=False) for _ in range(n_matrices)]
    )
    mats[3, 2, :] = mats[3, :, 2] = np.nan  # region n/a in one matrix
    mats[:, 5, :] = mats[:, :, 5] = np.nan  # region n/a everywhere
    mats[:, 1, 0] = mats[:, 0, 1] = 1.0  # perfect correlation (clipped)
    mats[7, 4, 6] = np.nan  # a lone NaN
    return mats


def test_group_means_by_blocks_equal_unchunked(monkeypatch):
    mats = correlation_stack(np.random.default_rng(14), 30, 11)
    whole = (connect.fisher_mean(mats), connect.arithmetic_mean(mats))
    monkeypatch.setattr(connect, "_BLOCK_BYTES", 2 * 8 * 30 * 11)  # blocks of 2 rows
    fisher, arithmetic = connect.fisher_mean(mats), connect.arithmetic_mean(mats)
    np.testing.assert_array_equal(fisher, reference_fisher_mean(mats))
    np.testing.assert_array_equal(arithmetic, reference_arithmetic_mean(mats))
    np.testing.assert_array_equal(fisher, whole[0])
    np.testing.assert_array_equal(arithmetic, whole[1])
    assert np.isnan(fisher[5]).all() and fisher[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(fisher[2, :5]).all()  # averaged over the other matrices
    np.testing.assert_array_equal(connect.group_mean(mats, "covariance"), arithmetic)


def test_group_means_temporaries_stay_small(monkeypatch):
    import tracemalloc

    mats = np.tanh(np.random.default_rng(15).standard_normal((100, 40, 40)))
    monkeypatch.setattr(connect, "_BLOCK_BYTES", mats.nbytes // 20)
    connect.fisher_mean(mats[:2])
    tracemalloc.start()
    try:
        for function in (connect.fisher_mean, connect.arithmetic_mean):
            tracemalloc.reset_peak()
            function(mats)
            assert tracemalloc.get_traced_memory()[1] < 0.25 * mats.nbytes
    finally:
        tracemalloc.stop()


def reference_qc_fc(fd, mats, covariates=None):
    """The unchunked QC-FC (whole (n_subjects, n_edges) temporaries): r, p, n."""
    rows, cols = np.tril_indices(mats.shape[1], -1)
    values = mats[:, rows, cols]
    ok = np.isfinite(values) & np.isfinite(fd)[:, None]
    k = 0
    if covariates is not None:
        cov = covariates.reshape(fd.size, -1)
        k = cov.shape[1]
        complete = ok.all(axis=1)
        fd_res = np.full_like(fd, np.nan)
        fd_res[complete] = connect._residualize(fd[complete], cov[complete])
        values[complete] = connect._residualize(values[complete], cov[complete])
        values[~complete] = np.nan
        fd = fd_res
        ok = np.isfinite(values) & np.isfinite(fd)[:, None]
    n = ok.sum(axis=0)
    x, y = np.where(ok, fd[:, None], 0.0), np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(ok, x - x.sum(axis=0) / n, 0.0)
        dy = np.where(ok, y - y.sum(axis=0) / n, 0.0)
        r = (dx * dy).sum(axis=0) / np.sqrt((dx**2).sum(axis=0) * (dy**2).sum(axis=0))
        r = np.clip(r, -1.0, 1.0)
        dof = n - 2 - k
        p = 2.0 * stats.t.sf(np.abs(r * np.sqrt(dof / np.maximum(1.0 - r**2, 1e-300))), dof)
    bad = (dof < 1) | ~np.isfinite(r)
    r[bad] = p[bad] = np.nan
    p[~bad & (np.abs(r) == 1.0)] = 0.0
    return r, p, n


def test_qc_fc_by_blocks_equal_unchunked(monkeypatch):
    rng = np.random.default_rng(16)
    n_sub, n_reg = 25, 9
    fd = rng.uniform(0.05, 0.5, n_sub)
    mats = 0.3 * fd[:, None, None] + 0.1 * rng.standard_normal((n_sub, n_reg, n_reg))
    mats = (mats + mats.transpose(0, 2, 1)) / 2
    mats[4, 3, 1] = mats[4, 1, 3] = np.nan
    mats[:23, 8, 7] = mats[:23, 7, 8] = np.nan  # an edge with 2 subjects: no test
    fd[9] = np.nan
    age = rng.uniform(20, 80, (n_sub, 1))
    monkeypatch.setattr(connect, "_BLOCK_BYTES", 5 * 8 * n_sub)  # blocks of 5 edges / subjects
    plain = connect.qc_fc(fd, mats)
    ref = reference_qc_fc(fd, mats)
    for ours, theirs in zip((plain.r, plain.p, plain.n), ref, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(plain.r[-1]) and plain.n[-1] == 2 and plain.n[0] == n_sub - 1
    complete = np.ones(n_sub, bool)
    complete[[4, 9]] = False
    clean = mats.copy()
    clean[:23, 8, 7] = clean[:23, 7, 8] = 0.0
    partial = connect.qc_fc(fd, clean, covariates=age)
    ref = reference_qc_fc(fd, clean, covariates=age)
    np.testing.assert_allclose(partial.r, ref[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(partial.p, ref[1], rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(partial.n, ref[2])
    assert (partial.n == complete.sum()).all()


@pytest.mark.parametrize(("n", "p"), [(50, 10), (150, 400), (300, 264), (40, 1), (30, 60)])
def test_numpy_estimators_equal_scikit_learn_bit_for_bit(n, p):
    """Ledoit-Wolf and the empirical covariance without importing scikit-learn (seconds per
    process): the same arithmetic, the same bits."""
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    rng = np.random.default_rng(n + p)
    x = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
    np.testing.assert_array_equal(
        connect.ledoit_wolf(x), LedoitWolf(store_precision=False).fit(x).covariance_
    )
    np.testing.assert_array_equal(
        connect._covariance(x, "empirical"), EmpiricalCovariance().fit(x).covariance_
    )

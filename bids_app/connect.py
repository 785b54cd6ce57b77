"""Connectivity measures (nilearn 0.14.1 ``ConnectivityMeasure`` semantics) and group statistics.

Pure numeric functions, no file I/O. Region time series come as ``(n_volumes, n_regions)``
float arrays; a column containing NaN is an ``n/a`` region (no usable signal in at least part
of the data): it is left out of every estimate and comes back as NaN rows and columns.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)

MEASURES = ("correlation", "partialcorrelation", "covariance", "precision")
ESTIMATORS = ("ledoit_wolf", "empirical", "graphical_lasso")
CORRELATION_LIKE = ("correlation", "partialcorrelation")
ESTIMATOR_NAMES = {
    "ledoit_wolf": "LedoitWolf (scikit-learn)",
    "empirical": "EmpiricalCovariance (scikit-learn)",
    "graphical_lasso": "GraphicalLassoCV (scikit-learn)",
}
MEASURE_DESCRIPTIONS = {
    "correlation": "Pearson correlation of the cleaned region signals",
    "partialcorrelation": "Partial correlation (from the inverse covariance)",
    "covariance": "Covariance",
    "precision": "Precision (inverse covariance)",
    "tangent": "Tangent-space embedding around the group geometric mean (Varoquaux et al. 2010)",
}
_EPS = np.finfo(np.float64).eps


def make_estimator(estimator: str):
    """A fresh scikit-learn covariance estimator for a configured name.

    ``ledoit_wolf`` is what nilearn uses when no estimator is given
    (``LedoitWolf(store_precision=False)``); the others keep scikit-learn's defaults.
    """
    from sklearn.covariance import EmpiricalCovariance, GraphicalLassoCV, LedoitWolf

    if estimator == "ledoit_wolf":
        return LedoitWolf(store_precision=False)
    if estimator == "empirical":
        return EmpiricalCovariance(store_precision=False)
    if estimator == "graphical_lasso":
        return GraphicalLassoCV()
    raise ValueError(
        f"unknown covariance estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}"
    )


def normalize_measure(measure: str) -> str:
    """``"partial correlation"`` / ``"partial_correlation"`` -> ``"partialcorrelation"``."""
    return measure.replace(" ", "").replace("_", "").lower()


def valid_regions(timeseries: np.ndarray) -> np.ndarray:
    """Boolean mask of the columns without any NaN (the regions used in estimates)."""
    ts = np.asarray(timeseries, dtype=np.float64)
    if ts.ndim != 2:
        raise ValueError(f"expected a (n_volumes, n_regions) array, got shape {ts.shape}")
    return ~np.isnan(ts).any(axis=0)


def _embed(sub: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Put a (k, k) matrix back at the rows/columns ``keep`` of a NaN (n, n) matrix."""
    full = np.full((keep.size, keep.size), np.nan)
    full[np.ix_(keep, keep)] = sub
    return full


def zscore_sample(x: np.ndarray) -> np.ndarray:
    """Columns centred and divided by their ddof=1 std (std below eps left at 1), as nilearn."""
    if x.shape[0] == 1:
        return x.copy()
    out = x - x.mean(axis=0)
    std = out.std(axis=0, ddof=1)
    std[std < _EPS] = 1.0
    return out / std


def cov_to_corr(cov: np.ndarray) -> np.ndarray:
    """Correlation from covariance, diagonal exactly 1."""
    scale = 1.0 / np.sqrt(np.diag(cov))
    corr = cov * scale[:, None] * scale[None, :]
    np.fill_diagonal(corr, 1.0)
    return corr


def precision_to_partial(precision: np.ndarray) -> np.ndarray:
    """Partial correlation from precision: ``-corr(precision)``, diagonal exactly 1."""
    partial = -cov_to_corr(precision)
    np.fill_diagonal(partial, 1.0)
    return partial


def _covariance(x: np.ndarray, estimator: str) -> np.ndarray:
    return make_estimator(estimator).fit(x).covariance_


def _from_covariance(cov: np.ndarray, measure: str) -> np.ndarray:
    if measure in ("covariance", "correlation"):
        return cov if measure == "covariance" else cov_to_corr(cov)
    precision = linalg.inv(cov)
    return precision if measure == "precision" else precision_to_partial(precision)


def connectivity_matrix(
    timeseries: np.ndarray, measure: str, estimator: str = "ledoit_wolf"
) -> np.ndarray:
    """Connectivity matrix of one block of cleaned region signals.

    Same numbers as ``nilearn.connectome.ConnectivityMeasure(cov_estimator=E, kind=K)``
    with its default ``standardize=True``: for ``correlation`` only, each column is
    z-scored (ddof=1) before the estimator is fitted; the other measures fit the raw
    signals. Correlation and partial correlation have a diagonal of exactly 1.

    Parameters
    ----------
    timeseries : ndarray, shape (n_volumes, n_regions)
        Cleaned signals of the kept volumes. Columns with NaN are n/a regions.
    measure : {"correlation", "partialcorrelation", "covariance", "precision"}
        ``"partial correlation"`` is accepted too.
    estimator : {"ledoit_wolf", "empirical", "graphical_lasso"}

    Returns
    -------
    ndarray, shape (n_regions, n_regions)
        Symmetric; NaN rows and columns for n/a regions.
    """
    measure = normalize_measure(measure)
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; allowed: {', '.join(MEASURES)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    ts = np.asarray(timeseries, dtype=np.float64)
    keep = valid_regions(ts)
    if not keep.any():
        return np.full((ts.shape[1], ts.shape[1]), np.nan)
    x = ts[:, keep]
    if not np.isfinite(x).all():
        raise ValueError("time series contain infinite values")
    if measure == "correlation":
        x = zscore_sample(x)
    matrix = _from_covariance(_covariance(x, estimator), measure)
    matrix = (matrix + matrix.T) / 2.0  # exact symmetry (the estimators are symmetric to rounding)
    return _embed(matrix, keep)


# --- tangent space ------------------------------------------------------------------------------


def _eig_map(function, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
    return (eigenvectors * function(eigenvalues)) @ eigenvectors.T


def _sym_function(function, matrix: np.ndarray) -> np.ndarray:
    values, vectors = linalg.eigh(matrix)
    return _eig_map(function, values, vectors)


def _is_spd(matrix: np.ndarray) -> bool:
    if not np.allclose(matrix, matrix.T, rtol=1e-7, atol=0):
        return False
    return bool(linalg.eigvalsh(matrix).min() > 0)


def geometric_mean(
    matrices: list[np.ndarray] | np.ndarray, max_iter: int = 30, tol: float = 1e-7
) -> np.ndarray:
    """Riemannian (affine-invariant) geometric mean of SPD matrices by gradient descent.

    Starts from the arithmetic mean; each step moves along the geodesic by the mean of the
    matrix logarithms of the whitened matrices; the step is halved from the next iteration
    whenever the gradient norm grows; stops when ``||gradient||_F / p**2 < tol``.
    """
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"expected a stack of square matrices, got shape {mats.shape}")
    for m in mats:
        if not _is_spd(m):
            raise ValueError("geometric mean: every matrix must be symmetric positive definite")
    mean = mats.mean(axis=0)
    best_norm = np.inf
    step = 1.0
    norm = np.inf
    for _ in range(max_iter):
        values, vectors = linalg.eigh(mean)
        inv_sqrt = _eig_map(lambda v: np.sqrt(1.0 / v), values, vectors)
        gradient = np.mean([_sym_function(np.log, inv_sqrt @ m @ inv_sqrt) for m in mats], axis=0)
        if np.isnan(gradient).any():
            raise FloatingPointError("geometric mean: NaN after the matrix logarithm")
        norm = float(np.linalg.norm(gradient))
        sqrt = _eig_map(np.sqrt, values, vectors)
        g_values, g_vectors = linalg.eigh(gradient)
        mean = sqrt @ _eig_map(np.exp, g_values * step, g_vectors) @ sqrt
        if norm < best_norm:
            best_norm = norm
        elif norm > best_norm:
            step /= 2.0
            norm = best_norm
        if norm / mean.size < tol:
            break
    else:
        if norm / mean.size >= tol:
            warnings.warn(
                f"geometric mean: tolerance {tol} not reached in {max_iter} iterations",
                RuntimeWarning,
                stacklevel=2,
            )
    return mean


@dataclass
class TangentResult:
    """Group reference (geometric mean), whitening and per-subject tangent matrices."""

    mean: np.ndarray
    whitening: np.ndarray
    matrices: list[np.ndarray] = field(default_factory=list)
    regions: np.ndarray | None = None  # boolean mask of the regions used


def tangent_space(
    timeseries_list: list[np.ndarray], estimator: str = "ledoit_wolf"
) -> TangentResult:
    """Tangent-space embedding (``ConnectivityMeasure(kind="tangent").fit_transform``).

    Covariances of the raw signals (no standardization), their geometric mean
    (max_iter 30, tol 1e-7), whitening ``W = mean^{-1/2}`` and per subject
    ``logm(W C W)``. Regions n/a in any subject are left out for all and are NaN in
    every returned matrix.
    """
    if len(timeseries_list) < 2:
        raise ValueError("tangent space needs at least 2 subjects (deviations from the group)")
    arrays = [np.asarray(ts, dtype=np.float64) for ts in timeseries_list]
    widths = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(widths) != 1 or any(a.ndim != 2 for a in arrays):
        raise ValueError("tangent space: every subject needs the same number of regions")
    keep = np.logical_and.reduce([valid_regions(a) for a in arrays])
    n = keep.size
    if not keep.any():
        nan = np.full((n, n), np.nan)
        return TangentResult(nan, nan.copy(), [nan.copy() for _ in arrays], keep)
    covs = [_covariance(a[:, keep], estimator) for a in arrays]
    mean = geometric_mean(covs, max_iter=30, tol=1e-7)
    whitening = _sym_function(lambda v: 1.0 / np.sqrt(v), mean)
    tangents = [_sym_function(np.log, whitening @ c @ whitening) for c in covs]
    sym = lambda m: (m + m.T) / 2.0  # noqa: E731
    return TangentResult(
        mean=_embed(mean, keep),
        whitening=_embed(whitening, keep),
        matrices=[_embed(sym(t), keep) for t in tangents],
        regions=keep,
    )


def tangent(
    timeseries_list: list[np.ndarray], estimator: str = "ledoit_wolf"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group geometric mean and per-subject tangent matrices (see :func:`tangent_space`)."""
    result = tangent_space(timeseries_list, estimator)
    return result.mean, result.matrices


# --- group averages -----------------------------------------------------------------------------


def fisher_mean(matrices: np.ndarray, clip: float = 1.0 - 1e-7) -> np.ndarray:
    """Mean of correlation matrices through Fisher's z (``tanh(mean(arctanh(r)))``).

    NaN-aware: each entry is averaged over the matrices where it is finite (NaN where
    none is). Off-diagonal values are clipped to ``±clip`` so that ``|r| = 1`` stays finite.
    The diagonal is 1 for every region present in at least one matrix.
    """
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"expected a stack of square matrices, got shape {mats.shape}")
    z = np.arctanh(np.clip(mats, -clip, clip))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN entries -> NaN
        mean = np.tanh(np.nanmean(z, axis=0))
    present = ~np.isnan(np.diagonal(mats, axis1=1, axis2=2)).all(axis=0)
    diag = np.where(present, 1.0, np.nan)
    np.fill_diagonal(mean, diag)
    return (mean + mean.T) / 2.0


def arithmetic_mean(matrices: np.ndarray) -> np.ndarray:
    """NaN-aware arithmetic mean of a stack of matrices, symmetrized."""
    mats = np.asarray(matrices, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(mats, axis=0)
    return (mean + mean.T) / 2.0


def group_mean(matrices: np.ndarray, measure: str) -> np.ndarray:
    """Fisher-z mean for (partial) correlations, arithmetic mean otherwise."""
    if normalize_measure(measure) in CORRELATION_LIKE:
        return fisher_mean(matrices)
    return arithmetic_mean(matrices)


# --- QC-FC --------------------------------------------------------------------------------------


@dataclass
class QCFCResult:
    """Per-edge QC-FC (lower triangle, ``np.tril_indices(n, -1)`` order) and summary."""

    rows: np.ndarray  # edge row index
    cols: np.ndarray  # edge column index
    r: np.ndarray  # correlation across subjects between mean FD and the edge value
    p: np.ndarray  # two-sided p-value
    n: np.ndarray  # subjects used for each edge
    distance: np.ndarray | None  # Euclidean distance between the two regions (mm)
    summary: dict


def _residualize(values: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(covariates)), covariates])
    beta, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ beta


def qc_fc(
    mean_fd: np.ndarray,
    matrices: np.ndarray,
    coordinates: np.ndarray | None = None,
    covariates: np.ndarray | None = None,
    alpha: float = 0.05,
) -> QCFCResult:
    """QC-FC: for each edge, the correlation across subjects between mean FD and connectivity.

    The denoising benchmark of Ciric et al. (2017) and Parkes et al. (2018).

    Parameters
    ----------
    mean_fd : ndarray, shape (n_subjects,)
        Mean framewise displacement of each subject (mm).
    matrices : ndarray, shape (n_subjects, n_regions, n_regions)
        One connectivity matrix per subject; NaN entries are left out edge by edge.
    coordinates : ndarray, shape (n_regions, 3), optional
        Region centres in world mm; enables the distance dependence.
    covariates : ndarray, shape (n_subjects, k), optional
        Nuisance variables (e.g. age, sex): partial correlation instead of Pearson's.
        Requires complete data (no NaN edge values).
    alpha : float
        Significance level of the summary.

    Returns
    -------
    QCFCResult
        Summary keys: ``MedianAbsQCFC``, ``MeanAbsQCFC``, ``PercentEdgesSignificant``
        (uncorrected p < alpha), ``PercentEdgesSignificantFDR`` (Benjamini-Hochberg),
        ``DistanceDependence`` (Spearman rho between QC-FC and distance) and
        ``DistanceDependenceAbs`` (with |QC-FC|), ``NumberOfSubjects``, ``NumberOfEdges``.
    """
    from scipy import stats

    fd = np.asarray(mean_fd, dtype=np.float64)
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[0] != fd.size or mats.shape[1] != mats.shape[2]:
        raise ValueError(
            f"qc_fc: need (n_subjects, n, n) matrices for {fd.size} subjects, got {mats.shape}"
        )
    n_regions = mats.shape[1]
    rows, cols = np.tril_indices(n_regions, -1)
    values = mats[:, rows, cols]  # (n_subjects, n_edges)
    ok = np.isfinite(values) & np.isfinite(fd)[:, None]
    n_covariates = 0
    if covariates is not None:
        cov = np.asarray(covariates, dtype=np.float64).reshape(fd.size, -1)
        n_covariates = cov.shape[1]
        complete = ok.all(axis=1)
        fd_res = np.full_like(fd, np.nan)
        fd_res[complete] = _residualize(fd[complete], cov[complete])
        values = values.copy()
        values[complete] = _residualize(values[complete], cov[complete])
        values[~complete] = np.nan
        fd = fd_res
        ok = np.isfinite(values) & np.isfinite(fd)[:, None]
    n = ok.sum(axis=0)
    x = np.where(ok, fd[:, None], 0.0)
    y = np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = x.sum(axis=0) / n
        my = y.sum(axis=0) / n
        dx = np.where(ok, x - mx, 0.0)
        dy = np.where(ok, y - my, 0.0)
        r = (dx * dy).sum(axis=0) / np.sqrt((dx**2).sum(axis=0) * (dy**2).sum(axis=0))
        r = np.clip(r, -1.0, 1.0)
        dof = n - 2 - n_covariates
        t = r * np.sqrt(dof / np.maximum(1.0 - r**2, 1e-300))
        p = 2.0 * stats.t.sf(np.abs(t), dof)
    bad = (dof < 1) | ~np.isfinite(r)
    r[bad] = np.nan
    p[bad] = np.nan
    p[~bad & (np.abs(r) == 1.0)] = 0.0
    distance = None
    if coordinates is not None:
        xyz = np.asarray(coordinates, dtype=np.float64)
        distance = np.linalg.norm(xyz[rows] - xyz[cols], axis=1)
    summary = qc_fc_summary(r, p, distance, alpha)
    summary["NumberOfSubjects"] = int(fd.size)
    summary["Covariates"] = n_covariates
    return QCFCResult(rows, cols, r, p, n, distance, summary)


def qc_fc_summary(
    r: np.ndarray, p: np.ndarray, distance: np.ndarray | None = None, alpha: float = 0.05
) -> dict:
    """Summary statistics of per-edge QC-FC values (NaN edges left out)."""
    from scipy import stats

    valid = np.isfinite(r) & np.isfinite(p)
    out: dict = {
        "NumberOfEdges": int(r.size),
        "NumberOfEdgesTested": int(valid.sum()),
        "Alpha": alpha,
        "MedianAbsQCFC": None,
        "MeanAbsQCFC": None,
        "MeanQCFC": None,
        "PercentEdgesSignificant": None,
        "PercentEdgesSignificantFDR": None,
        "DistanceDependence": None,
        "DistanceDependenceAbs": None,
    }
    if not valid.any():
        return out
    rv, pv = r[valid], p[valid]
    out["MedianAbsQCFC"] = float(np.median(np.abs(rv)))
    out["MeanAbsQCFC"] = float(np.mean(np.abs(rv)))
    out["MeanQCFC"] = float(np.mean(rv))
    out["PercentEdgesSignificant"] = float(100.0 * np.mean(pv < alpha))
    out["PercentEdgesSignificantFDR"] = float(
        100.0 * np.mean(stats.false_discovery_control(pv, method="bh") < alpha)
    )
    if distance is not None and valid.sum() > 2:
        d = distance[valid]
        if np.ptp(d) > 0 and np.ptp(rv) > 0:
            out["DistanceDependence"] = float(stats.spearmanr(rv, d).statistic)
            out["DistanceDependenceAbs"] = float(stats.spearmanr(np.abs(rv), d).statistic)
    return out


__all__ = [
    "MEASURES",
    "ESTIMATORS",
    "make_estimator",
    "connectivity_matrix",
    "geometric_mean",
    "tangent",
    "tangent_space",
    "TangentResult",
    "fisher_mean",
    "arithmetic_mean",
    "group_mean",
    "qc_fc",
    "qc_fc_summary",
    "QCFCResult",
]

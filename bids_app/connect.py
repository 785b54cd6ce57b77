"""Connectivity measures (nilearn 0.14.1 ``ConnectivityMeasure`` semantics) and group statistics.

Pure numeric functions, no file I/O. Region time series come as ``(n_volumes, n_regions)``
float arrays; a column containing NaN is an ``n/a`` region (no usable signal in at least part
of the data): it is left out of every estimate and comes back as NaN rows and columns.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from .vocabulary import CORRELATION_LIKE, ESTIMATORS, INVERSE_MEASURES, normalize_measure
from .vocabulary import PARTICIPANT_MEASURES as MEASURES

log = logging.getLogger(__name__)

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


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """``sklearn.covariance.LedoitWolf().fit(x).covariance_``, in NumPy.

    The same arithmetic as scikit-learn 1.x (centred data, shrinkage from the squared
    products summed over all features at once, i.e. one block up to 1000 features), so
    equal to it to the last bits or nearly (tests/test_connect.py); written here because
    importing scikit-learn costs seconds in every fresh process of a cohort.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    n_samples, n_features = x.shape
    if n_features == 1:
        return np.atleast_2d((x**2).mean())
    if n_features > 1000:  # scikit-learn sums the shrinkage terms by blocks of features
        return make_estimator("ledoit_wolf").fit(x).covariance_
    x2 = x**2
    emp_cov_trace = np.sum(x2, axis=0) / n_samples
    mu = np.sum(emp_cov_trace) / n_features
    beta_ = np.sum(np.dot(x2.T, x2))
    delta_ = np.sum(np.dot(x.T, x) ** 2) / n_samples**2
    beta = 1.0 / (n_features * n_samples) * (beta_ / n_samples - delta_)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + n_features * mu**2) / n_features
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov = np.dot(x.T, x) / n_samples
    mu = np.sum(np.trace(cov)) / n_features
    cov = (1.0 - shrinkage) * cov
    cov.flat[:: n_features + 1] += shrinkage * mu
    return cov


def _covariance(x: np.ndarray, estimator: str) -> np.ndarray:
    if estimator == "ledoit_wolf":
        return ledoit_wolf(x)
    if estimator == "empirical":  # EmpiricalCovariance().fit(x).covariance_
        return np.atleast_2d(np.cov(np.asarray(x, dtype=np.float64).T, bias=True))
    return make_estimator(estimator).fit(x).covariance_


def _from_covariance(cov: np.ndarray, measure: str) -> np.ndarray:
    if measure not in INVERSE_MEASURES:
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
#
# Cohort scale: a (n_subjects, p, p) float64 stack is the only full-size array. Everything else is
# processed in chunks of whole matrices (tangent, _CHUNK_BYTES) or blocks of rows / edges (group
# statistics, _BLOCK_BYTES), so temporaries stay a small fraction of the stack. Every matrix is
# processed on its own, and sums run over the subjects in order, so results do not depend on the
# chunk boundaries.

_CHUNK_BYTES = 32 * 2**20  # size of one (k, p, p) chunk temporary
_BLOCK_BYTES = 16 * 2**20  # size of one row / edge block temporary of the group statistics
_blas_controller = None


def _chunk_length(p: int, chunk_size: int | None = None) -> int:
    """Matrices per chunk: ``chunk_size`` if given, else as many (p, p) matrices as fit in
    ``_CHUNK_BYTES``."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, _CHUNK_BYTES // (8 * p * p))


@contextmanager
def _one_blas_thread():
    """Run the enclosed block with a single BLAS thread.

    The tangent path does one small LAPACK/BLAS call per matrix (a few hundred regions), which
    gains little from OpenBLAS threads; on an oversubscribed machine (other processes on the
    cores, or a job given fewer cores than OpenBLAS sees) threaded ``syevd`` / ``syrk`` were
    measured 2-20x slower than single-threaded (50 ms for one 60 x 60 ``eigh``). One thread
    also makes the results independent of the core count.
    """
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController()
    if not _blas_controller:  # pragma: no cover
        yield
        return
    with _blas_controller.limit(limits=1, user_api="blas"):
        yield


def _eig_map(function, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
    return (eigenvectors * function(eigenvalues)) @ eigenvectors.T


def _sym_function(function, matrix: np.ndarray) -> np.ndarray:
    """``function`` applied to the eigenvalues of one symmetric matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return _eig_map(function, values, vectors)


def _as_stack(matrices, name: str = "matrices") -> np.ndarray:
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"{name}: expected a stack of square matrices, got shape {mats.shape}")
    return mats


def _check_spd(stack: np.ndarray, chunk: int) -> None:
    """Raise ValueError unless every matrix is SPD as nilearn checks it.

    Symmetric to ``rtol=1e-7`` (``np.allclose(m, m.T, rtol=1e-7, atol=0)``) and smallest
    eigenvalue (``eigvalsh``) above 0; the message names the first failing matrix.
    """
    for start in range(0, stack.shape[0], chunk):
        block = stack[start : start + chunk]
        mirror = block.transpose(0, 2, 1)
        finite = np.isfinite(block).all(axis=(1, 2))
        with np.errstate(invalid="ignore"):
            symmetric = (np.abs(block - mirror) <= 1e-7 * np.abs(mirror)).all(axis=(1, 2))
        smallest = np.full(len(block), np.nan)
        checkable = finite & symmetric
        if checkable.all():
            smallest = np.linalg.eigvalsh(block).min(axis=1)
        elif checkable.any():
            smallest[checkable] = np.linalg.eigvalsh(block[checkable]).min(axis=1)
        failed = np.flatnonzero(~(smallest > 0))
        if failed.size:
            i = failed[0]
            if not finite[i]:
                why = "has non-finite values"
            elif not symmetric[i]:
                why = "is not symmetric to rtol 1e-7"
            else:
                why = f"has smallest eigenvalue {smallest[i]:.3g}"
            raise ValueError(
                "geometric mean: every matrix must be symmetric positive definite "
                f"(matrix {start + i} {why})"
            )


def _in_halves(work, n: int) -> list:
    """``[work(0, h), work(h, n)]`` with ``h = ceil(n / 2)``, in two threads when there are
    two cores (LAPACK and BLAS release the GIL). The split depends on ``n`` only, so the
    results do not depend on the machine."""
    half = (n + 1) // 2
    ranges = [(0, half), (half, n)]
    if (os.cpu_count() or 1) >= 2 and n >= 2:
        with ThreadPoolExecutor(2, thread_name_prefix="bids-connectome-tangent") as pool:
            return list(pool.map(lambda r: work(*r), ranges))
    return [work(*r) for r in ranges]


def _whitened_log_sum(stack: np.ndarray, chol: np.ndarray, chunk: int) -> np.ndarray:
    """``sum_k logm(L^-1 C_k L^-T)`` for the Cholesky factor ``L`` of the current mean.

    ``L^-1 C L^-T = R (G^-1/2 C G^-1/2) R^T`` with ``R = L^-1 G^1/2`` orthogonal, so this is the
    sum of the symmetric-whitened logarithms rotated by ``R`` (see :func:`_geometric_mean_stack`).
    The congruence is one ``dsygst`` per matrix (a quarter of the flops of two products) and each
    logarithm ``U diag(l) U^T`` is accumulated with two rank-k updates (``dsyrk``, again half a
    product) of the eigenvectors scaled by ``sqrt(|l|)``: negative ``l`` (eigenvalues below 1)
    come first in the ascending order of ``eigh``.
    """
    chol_f = np.asfortranarray(chol)
    first, second = _in_halves(
        lambda start, stop: _whitened_log_sum_range(stack, chol_f, start, stop, chunk),
        stack.shape[0],
    )
    acc = first + second
    return np.triu(acc) + np.triu(acc, 1).T


def _whitened_log_sum_range(
    stack: np.ndarray, chol_f: np.ndarray, start: int, stop: int, chunk: int
) -> np.ndarray:
    """The sum of :func:`_whitened_log_sum` over ``stack[start:stop]``, upper triangle only."""
    p = stack.shape[1]
    acc = np.zeros((p, p), order="F")  # upper triangle used
    if stop <= start:
        return acc
    buffer = np.empty((min(chunk, stop - start), p, p))
    for first in range(start, stop, chunk):
        block = buffer[: min(chunk, stop - first)]
        np.copyto(block, stack[first : first + len(block)])
        for matrix in block:
            # matrix.T is the same symmetric matrix in Fortran order: dsygst overwrites its
            # lower triangle, the upper triangle of ``matrix``
            _, info = linalg.lapack.dsygst(matrix.T, chol_f, itype=1, lower=1, overwrite_a=1)
            if info != 0:  # pragma: no cover - only for invalid arguments
                raise FloatingPointError(f"geometric mean: dsygst failed (info={info})")
        values, vectors = np.linalg.eigh(block, UPLO="U")
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(values)
            # rows of block[i] = eigenvectors scaled by sqrt(|log|) (a non-finite log stays so)
            np.multiply(vectors.transpose(0, 2, 1), np.sqrt(np.abs(logs))[:, :, None], out=block)
        n_negative = (logs < 0).sum(axis=1)
        for rows, m in zip(block, n_negative, strict=True):
            if m > 0:
                acc = linalg.blas.dsyrk(-1.0, rows[:m].T, beta=1.0, c=acc, overwrite_c=1)
            if m < p:
                acc = linalg.blas.dsyrk(1.0, rows[m:].T, beta=1.0, c=acc, overwrite_c=1)
    return acc


def _geometric_mean_stack(
    stack: np.ndarray, max_iter: int, tol: float, chunk: int
) -> tuple[np.ndarray, float]:
    """Geometric mean of an SPD stack (already checked) and the last gradient norm.

    The iterates are nilearn's: ``G <- G^1/2 expm(step grad) G^1/2`` with
    ``grad = mean_k logm(G^-1/2 C_k G^-1/2)``. With ``G = L L^T`` and ``R = L^-1 G^1/2``
    (orthogonal, ``L R = G^1/2``) the same step is ``L expm(step grad') L^T`` with
    ``grad' = R grad R^T = mean_k logm(L^-1 C_k L^-T)``, which has the same Frobenius norm.
    """
    n, p, _ = stack.shape
    mean = stack.mean(axis=0)
    best_norm = np.inf
    step = 1.0
    norm = np.inf
    for _ in range(max_iter):
        try:
            chol = np.linalg.cholesky(mean)
        except np.linalg.LinAlgError as err:
            raise FloatingPointError("geometric mean: the mean is not positive definite") from err
        gradient = _whitened_log_sum(stack, chol, chunk)
        gradient /= n
        if not np.isfinite(gradient).all():
            raise FloatingPointError("geometric mean: NaN after the matrix logarithm")
        norm = float(np.linalg.norm(gradient))
        g_values, g_vectors = np.linalg.eigh(gradient)
        mean = chol @ _eig_map(np.exp, g_values * step, g_vectors) @ chol.T
        mean = (mean + mean.T) / 2.0
        if norm < best_norm:
            best_norm = norm
        elif norm > best_norm:
            step /= 2.0  # used from the next iteration, as nilearn
            norm = best_norm
        if norm / mean.size < tol:
            break
    return mean, norm


def _warn_not_converged(norm: float, p: int, max_iter: int, tol: float) -> None:
    if norm / (p * p) >= tol:
        warnings.warn(
            f"geometric mean: tolerance {tol} not reached in {max_iter} iterations",
            RuntimeWarning,
            stacklevel=3,
        )


def geometric_mean(
    matrices: list[np.ndarray] | np.ndarray, max_iter: int = 30, tol: float = 1e-7
) -> np.ndarray:
    """Riemannian (affine-invariant) geometric mean of SPD matrices by gradient descent.

    Starts from the arithmetic mean; each step moves along the geodesic by the mean of the
    matrix logarithms of the whitened matrices; the step is halved from the next iteration
    whenever the gradient norm grows; stops when ``||gradient||_F / p**2 < tol`` (nilearn's
    ``_geometric_mean``). Computed in chunks of matrices with stacked eigendecompositions.
    """
    mats = _as_stack(matrices, "geometric mean")
    chunk = _chunk_length(mats.shape[1])
    with _one_blas_thread():
        _check_spd(mats, chunk)
        mean, norm = _geometric_mean_stack(mats, max_iter, tol, chunk)
    _warn_not_converged(norm, mats.shape[1], max_iter, tol)
    return mean


def _tangent_transform(
    stack: np.ndarray, whitening: np.ndarray, out: np.ndarray, chunk: int
) -> None:
    """``out[k] = logm(W C_k W)`` symmetrized, chunk by chunk (``out`` may be ``stack``)."""

    def work(start: int, stop: int) -> None:
        p = stack.shape[1]
        first = np.empty((min(chunk, max(stop - start, 1)), p, p))
        second = np.empty_like(first)
        for begin in range(start, stop, chunk):
            end = min(begin + chunk, stop)
            a, b = first[: end - begin], second[: end - begin]
            np.matmul(whitening, stack[begin:end], out=a)
            np.matmul(a, whitening, out=b)
            values, vectors = np.linalg.eigh(b)
            np.multiply(vectors, np.log(values)[:, None, :], out=a)
            np.matmul(a, vectors.transpose(0, 2, 1), out=b)
            target = out[begin:end]
            np.add(b, b.transpose(0, 2, 1), out=target)
            target *= 0.5

    _in_halves(work, stack.shape[0])


def tangent_from_covariances(
    covs: np.ndarray,
    out: np.ndarray | None = None,
    *,
    max_iter: int = 30,
    tol: float = 1e-7,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-space embedding of a stack of covariances, written in place.

    ``ConnectivityMeasure(kind="tangent")`` on covariances that are already estimated: the
    geometric mean ``G`` of the stack (max_iter 30, tol 1e-7), the whitening ``W = G^-1/2`` and
    per subject ``logm(W C W)`` (symmetrized).

    Parameters
    ----------
    covs : ndarray of float64, shape (n_subjects, p, p)
        Symmetric positive definite covariances, n_subjects >= 2. Overwritten by the tangent
        matrices unless ``out`` is given; read only until the last pass.
    out : ndarray of float64, shape (n_subjects, p, p), optional
        Where to write the tangent matrices instead (must not partly overlap ``covs``).
    max_iter, tol : int, float
        Geometric-mean stopping rule (nilearn's ``ConnectivityMeasure`` values by default).
    chunk_size : int, optional
        Matrices processed at once; by default as many as fit in 32 MiB (26 at p = 400).

    Returns
    -------
    mean, whitening : ndarray, shape (p, p)
        The geometric mean and ``mean^-1/2``.

    Notes
    -----
    Peak memory is the stack (and ``out``) plus about five chunks of matrices: the
    covariances are never copied as a whole and the matrix logarithms are accumulated chunk
    by chunk. Results do not depend on ``chunk_size``. BLAS runs single-threaded here (see
    ``_one_blas_thread``).

    Raises
    ------
    ValueError
        If a covariance is not symmetric positive definite (the first one is named).
    """
    if not isinstance(covs, np.ndarray) or covs.dtype != np.float64:
        raise TypeError("tangent_from_covariances: covs must be a float64 ndarray")
    _as_stack(covs, "tangent_from_covariances")
    n, p, _ = covs.shape
    if n < 2:
        raise ValueError("tangent space needs at least 2 subjects (deviations from the group)")
    if out is None:
        out = covs
    elif out is not covs:
        if not isinstance(out, np.ndarray) or out.shape != covs.shape or out.dtype != np.float64:
            raise ValueError(f"tangent_from_covariances: out must be a float64 {covs.shape} array")
        aliased = out.ctypes.data == covs.ctypes.data and out.strides == covs.strides
        if not aliased and np.may_share_memory(out, covs):
            raise ValueError("tangent_from_covariances: out partly overlaps covs")
    chunk = _chunk_length(p, chunk_size)
    with _one_blas_thread():
        _check_spd(covs, chunk)
        mean, norm = _geometric_mean_stack(covs, max_iter, tol, chunk)
        _warn_not_converged(norm, p, max_iter, tol)
        whitening = _sym_function(lambda v: 1.0 / np.sqrt(v), mean)
        _tangent_transform(covs, whitening, out, chunk)
    return mean, whitening


@dataclass
class TangentResult:
    """Group reference (geometric mean), whitening and per-subject tangent matrices."""

    mean: np.ndarray
    whitening: np.ndarray
    matrices: list[np.ndarray] = field(default_factory=list)
    regions: np.ndarray | None = None  # boolean mask of the regions used


def covariance(timeseries: np.ndarray, estimator: str = "ledoit_wolf") -> np.ndarray:
    """The covariance nilearn's tangent kind uses: ``estimator.fit(x).covariance_``.

    Raw signals (no standardization), every column used; for one subject at a time, e.g. to
    fill the stack given to :func:`tangent_from_covariances` without holding every subject's
    time series. Single BLAS thread, as the tangent path.

    Parameters
    ----------
    timeseries : ndarray, shape (n_volumes, k)
        Finite signals of the regions to use.
    estimator : {"ledoit_wolf", "empirical", "graphical_lasso"}

    Returns
    -------
    ndarray of float64, shape (k, k)
    """
    x = np.asarray(timeseries, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a (n_volumes, n_regions) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("time series contain non-finite values in the regions used")
    with _one_blas_thread():  # LedoitWolf threaded was ~5x slower on a busy 2-core machine
        return _covariance(x, estimator)


def _covariance_stack(
    arrays: list[np.ndarray], keep: np.ndarray, estimator: str, out: np.ndarray
) -> np.ndarray:
    """``out[i] = covariance(arrays[i][:, keep])``, one subject at a time."""
    for i, ts in enumerate(arrays):
        out[i] = covariance(ts[:, keep], estimator)
    return out


def _expand_in_place(buffer: np.ndarray, n_subjects: int, keep: np.ndarray) -> np.ndarray:
    """Turn the compact (n_subjects, k, k) stack at the start of the flat ``buffer`` into an
    (n_subjects, n, n) stack with NaN rows/columns outside ``keep``, in the same memory.

    Subject ``i`` moves from offset ``i k^2`` to ``i n^2 >= i k^2``; going from the last subject
    down, a destination never covers a compact block still to be moved.
    """
    n, k = keep.size, int(keep.sum())
    index = np.ix_(keep, keep)
    for i in range(n_subjects - 1, -1, -1):
        block = buffer[i * k * k : (i + 1) * k * k].reshape(k, k).copy()
        target = buffer[i * n * n : (i + 1) * n * n].reshape(n, n)
        target.fill(np.nan)
        target[index] = block
    return buffer[: n_subjects * n * n].reshape(n_subjects, n, n)


def tangent_space(
    timeseries_list: list[np.ndarray], estimator: str = "ledoit_wolf"
) -> TangentResult:
    """Tangent-space embedding (``ConnectivityMeasure(kind="tangent").fit_transform``).

    Covariances of the raw signals (no standardization), their geometric mean
    (max_iter 30, tol 1e-7), whitening ``W = mean^{-1/2}`` and per subject
    ``logm(W C W)``. Regions n/a in any subject are left out for all and are NaN in
    every returned matrix. The per-subject matrices are views of one (n_subjects, n, n) stack,
    the only full-size array (see :func:`tangent_from_covariances`).
    """
    if len(timeseries_list) < 2:
        raise ValueError("tangent space needs at least 2 subjects (deviations from the group)")
    arrays = [np.asarray(ts, dtype=np.float64) for ts in timeseries_list]
    widths = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(widths) != 1 or any(a.ndim != 2 for a in arrays):
        raise ValueError("tangent space: every subject needs the same number of regions")
    keep = np.logical_and.reduce([valid_regions(a) for a in arrays])
    n, n_subjects = keep.size, len(arrays)
    if not keep.any():
        nan = np.full((n, n), np.nan)
        return TangentResult(nan, nan.copy(), [nan.copy() for _ in arrays], keep)
    k = int(keep.sum())
    buffer = np.empty(n_subjects * n * n)
    compact = buffer[: n_subjects * k * k].reshape(n_subjects, k, k)
    covs = _covariance_stack(arrays, keep, estimator, out=compact)
    mean, whitening = tangent_from_covariances(covs)
    stack = _expand_in_place(buffer, n_subjects, keep)
    return TangentResult(
        mean=_embed(mean, keep),
        whitening=_embed(whitening, keep),
        matrices=list(stack),
        regions=keep,
    )


def tangent(
    timeseries_list: list[np.ndarray], estimator: str = "ledoit_wolf"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group geometric mean and per-subject tangent matrices (see :func:`tangent_space`)."""
    result = tangent_space(timeseries_list, estimator)
    return result.mean, result.matrices


# --- group averages -----------------------------------------------------------------------------


def _blocks(n_items: int, bytes_per_item: int):
    """``(start, stop)`` ranges of items such that one block is about ``_BLOCK_BYTES``."""
    size = max(1, _BLOCK_BYTES // max(1, bytes_per_item))
    for start in range(0, n_items, size):
        yield start, min(start + size, n_items)


def _nanmean_first_axis(values: np.ndarray) -> np.ndarray:
    """``np.nanmean(values, axis=0)`` (same arithmetic) that overwrites ``values``' NaN by 0."""
    missing = np.isnan(values)
    values[missing] = 0.0
    count = values.shape[0] - missing.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN entries -> 0/0 = NaN
        return values.sum(axis=0) / count


def fisher_mean(matrices: np.ndarray, clip: float = 1.0 - 1e-7) -> np.ndarray:
    """Mean of correlation matrices through Fisher's z (``tanh(mean(arctanh(r)))``).

    NaN-aware: each entry is averaged over the matrices where it is finite (NaN where
    none is). Off-diagonal values are clipped to ``±clip`` so that ``|r| = 1`` stays finite.
    The diagonal is 1 for every region present in at least one matrix. Computed by blocks of
    rows, so temporaries stay small next to the (n_matrices, n, n) stack.
    """
    mats = _as_stack(matrices, "fisher_mean")
    n_matrices, n, _ = mats.shape
    mean = np.empty((n, n))
    for start, stop in _blocks(n, 8 * n_matrices * n):
        z = np.clip(mats[:, start:stop], -clip, clip)
        np.arctanh(z, out=z)
        mean[start:stop] = _nanmean_first_axis(z)
    np.tanh(mean, out=mean)
    present = ~np.isnan(np.diagonal(mats, axis1=1, axis2=2)).all(axis=0)
    np.fill_diagonal(mean, np.where(present, 1.0, np.nan))
    return (mean + mean.T) / 2.0


def arithmetic_mean(matrices: np.ndarray) -> np.ndarray:
    """NaN-aware arithmetic mean of a stack of matrices, symmetrized (by blocks of rows)."""
    mats = _as_stack(matrices, "arithmetic_mean")
    n_matrices, n, _ = mats.shape
    mean = np.empty((n, n))
    for start, stop in _blocks(n, 8 * n_matrices * n):
        mean[start:stop] = _nanmean_first_axis(mats[:, start:stop].copy())
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


def _edge_correlation(
    fd: np.ndarray, values: np.ndarray, n_covariates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson r, two-sided p and n between ``fd`` and each column of ``values``, finite pairs."""
    from scipy import stats

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
    return r, p, n


def qc_fc(
    mean_fd: np.ndarray,
    matrices: np.ndarray,
    coordinates: np.ndarray | None = None,
    covariates: np.ndarray | None = None,
    alpha: float = 0.05,
) -> QCFCResult:
    """QC-FC: for each edge, the correlation across subjects between mean FD and connectivity.

    The denoising benchmark of Ciric et al. (2017) and Parkes et al. (2018). Computed by
    blocks of edges, so temporaries stay small next to the (n_subjects, n, n) stack.

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
    fd = np.asarray(mean_fd, dtype=np.float64)
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[0] != fd.size or mats.shape[1] != mats.shape[2]:
        raise ValueError(
            f"qc_fc: need (n_subjects, n, n) matrices for {fd.size} subjects, got {mats.shape}"
        )
    n_subjects, n_regions = fd.size, mats.shape[1]
    rows, cols = np.tril_indices(n_regions, -1)
    n_edges = rows.size
    n_covariates = 0
    complete = cov = None
    if covariates is not None:
        cov = np.asarray(covariates, dtype=np.float64).reshape(fd.size, -1)
        n_covariates = cov.shape[1]
        # subjects with a finite FD and every edge finite (vacuously true without edges)
        complete = np.ones(n_subjects, dtype=bool) if n_edges == 0 else np.isfinite(fd)
        for start, stop in _blocks(n_subjects, 8 * n_edges):
            edges = mats[start:stop][:, rows, cols]
            complete[start:stop] &= np.isfinite(edges).all(axis=1)
        fd_res = np.full_like(fd, np.nan)
        fd_res[complete] = _residualize(fd[complete], cov[complete])
        fd = fd_res
    r = np.empty(n_edges)
    p = np.empty(n_edges)
    n = np.empty(n_edges, dtype=np.intp)
    for start, stop in _blocks(n_edges, 8 * n_subjects):
        values = mats[:, rows[start:stop], cols[start:stop]]  # (n_subjects, block)
        if complete is not None:
            values[complete] = _residualize(values[complete], cov[complete])
            values[~complete] = np.nan
        r[start:stop], p[start:stop], n[start:stop] = _edge_correlation(fd, values, n_covariates)
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
    "tangent_from_covariances",
    "covariance",
    "TangentResult",
    "fisher_mean",
    "arithmetic_mean",
    "group_mean",
    "qc_fc",
    "qc_fc_summary",
    "QCFCResult",
]

"""Signal cleaning of region time series: nilearn 0.14.1 ``signal.clean`` semantics, vectorised.

Order of operations (as nilearn, for one run):

1. ``filter="cosine"``: DCT-II drift regressors on the full (uncensored) length,
   appended after the confounds unless a confound already correlates > 0.9 with one.
2. Censoring. With a Butterworth cutoff, censored volumes inside the kept range are
   replaced by a cubic spline through the kept volumes and volumes before the
   first / after the last kept one are dropped; the filter then runs on that
   series and the censored volumes are removed after filtering. Otherwise the
   censored rows are simply removed here.
3. Linear detrend of signals and confounds (optional).
4. Butterworth filter (order 5, zero phase, second-order sections) of signals
   and confounds; censoring if it was deferred.
5. Confound projection: confounds z-scored (or max-abs scaled), pivoted QR,
   ``signals -= Q Q^T signals``.
6. Standardisation: ``zscore_sample`` (ddof 1) or ``psc``.

Unlike nilearn 0.14.1, step 2 interpolates exactly the censored volumes
(docs/differences-from-nilearn.md). Columns with any non-finite value (empty
regions) come out all-NaN and do not influence the other columns.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
ORDER = 5


def _zscore(x: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Columns centred and scaled to unit sample deviation (constant columns: centred);
    in place with ``overwrite``."""
    if not overwrite:
        x = x.copy()
    x -= x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    std[std < EPS64] = 1.0
    x /= std
    return x


def linear_detrend(x: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Remove each column's least-squares line (mean and linear trend); returns a copy, or
    ``x`` itself changed in place with ``overwrite`` (a float64 array).

    ``scipy.signal.detrend(x, axis=0, type="linear")``, with its arithmetic (the same
    design matrix and ``scipy.linalg.lstsq``): the same bits, without importing
    ``scipy.signal`` (0.4 s per process).
    """
    if not (overwrite and isinstance(x, np.ndarray) and x.dtype == np.float64):
        x = np.array(x, dtype=np.result_type(x, np.float64), copy=True)
    n = x.shape[0]
    design = np.ones((n, 2), dtype=x.dtype)
    design[:, 0] = np.arange(1, n + 1, dtype=x.dtype) / n
    from scipy import linalg  # on use: the exclusion check imports this module before extraction

    coef, *_ = linalg.lstsq(design, x)
    x -= design @ coef
    return x


def cosine_drifts(n: int, high_pass: float, t_r: float) -> np.ndarray:
    """DCT-II drift regressors (without the constant) with frequencies up to ``high_pass``."""
    order = min(n - 1, int(np.floor(2 * n * high_pass * t_r)))
    k = np.arange(n)[:, None] + 0.5
    j = np.arange(1, order + 1)[None, :]
    return np.sqrt(2.0 / n) * np.cos(np.pi / n * k * j)


def _cutoffs(
    low_pass: float | None, high_pass: float | None, t_r: float
) -> tuple[float | list[float], str] | None:
    fs = 1.0 / t_r
    nyq = fs / 2

    def clip(freq: float) -> float:
        if freq >= nyq:
            return nyq - nyq * 10 * EPS32
        if freq < 0:
            return nyq * EPS32
        return freq

    if high_pass is not None and low_pass is not None:
        band = [clip(high_pass), clip(low_pass)]
        if band[0] == band[1]:
            return None
        return band, "band"
    if high_pass is not None:
        return clip(high_pass), "high"
    if low_pass is not None:
        return clip(low_pass), "low"
    return None


def butterworth_sos(
    low_pass: float | None, high_pass: float | None, t_r: float
) -> np.ndarray | None:
    """Second-order sections of the order-5 digital Butterworth filter; None without a cutoff.

    The design of ``scipy.signal.butter(5, ..., output="sos", fs=1 / t_r)``: analog
    prototype, frequency transform of the prewarped cutoffs, bilinear transform, sections
    paired and ordered as ``zpk2sos`` does, the gain in the first one. Written here because importing ``scipy.signal`` costs about
    0.4 s per process (SciPy parses docstrings at import), a fifth of a participant job.
    """
    cut = _cutoffs(low_pass, high_pass, t_r)
    if cut is None:
        return None
    wn, btype = cut
    # cutoffs as fractions of Nyquist, prewarped for a bilinear transform at fs = 2
    warped = 4.0 * np.tan(np.pi * (2.0 * t_r * np.asarray(wn, dtype=float)) / 2.0)
    proto = -np.exp(1j * np.pi * np.arange(-ORDER + 1, ORDER, 2) / (2 * ORDER))
    if btype == "low":
        poles, n_zeros, gain = proto * warped, 0, warped**ORDER
    elif btype == "high":
        poles, n_zeros, gain = warped / proto, ORDER, np.real(1.0 / np.prod(-proto))
    else:
        width, center = warped[1] - warped[0], np.sqrt(warped[0] * warped[1])
        half = proto * width / 2.0
        root = np.sqrt(half**2 - center**2)
        poles, n_zeros, gain = np.concatenate([half + root, half - root]), ORDER, width**ORDER
    gain = gain * np.real(4.0**n_zeros / np.prod(4.0 - poles))
    poles = (4.0 + poles) / (4.0 - poles)

    # Sections as scipy.signal.zpk2sos (pairing "nearest"): from the last section on, the
    # pole closest to the unit circle with its conjugate (or the nearest real pole) and the
    # zeros (all at +1 or -1) nearest to them; an odd order pads a pole and a zero at 0.
    zeros = {"low": [-1.0] * ORDER, "high": [1.0] * ORDER, "band": [1.0] * ORDER + [-1.0] * ORDER}
    zeros = zeros[btype]
    tol = 100 * EPS64 * np.abs(poles)
    left = list(poles[poles.imag > tol]) + list(poles[np.abs(poles.imag) <= tol].real)
    if len(zeros) % 2:
        left.append(0.0)
        zeros.append(0.0)
    sos = np.zeros((len(zeros) // 2, 6))

    def nearest(values: list, to: complex, real_only: bool = False) -> int:
        candidates = [i for i, v in enumerate(values) if not real_only or np.isreal(v)]
        return min(candidates, key=lambda i: abs(values[i] - to))

    for row in sos[::-1]:
        p1 = left.pop(int(np.argmin([abs(1.0 - abs(p)) for p in left])))
        z1 = zeros.pop(nearest(zeros, p1))
        if np.iscomplex(p1):
            p2 = np.conj(p1)
            z2 = zeros.pop(nearest(zeros, p1))
        else:
            p2 = left.pop(nearest(left, z1, real_only=True))
            z2 = zeros.pop(nearest(zeros, p2))
        row[:] = [1.0, -(z1 + z2), z1 * z2, 1.0, -np.real(p1 + p2), np.real(p1 * p2)]
    sos += 0.0  # no negative zeros
    sos[0, :3] *= gain
    return sos


def _padlen(sos: np.ndarray) -> int:
    first_order = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * (2 * len(sos) + 1 - first_order)


def butterworth_padlen(low_pass: float | None, high_pass: float | None, t_r: float = 2.0) -> int:
    """Length a series must exceed for the zero-phase filter (its odd padding on each side).

    ``3 * (2 * sections + 1 - first-order sections)``, as ``scipy.signal.sosfiltfilt``:
    3 sections, one of them first order, for a low- or high-pass (18); 5 second-order
    sections for a band-pass (33).
    """
    sos = butterworth_sos(low_pass, high_pass, t_r)
    return 0 if sos is None else _padlen(sos)


def _sos_initial_state(sos: np.ndarray) -> np.ndarray:
    """Per-section state of a unit step input at rest (``scipy.signal.sosfilt_zi``)."""
    state = np.empty((len(sos), 2))
    scale = 1.0
    for row, (b, a) in zip(state, zip(sos[:, :3], sos[:, 3:], strict=True), strict=True):
        i_minus_a = np.array([[1.0 + a[1], -1.0], [a[2], 1.0]])
        row[:] = scale * np.linalg.solve(i_minus_a, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return state


def _sosfilt(sos: np.ndarray, x: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Cascade of direct-form II transposed sections along axis 0 (``scipy.signal.sosfilt``).

    ``state`` is (sections, 2, columns); ``x`` is overwritten. Each section filters the
    whole series before the next: the operations of SciPy's sample-by-sample loop, in
    its order.
    """
    y = np.empty_like(x)
    tmp = np.empty(x.shape[1])
    for (b0, b1, b2, _, a1, a2), (z0, z1) in zip(sos, state.copy(), strict=True):
        for t in range(x.shape[0]):
            xt, yt = x[t], y[t]
            np.multiply(b0, xt, out=yt)
            yt += z0
            np.multiply(b1, xt, out=z0)
            z0 -= np.multiply(a1, yt, out=tmp)
            z0 += z1
            np.multiply(b2, xt, out=z1)
            z1 -= np.multiply(a2, yt, out=tmp)
        x, y = y, x
    return x


def butterworth(
    x: np.ndarray, t_r: float, low_pass: float | None, high_pass: float | None
) -> np.ndarray:
    """Zero-phase order-5 Butterworth filter of every column (``scipy.signal.sosfiltfilt``,
    odd padding): forward and backward passes, each started at rest on its first value."""
    sos = butterworth_sos(low_pass, high_pass, t_r)
    if sos is None or x.shape[1] == 0:
        return x
    padlen = _padlen(sos)
    if x.shape[0] <= padlen:
        raise ValueError(
            f"{x.shape[0]} volumes are too few for the Butterworth filter (needs more than {padlen})"
        )
    x = np.asarray(x, dtype=np.float64)
    ext = np.concatenate(
        [2 * x[:1] - x[padlen:0:-1], x, 2 * x[-1:] - x[-2 : -(padlen + 2) : -1]], axis=0
    )
    state = _sos_initial_state(sos)[:, :, None]
    y = _sosfilt(sos, ext, state * ext[:1])
    y = _sosfilt(sos, y[::-1].copy(), state * y[-1:])[::-1]
    return np.ascontiguousarray(y[padlen:-padlen])


def _interpolate(x: np.ndarray, kept: np.ndarray, t_r: float) -> np.ndarray:
    """Series from the first to the last kept volume, censored volumes from a cubic spline."""
    first, last = int(kept[0]), int(kept[-1])
    out = x[first : last + 1].copy()
    censored = np.setdiff1d(np.arange(first, last + 1), kept)
    if censored.size and x.shape[1]:
        times = np.arange(x.shape[0]) * t_r
        from scipy.interpolate import CubicSpline

        spline = CubicSpline(times[kept], x[kept], axis=0)
        out[censored - first] = spline(times[censored])
    return out


def _check_mask(sample_mask: np.ndarray | None, n: int) -> np.ndarray | None:
    if sample_mask is None:
        return None
    mask = np.asarray(sample_mask)
    if mask.dtype == bool:
        if mask.shape != (n,):
            raise ValueError(f"boolean sample_mask has shape {mask.shape}, expected ({n},)")
        mask = np.flatnonzero(mask)
    if mask.ndim != 1 or (mask.size and not np.issubdtype(mask.dtype, np.integer)):
        raise ValueError("sample_mask must be a 1-D array of volume indices or booleans")
    mask = np.unique(mask.astype(np.int64))
    if mask.size == 0:
        raise ValueError("every volume is censored (empty sample_mask)")
    if mask[0] < 0 or mask[-1] >= n:
        raise ValueError(f"sample_mask indices must be in [0, {n}); got {mask[0]}..{mask[-1]}")
    return None if mask.size == n else mask


def clean(
    signals: np.ndarray,
    *,
    t_r: float | None,
    confounds: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    detrend: bool = True,
    standardize: Literal["zscore_sample", "psc"] | None = "zscore_sample",
    standardize_confounds: bool = True,
    filter: Literal["butterworth", "cosine"] = "butterworth",
    low_pass: float | None = None,
    high_pass: float | None = None,
) -> np.ndarray:
    """Denoise region signals (nilearn ``signal.clean`` 0.14.1 numbers, correct censoring).

    Parameters
    ----------
    signals
        (n_volumes, n_regions). Columns with a non-finite value are returned all-NaN.
    t_r
        Repetition time in seconds (needed for filtering and interpolation).
    confounds
        (n_volumes, n_confounds) over all volumes, censored ones included.
    sample_mask
        Indices (or a boolean vector) of the kept volumes; None keeps all.
    detrend, standardize, standardize_confounds, filter, low_pass, high_pass
        As ``nilearn.signal.clean``. ``filter="cosine"`` needs ``high_pass`` and no ``low_pass``.

    Returns
    -------
    (n_kept, n_regions) float64 array.
    """
    x = np.asarray(signals, dtype=np.float64)  # not changed: copied below
    if x.ndim != 2:
        raise ValueError(f"signals must be 2-D (volumes, regions); got shape {x.shape}")
    n = x.shape[0]
    if standardize not in ("zscore_sample", "psc", None):
        raise ValueError(f"standardize must be 'zscore_sample', 'psc' or None; got {standardize!r}")
    if filter not in ("butterworth", "cosine"):
        raise ValueError(f"filter must be 'butterworth' or 'cosine'; got {filter!r}")
    if filter == "cosine":
        if high_pass is None or t_r is None:
            raise ValueError("filter 'cosine' needs t_r and high_pass")
        if low_pass is not None:
            raise ValueError("filter 'cosine' is a high-pass only: low_pass must be None")
        filter_type = "cosine"
    elif low_pass is not None or high_pass is not None:
        if t_r is None:
            raise ValueError("Butterworth filtering needs t_r")
        if low_pass is not None and high_pass is not None and high_pass >= low_pass:
            raise ValueError(f"high_pass ({high_pass}) must be lower than low_pass ({low_pass})")
        filter_type = "butterworth"
    else:
        filter_type = None

    conf = None
    if confounds is not None:
        conf = np.array(confounds, dtype=np.float64)
        if conf.ndim == 1:
            conf = conf[:, None]
        if conf.ndim != 2 or conf.shape[0] != n:
            raise ValueError(
                f"confounds have shape {conf.shape}; expected ({n}, n_confounds) like the signals"
            )
        if not np.isfinite(conf).all():
            raise ValueError("confounds contain NaN or infinite values")
        if conf.shape[1] == 0:
            conf = None
    kept = _check_mask(sample_mask, n)
    if kept is not None and filter_type == "butterworth" and t_r is None:
        raise ValueError("interpolating censored volumes needs t_r")

    # x and conf are this function's own copies from here on, changed in place (a long
    # run's signals are the largest arrays of a job)
    valid = np.isfinite(x).all(axis=0)
    n_columns = x.shape[1]
    x = x[:, valid]

    if filter_type == "cosine":
        drifts = cosine_drifts(n, high_pass, t_r)
        if drifts.shape[1] and conf is None:
            conf = drifts
        elif drifts.shape[1]:
            nd = drifts.shape[1]
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.corrcoef(drifts.T, conf.T)[:nd]
            corr[np.arange(nd), np.arange(nd)] = 0
            if not (corr > 0.9).any():  # fMRIPrep's cosines already in the confounds
                conf = np.hstack([conf, drifts])

    deferred = None
    if kept is not None:
        if filter_type == "butterworth":
            x = _interpolate(x, kept, t_r)
            if conf is not None:
                conf = _interpolate(conf, kept, t_r)
            deferred = kept - kept[0]
        else:
            x = x[kept]
            if conf is not None:
                conf = conf[kept]

    original_mean = x.mean(axis=0)
    if detrend and x.shape[0] > 1:
        x = linear_detrend(x, overwrite=True)
        if conf is not None:
            conf = linear_detrend(conf, overwrite=True)
    if filter_type == "butterworth":
        x = butterworth(x, t_r, low_pass, high_pass)
        if conf is not None:
            conf = butterworth(conf, t_r, low_pass, high_pass)
    if deferred is not None:
        x = x[deferred]
        if conf is not None:
            conf = conf[deferred]

    if conf is not None:
        if standardize_confounds:
            if conf.shape[0] > 1:
                conf = _zscore(conf, overwrite=True)
        else:
            scale = np.abs(conf).max(axis=0)
            scale[scale == 0] = 1
            conf = conf / scale
        from scipy import linalg

        q, r, _ = linalg.qr(conf, mode="economic", pivoting=True)
        q = q[:, np.abs(np.diag(r)) > EPS64 * 100.0]
        x -= q @ (q.T @ x)

    if standardize is not None and x.shape[0] > 1 and x.shape[1]:
        if standardize == "zscore_sample":
            x = _zscore(x, overwrite=True)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.abs(x.mean(axis=0)).mean() / np.abs(original_mean).mean()
            if ratio < 0.1:  # the mean was removed (detrend / high-pass): add it back
                x = x + original_mean
            mean = x.mean(axis=0)
            small = np.abs(mean) < EPS64
            with np.errstate(invalid="ignore", divide="ignore"):
                x = (x - mean) / np.abs(mean) * 100
            x[:, small] = 0
    if valid.all():
        return x
    out = np.full((x.shape[0], n_columns), np.nan)
    out[:, valid] = x
    return out


__all__ = [
    "clean",
    "linear_detrend",
    "butterworth",
    "butterworth_padlen",
    "butterworth_sos",
    "cosine_drifts",
]

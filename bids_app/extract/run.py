"""One streaming pass over a BOLD run: every atlas's region signals and coverage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputDataError
from .operators import Operators, finish_signals, slow_reduce
from .stream import VolumeReader, smooth_volume, smoothing_sigmas


@dataclass
class RunSignals:
    """Raw (not denoised) region signals of one run.

    ``signals[atlas]`` is (volumes, regions) float64 in lookup-table order, a
    column of NaN for a region without signal; ``coverage[atlas]`` is one row per
    region: ``index``, ``name``, ``n_voxels`` (on the BOLD grid),
    ``n_voxels_in_mask``, ``n_voxels_usable`` (in the mask, finite and not
    constant during the run), ``coverage`` (usable fraction of the region: of its
    voxels, or of its summed ``|weight|`` for maps) and ``usable`` (the column has
    signal).
    """

    signals: dict[str, np.ndarray] = field(default_factory=dict)
    coverage: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_nonfinite: int = 0  # voxels used by an atlas with a NaN / infinite value (counted as 0)


def _check_grid(reader: VolumeReader, ops: Operators) -> None:
    if tuple(reader.shape3) != tuple(ops.shape) or not np.allclose(
        reader.affine, ops.affine, atol=1e-3
    ):
        raise InputDataError(
            f"{reader.path}: grid {reader.shape3} does not match the grid the atlases were "
            f"prepared for {tuple(ops.shape)}"
        )


def extract_run(
    bold_path: Path | str, ops: Operators, smoothing_fwhm: float | None = None
) -> RunSignals:
    """Region signals of every atlas in ``ops``, reading ``bold_path`` once, volume by volume.

    Non-finite values count as 0; with ``smoothing_fwhm`` (mm) each volume is
    smoothed with a Gaussian first.
    """
    reader = VolumeReader(bold_path)
    _check_grid(reader, ops)
    n_t = reader.n_volumes
    sigmas = smoothing_sigmas(reader.affine, smoothing_fwhm)
    gather = ops.gather
    n_g = ops.n_gathered
    reduced = np.empty((n_t, ops.matrix.shape[0]), dtype=np.float64)
    slow = [op for op in ops.atlases if op.slow_pos is not None and len(op.valid_cols)]
    slow_out = {op.name: np.empty((n_t, len(op.valid_cols))) for op in slow}
    vmin = vmax = None
    bad = np.zeros(n_g, dtype=bool)
    t = -1
    for t, vol in enumerate(reader):
        raw = vol if gather is None else vol[gather]
        if raw.dtype.kind == "f":
            nonfinite = ~np.isfinite(raw)
            if nonfinite.any():
                bad |= nonfinite
                raw = np.where(nonfinite, 0, raw)
        if vmin is None:
            vmin, vmax = np.array(raw, copy=True), np.array(raw, copy=True)
        else:
            np.minimum(vmin, raw, out=vmin)
            np.maximum(vmax, raw, out=vmax)
        values = raw
        if sigmas is not None:
            vol3 = np.array(vol.reshape(reader.shape3, order="F"), order="F", copy=True)
            if vol3.dtype.kind == "f":
                vol3[~np.isfinite(vol3)] = 0
            flat = smooth_volume(vol3, sigmas).reshape(-1, order="F")
            values = flat if gather is None else flat[gather]
        reduced[t] = ops.matrix @ values
        for op in slow:
            slow_out[op.name][t] = slow_reduce(op, values)
    if t + 1 != n_t:  # pragma: no cover - the reader raises on truncation
        raise InputDataError(f"{bold_path}: read {t + 1} volumes, expected {n_t}")
    usable = ~bad & (vmax > vmin) if vmin is not None else np.zeros(n_g, bool)
    usable_w = ops.support @ usable.astype(float)
    usable_n = (ops.support != 0).astype(float) @ usable.astype(float)
    out = RunSignals(n_nonfinite=int(bad.sum()))
    region0 = 0
    for op in ops.atlases:
        k = op.n_regions
        if op.slow_pos is not None:
            sig = np.full((n_t, k), np.nan)
            if len(op.valid_cols):
                sig[:, op.valid_cols] = slow_out[op.name]
        else:
            sig = finish_signals(op, reduced[:, op.rows], n_t)
        w = usable_w[region0 : region0 + k]
        n_usable = np.rint(usable_n[region0 : region0 + k]).astype(int)
        region0 += k
        store_atlas(out, op, sig, w, op.weight_total, (op.n_voxels, op.n_in_mask, n_usable))
    return out


def store_atlas(
    out: RunSignals,
    op,
    sig: np.ndarray,
    usable_weight: np.ndarray,
    weight_total: np.ndarray,
    counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    unit: str = "voxels",
    in_data: str = "in_mask",
) -> None:
    """Blank regions without enough usable signal and record an atlas's signals and coverage.

    ``counts`` are, per region, its size in the atlas, the part inside the data and the part
    whose signal is usable, in ``unit`` (voxels or grayordinates).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(weight_total > 0, usable_weight / weight_total, 0.0)
    ok = op.valid.copy()
    if op.min_coverage is not None:
        ok &= coverage >= op.min_coverage
    sig[:, ~ok] = np.nan
    out.signals[op.name] = sig
    n_all, n_in, n_usable = (np.asarray(c).astype(int) for c in counts)
    out.coverage[op.name] = pd.DataFrame(
        {
            "index": op.lut["index"].to_numpy(),
            "name": op.lut["name"].to_numpy(),
            f"n_{unit}": n_all,
            f"n_{unit}_{in_data}": n_in,
            f"n_{unit}_usable": n_usable,
            "coverage": np.round(coverage, 6),
            "usable": ok,
        }
    )


__all__ = ["RunSignals", "extract_run", "store_atlas"]

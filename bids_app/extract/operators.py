"""Reduction operators of all atlases for one data grid (and brain mask).

Everything is precomputed once per grid so that each BOLD volume is reduced
with one sparse matrix-vector product:

* labels (mean, sum) and spheres: rows of ones over each region's voxels,
  divided afterwards by the voxel count for means;
* maps: rows of the map weights ``M^T`` (restricted to the mask); the least
  squares solution ``pinv(M) d`` is then ``G (M^T d)`` with
  ``G = (M^T M)^-1``, applied once to all volumes at the end. Ill-conditioned
  or rank-deficient maps use explicit rows of ``pinv(M)`` instead;
* labels with median, minimum, maximum, variance or standard deviation use a
  per-volume grouped reduction.

Regions without any voxel in the mask keep their column (all NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
from scipy import ndimage, sparse

from ..errors import ConfigError, InputDataError
from .atlas import AtlasSource, resample, same_grid, transform_to
from .spheres import overlapping, sphere_members

# Above this condition number of the masked maps, the normal equations lose too
# much precision; explicit pseudo-inverse rows are used instead.
MAX_NORMAL_COND = 1e4

SLOW_STRATEGIES = {
    "median": ndimage.median,
    "minimum": ndimage.minimum,
    "maximum": ndimage.maximum,
    "variance": ndimage.variance,
    "standard_deviation": ndimage.standard_deviation,
}


@dataclass
class AtlasOperator:
    """The part of :class:`Operators` for one atlas."""

    name: str
    kind: str
    lut: pd.DataFrame  # index, name
    strategy: str
    n_voxels: np.ndarray  # region voxels on the grid (before the brain mask)
    n_in_mask: np.ndarray  # ... of which inside the brain mask
    weight_total: np.ndarray  # sum of |w| on the grid (voxel count for labels/spheres)
    valid: np.ndarray  # region has signal (voxels / weight inside the mask)
    rows: slice  # rows of Operators.matrix (fast path)
    valid_cols: np.ndarray  # region columns computed by those rows, in row order
    scale: np.ndarray | None = None  # per-row factor (1 / n for means)
    gram_inv: np.ndarray | None = None  # maps: G applied to the rows' output
    slow_pos: np.ndarray | None = None  # positions in the gathered vector (slow strategies)
    slow_groups: np.ndarray | None = None  # region column + 1 of each position
    min_coverage: float | None = None

    @property
    def n_regions(self) -> int:
        return len(self.lut)

    @classmethod
    def for_source(
        cls,
        src,
        strategy: str,
        n_voxels: np.ndarray,
        n_in_mask: np.ndarray,
        valid: np.ndarray,
        weight_total: np.ndarray | None = None,
        **extra,
    ) -> AtlasOperator:
        """An operator for atlas ``src``; ``weight_total`` defaults to the voxel counts."""
        return cls(
            name=src.name,
            kind=src.kind,
            lut=src.lut[["index", "name"]].reset_index(drop=True),
            strategy=strategy,
            n_voxels=n_voxels,
            n_in_mask=n_in_mask,
            weight_total=n_voxels.astype(float) if weight_total is None else weight_total,
            valid=valid,
            rows=slice(0, 0),
            valid_cols=np.flatnonzero(valid),
            min_coverage=src.min_coverage,
            **extra,
        )


@dataclass
class Operators:
    """All atlases' operators for one grid. ``gather`` are the flat (Fortran-order)
    voxel indices the reductions read; ``None`` means the whole volume."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    gather: np.ndarray | None
    matrix: sparse.csr_matrix  # (rows, gathered voxels)
    support: sparse.csr_matrix  # (all regions, gathered voxels): |w| (1 for labels/spheres)
    atlases: list[AtlasOperator]

    @property
    def n_gathered(self) -> int:
        return self.matrix.shape[1]


@dataclass
class _Part:
    op: AtlasOperator
    # fast-path triplets: (local row, flat voxel, value)
    rows: np.ndarray
    vox: np.ndarray
    vals: np.ndarray
    # support triplets: (region, flat voxel, |w|)
    s_reg: np.ndarray
    s_vox: np.ndarray
    s_val: np.ndarray
    n_rows: int
    slow_vox: np.ndarray | None = None


def _flat_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(int(np.prod(shape)), dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputDataError(f"brain mask shape {mask.shape} does not match the grid {shape}")
    return mask.reshape(-1, order="F").astype(bool)


def _labels_part(src: AtlasSource, shape, affine, in_mask: np.ndarray) -> _Part:
    labels = resample(src.labels, src.affine, shape, affine, order=0)
    if src.atlas_mask is not None:
        m = resample(src.atlas_mask.astype(np.int8), src.atlas_mask_affine, shape, affine, 0)
        labels = np.where(m != 0, labels, src.background)
    flat = labels.reshape(-1, order="F")
    ids = np.asarray(src.label_ids)
    keep = np.flatnonzero((flat != src.background) & np.isin(flat, ids))
    col = np.searchsorted(ids, flat[keep])
    k = len(ids)
    n_voxels = np.bincount(col, minlength=k)
    inside = in_mask[keep]
    vox, col = keep[inside], col[inside]
    n_in = np.bincount(col, minlength=k)
    valid = n_in > 0
    op = AtlasOperator.for_source(src, src.strategy, n_voxels, n_in, valid)
    ones = np.ones(len(vox))
    if src.strategy in ("mean", "sum"):
        row_of_col = np.cumsum(valid) - 1
        part = _Part(op, row_of_col[col], vox, ones, col, vox, ones, int(valid.sum()))
        if src.strategy == "mean":
            op.scale = 1.0 / n_in[valid]
        return part
    if src.strategy not in SLOW_STRATEGIES:
        raise ConfigError(f"atlases.{src.name}: unknown strategy {src.strategy!r}")
    part = _Part(op, np.zeros(0, int), np.zeros(0, int), np.zeros(0), col, vox, ones, 0)
    part.slow_vox = vox
    op.slow_groups = col + 1
    return part


def _spheres_part(src: AtlasSource, shape, affine, mask3: np.ndarray | None) -> _Part:
    full = sphere_members(src.seeds, src.radius, shape, affine, None)
    masked = full if mask3 is None else sphere_members(src.seeds, src.radius, shape, affine, mask3)
    if not src.allow_overlap:
        pairs = overlapping(masked)
        if pairs:
            names = src.lut["name"].tolist()
            shown = ", ".join(f"{names[a]}/{names[b]}" for a, b in pairs[:5])
            raise ConfigError(
                f"atlases.{src.name}: {len(pairs)} pairs of spheres overlap ({shown}); "
                "set allow_overlap: true or a smaller radius"
            )
    n_voxels = np.array([len(m) for m in full])
    n_in = np.array([len(m) for m in masked])
    valid = n_in > 0
    op = AtlasOperator.for_source(src, "mean", n_voxels, n_in, valid, scale=1.0 / n_in[valid])
    reg = np.concatenate([np.full(len(m), i) for i, m in enumerate(masked)] + [np.zeros(0, int)])
    vox = np.concatenate(list(masked) + [np.zeros(0, np.int64)])
    row_of_col = np.cumsum(valid) - 1
    ones = np.ones(len(vox))
    return _Part(op, row_of_col[reg], vox, ones, reg, vox, ones, int(valid.sum()))


def _resample_map(
    idx: np.ndarray,
    vals: np.ndarray,
    src_shape: tuple[int, ...],
    src_affine: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One sparse map (flat Fortran indices, values) linearly resampled onto a grid.

    Only the bounding box of the map's support is interpolated (same values as
    interpolating the whole volume, at a fraction of the cost).
    """
    if len(idx) == 0:
        return idx, vals
    if same_grid(src_shape, src_affine, shape, affine):
        return idx, vals
    a, b = transform_to(src_affine, affine)
    a_full = np.diag(a) if a.ndim == 1 else a
    ijk = np.column_stack(np.unravel_index(idx, src_shape, order="F"))
    lo = np.maximum(ijk.min(axis=0) - 1, 0)
    hi = np.minimum(ijk.max(axis=0) + 1, np.asarray(src_shape) - 1)
    sub = np.zeros(tuple(hi - lo + 1), dtype=vals.dtype)
    sub[tuple((ijk - lo).T)] = vals
    corners = np.array(
        [
            [x, y, z]
            for x in (lo[0] - 1, hi[0] + 1)
            for y in (lo[1] - 1, hi[1] + 1)
            for z in (lo[2] - 1, hi[2] + 1)
        ],
        dtype=float,
    )
    out_ijk = np.linalg.solve(a_full, (corners - b).T).T
    olo = np.maximum(np.floor(out_ijk.min(axis=0)).astype(int) - 1, 0)
    ohi = np.minimum(np.ceil(out_ijk.max(axis=0)).astype(int) + 1, np.asarray(shape[:3]) - 1)
    if np.any(ohi < olo):
        return np.zeros(0, np.int64), np.zeros(0, vals.dtype)
    offset = b + a_full @ olo - lo
    out = np.zeros(tuple(ohi - olo + 1), dtype=vals.dtype)
    ndimage.affine_transform(
        sub, a, offset=offset, output_shape=out.shape, order=1, output=out, cval=0
    )
    nz = np.flatnonzero(out.reshape(-1, order="F"))
    o = np.column_stack(np.unravel_index(nz, out.shape, order="F")) + olo
    flat = o[:, 0] + shape[0] * (o[:, 1] + shape[1] * o[:, 2])
    return flat.astype(np.int64), out.reshape(-1, order="F")[nz]


def _maps_part(src: AtlasSource, shape, affine, in_mask: np.ndarray) -> _Part:
    maps = src.maps
    k = maps.shape[1]
    dtype = np.dtype(src.maps_dtype)
    cols = []
    for j in range(k):
        sl = slice(maps.indptr[j], maps.indptr[j + 1])
        idx, vals = _resample_map(
            maps.indices[sl], maps.data[sl], src.shape, src.affine, shape, affine
        )
        if not src.allow_overlap:
            keep = vals >= np.finfo(dtype).eps
            idx, vals = idx[keep], vals[keep]
        cols.append((idx, vals))
    if not src.allow_overlap:
        pairs = overlapping([c[0] for c in cols])
        if pairs:
            raise InputDataError(
                f"{src.source}: maps {pairs[0][0]} and {pairs[0][1]} overlap on the data grid "
                f"({len(pairs)} overlapping pairs); set allow_overlap: true in atlas {src.name}"
            )
    n_voxels = np.array([len(c[0]) for c in cols])
    weight_total = np.array([np.abs(c[1].astype(float)).sum() for c in cols])
    masked = [(i[in_mask[i]], v[in_mask[i]].astype(float)) for i, v in cols]
    n_in = np.array([len(c[0]) for c in masked])
    valid = np.array([np.abs(v).sum() > 0 for _, v in masked])
    op = AtlasOperator.for_source(src, "lstsq", n_voxels, n_in, valid, weight_total=weight_total)
    reg = np.concatenate([np.full(len(c[0]), j) for j, c in enumerate(masked)] + [np.zeros(0, int)])
    vox = np.concatenate([c[0] for c in masked] + [np.zeros(0, np.int64)])
    val = np.concatenate([c[1] for c in masked] + [np.zeros(0)])
    support = (reg, vox, np.abs(val))
    kv = int(valid.sum())
    if kv == 0:
        return _Part(op, np.zeros(0, int), np.zeros(0, int), np.zeros(0), *support, 0)
    row_of_col = np.cumsum(valid) - 1
    keep = valid[reg]
    rows, vox_v, val_v = row_of_col[reg[keep]], vox[keep], val[keep]
    # M restricted to the union V of the kept maps' supports, as (|V| x kv) sparse
    v_idx, local = np.unique(vox_v, return_inverse=True)
    m = sparse.csc_matrix((val_v, (local, rows)), shape=(len(v_idx), kv))
    gram = (m.T @ m).toarray()
    evals = np.linalg.eigvalsh(gram)
    cond2 = evals[-1] / evals[0] if evals[0] > 0 else np.inf
    if cond2 < MAX_NORMAL_COND**2:
        op.gram_inv = scipy.linalg.inv(gram)
        op.gram_inv = (op.gram_inv + op.gram_inv.T) / 2
        return _Part(op, rows, vox_v, val_v, *support, kv)
    # ill-conditioned: explicit pseudo-inverse rows. Rank cutoff as numpy's matrix_rank
    # (eps * max(shape) * s_max): gelsd's bare eps * s_max keeps the rounding residue of an
    # exactly dependent map with some LAPACK builds and returns signals of ~1e16.
    dense = m.toarray()
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    keep_s = s > np.finfo(float).eps * max(dense.shape) * s[0]
    pinv = (vt[keep_s].T / s[keep_s]) @ u[:, keep_s].T  # (kv, |V|)
    r_idx, c_idx = np.nonzero(pinv)
    return _Part(op, r_idx, v_idx[c_idx], pinv[r_idx, c_idx], *support, kv)


def prepare(
    sources: list[AtlasSource],
    shape: tuple[int, int, int],
    affine: np.ndarray,
    mask: np.ndarray | None = None,
) -> Operators:
    """Operators of every atlas for a data grid ``(shape, affine)`` and brain ``mask``.

    Labels are resampled to the grid with nearest neighbour, maps linearly;
    spheres are placed on the grid. Voxels outside ``mask`` (boolean 3D array
    on the grid, or None for every voxel) are not used.
    """
    shape = tuple(int(n) for n in shape[:3])
    affine = np.asarray(affine, dtype=float)
    in_mask = _flat_mask(mask, shape)
    parts: list[_Part] = []
    for src in sources:
        if src.kind == "labels":
            parts.append(_labels_part(src, shape, affine, in_mask))
        elif src.kind == "spheres":
            mask3 = None if mask is None else np.asarray(mask, dtype=bool)
            parts.append(_spheres_part(src, shape, affine, mask3))
        elif src.kind in ("maps", "regions"):
            parts.append(_maps_part(src, shape, affine, in_mask))
        else:
            raise ConfigError(f"atlases.{src.name}: unknown kind {src.kind!r}")
    used = [p.vox for p in parts] + [p.s_vox for p in parts]
    used += [p.slow_vox for p in parts if p.slow_vox is not None]
    gather = np.unique(np.concatenate(used + [np.zeros(0, np.int64)])).astype(np.int64)
    n_total = int(np.prod(shape))
    if len(gather) > 0.6 * n_total:  # reading the whole volume is cheaper than gathering
        gather_idx = None
        n_cols = n_total

        def col(v: np.ndarray) -> np.ndarray:
            return v
    else:
        gather_idx = gather
        n_cols = len(gather)

        def col(v: np.ndarray) -> np.ndarray:
            return np.searchsorted(gather, v)

    row0 = 0
    region0 = 0
    m_rows, m_cols, m_vals = [], [], []
    s_rows, s_cols, s_vals = [], [], []
    for p in parts:
        p.op.rows = slice(row0, row0 + p.n_rows)
        m_rows.append(p.rows + row0)
        m_cols.append(col(p.vox))
        m_vals.append(p.vals)
        s_rows.append(p.s_reg + region0)
        s_cols.append(col(p.s_vox))
        s_vals.append(p.s_val)
        if p.slow_vox is not None:
            p.op.slow_pos = col(p.slow_vox)
        row0 += p.n_rows
        region0 += p.op.n_regions
    matrix = sparse.csr_matrix(
        (np.concatenate(m_vals), (np.concatenate(m_rows), np.concatenate(m_cols))),
        shape=(row0, n_cols),
        dtype=np.float64,
    )
    support = sparse.csr_matrix(
        (np.concatenate(s_vals), (np.concatenate(s_rows), np.concatenate(s_cols))),
        shape=(region0, n_cols),
        dtype=np.float64,
    )
    matrix.sum_duplicates()
    support.sum_duplicates()
    return Operators(
        shape=shape,
        affine=affine,
        gather=gather_idx,
        matrix=matrix,
        support=support,
        atlases=[p.op for p in parts],
    )


def finish_signals(op: AtlasOperator, reduced: np.ndarray, n_volumes: int) -> np.ndarray:
    """(T, n_regions) float64 signals of one atlas from the fast-path row outputs."""
    out = np.full((n_volumes, op.n_regions), np.nan)
    if op.gram_inv is not None:
        out[:, op.valid_cols] = reduced @ op.gram_inv
    elif op.scale is not None:
        out[:, op.valid_cols] = reduced * op.scale
    elif op.rows.stop > op.rows.start:
        out[:, op.valid_cols] = reduced
    return out


def slow_reduce(op: AtlasOperator, values: np.ndarray) -> np.ndarray:
    """One volume's values of a labels atlas with a grouped strategy (median, ...)."""
    groups = op.valid_cols + 1
    fn = SLOW_STRATEGIES[op.strategy]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = fn(values[op.slow_pos], labels=op.slow_groups, index=groups)
    return np.asarray(out, dtype=float)


__all__ = ["prepare", "Operators", "AtlasOperator", "finish_signals", "slow_reduce"]

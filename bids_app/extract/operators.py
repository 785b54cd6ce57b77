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

The preparation has two stages:

1. :func:`prepare_grid` (depends on the atlases and the grid ``(shape, affine)``
   only): labels resampled with nearest neighbour, maps resampled linearly,
   sphere candidate voxels. This is the expensive part; with ``cache_dir`` its
   result is kept on disk (:mod:`bids_app.extract.cache`) and shared by every
   run, process and participant on the same grid.
2. :func:`apply_mask` (per run: each run has its own brain mask): masks the
   grid-level arrays and solves the small maps Gram matrices.

:func:`prepare` does both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import ConfigError, InputDataError
from . import cache as _cache
from .atlas import AtlasSource, ensure_loaded, label_positions, resample, same_grid, transform_to
from .spheres import mask_members, overlapping, sphere_candidates

log = logging.getLogger(__name__)

# Above this condition number of the masked maps, the normal equations lose too
# much precision; explicit pseudo-inverse rows are used instead.
MAX_NORMAL_COND = 1e4

# Label strategies reduced per volume with the ``scipy.ndimage`` function of that name.
SLOW_STRATEGIES = ("median", "minimum", "maximum", "variance", "standard_deviation")


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


# --- grid level ---------------------------------------------------------------------------------

# Arrays of the grid-level part of each kind: "index" arrays are int64 in memory
# (stored as int32 in the cache when they fit), "float64" arrays are float64 and
# "weights" keep the atlas's map dtype.
GRID_ARRAYS: dict[str, dict[str, str]] = {
    # voxels (flat, Fortran order, ascending) of the atlas's regions and their region column
    "labels": {"vox": "index", "col": "index", "n_voxels": "index"},
    # per seed (``*_ptr`` offsets): voxels within the radius + nearest voxel, and the
    # voxels whose truncated world coordinates equal the truncated seed (C order)
    "spheres": {
        "core": "index",
        "core_ptr": "index",
        "same": "index",
        "same_ptr": "index",
        "n_voxels": "index",
    },
    # per map (``ptr`` offsets): resampled support voxels and weights
    "maps": {
        "vox": "index",
        "vals": "weights",
        "ptr": "index",
        "n_voxels": "index",
        "weight_total": "float64",
    },
}
GRID_ARRAYS["regions"] = GRID_ARRAYS["maps"]


@dataclass
class GridAtlas:
    """Grid-level part of one atlas's operator (atlas content + grid only, no mask).

    ``arrays`` holds the arrays listed in :data:`GRID_ARRAYS` for ``source.kind``.
    ``cached`` tells whether they were read from the on-disk cache.
    """

    source: AtlasSource
    arrays: dict[str, np.ndarray]
    cached: bool = False


@dataclass
class GridOperators:
    """Grid-level operators of all atlases for one grid; see :func:`apply_mask`."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    atlases: list[GridAtlas] = field(default_factory=list)


def _ptr(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def _split(values: np.ndarray, ptr: np.ndarray) -> list[np.ndarray]:
    return [values[ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]


def _labels_grid(src: AtlasSource, shape, affine) -> dict[str, np.ndarray]:
    labels = resample(src.labels, src.affine, shape, affine, order=0)
    if src.atlas_mask is not None:
        m = resample(src.atlas_mask.astype(np.int8), src.atlas_mask_affine, shape, affine, 0)
        labels = np.where(m != 0, labels, src.background)
    flat = labels.reshape(-1, order="F")
    ids = np.asarray(src.label_ids)
    key = label_positions(flat, ids)  # a new array
    key[flat == src.background] = -1
    vox = np.flatnonzero(key >= 0)
    col = key[vox]
    return {"vox": vox, "col": col, "n_voxels": np.bincount(col, minlength=len(ids))}


def _spheres_grid(src: AtlasSource, shape, affine) -> dict[str, np.ndarray]:
    core, same = sphere_candidates(src.seeds, src.radius, shape, affine)
    full = mask_members(core, same, None)
    empty = [np.zeros(0, np.int64)]
    return {
        "core": np.concatenate(core + empty).astype(np.int64),
        "core_ptr": _ptr([len(c) for c in core]),
        "same": np.concatenate(same + empty).astype(np.int64),
        "same_ptr": _ptr([len(s) for s in same]),
        "n_voxels": np.array([len(m) for m in full], dtype=np.int64),
    }


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
    from scipy import ndimage

    a, b = transform_to(src_affine, affine)
    a_full = np.diag(a) if a.ndim == 1 else a
    nx, ny = src_shape[0], src_shape[1]
    rest, i = np.divmod(np.asarray(idx, dtype=np.int64), nx)
    k, j = np.divmod(rest, ny)
    ijk_min = np.array([i.min(), j.min(), k.min()])
    ijk_max = np.array([i.max(), j.max(), k.max()])
    lo = np.maximum(ijk_min - 1, 0)
    hi = np.minimum(ijk_max + 1, np.asarray(src_shape) - 1)
    box = hi - lo + 1
    sub = np.zeros(tuple(box), dtype=vals.dtype, order="F")
    sub.reshape(-1, order="F")[(i - lo[0]) + box[0] * ((j - lo[1]) + box[1] * (k - lo[2]))] = vals
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
    obox = ohi - olo + 1
    out = np.zeros(tuple(obox), dtype=vals.dtype, order="F")
    ndimage.affine_transform(
        sub, a, offset=offset, output_shape=out.shape, order=1, output=out, cval=0
    )
    out_flat = out.reshape(-1, order="F")
    nz = np.flatnonzero(out_flat)
    rest, oi = np.divmod(nz, obox[0])
    ok, oj = np.divmod(rest, obox[1])
    flat = (oi + olo[0]) + shape[0] * ((oj + olo[1]) + shape[1] * (ok + olo[2]))
    return flat.astype(np.int64), out_flat[nz]


def voxel_lattice(
    src_affine: np.ndarray, affine: np.ndarray, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(step, offset)``, integer vectors, when each voxel of the grid ``affine`` sits on the
    centre of the source voxel ``step * ijk + offset`` (axis-aligned grids whose spacings are
    whole multiples and whose origins line up, within ``tol`` voxel): then linear
    interpolation only picks source values, up to the rounding of the affines (a voxel
    next to a map may get ~1e-16 of its neighbour's value, which sampling leaves out).
    None otherwise."""
    src_affine, affine = np.asarray(src_affine, dtype=float), np.asarray(affine, dtype=float)
    src_scale, scale = np.diag(src_affine)[:3], np.diag(affine)[:3]
    diagonal = np.all(src_affine[:3, :3] == np.diag(src_scale)) and np.all(
        affine[:3, :3] == np.diag(scale)
    )
    if not diagonal or np.any(src_scale == 0):
        return None
    a, b = scale / src_scale, (affine[:3, 3] - src_affine[:3, 3]) / src_scale
    step, offset = np.round(a), np.round(b)
    if np.any(step == 0) or np.abs(a - step).max() > tol or np.abs(b - offset).max() > tol:
        return None
    return step.astype(np.int64), offset.astype(np.int64)


def _sample_maps(
    maps: sparse.csc_matrix, src_shape: tuple[int, ...], lattice, shape: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every map on a grid that samples the atlas's voxel centres (:func:`voxel_lattice`):
    the values of the source voxels the grid falls on, all maps at once. What
    :func:`_resample_map` gives there, without interpolating."""
    step, offset = lattice
    n_out = int(np.prod(shape[:3]))
    index_type = np.int32 if n_out < 2**31 else np.int64
    # the grid voxel on each atlas voxel (-1: none); the grid's part inside the atlas's box
    on_grid = np.full(int(np.prod(src_shape[:3])), -1, dtype=index_type)
    src_axes, out_axes = [], []
    for axis in range(3):
        positions = step[axis] * np.arange(shape[axis]) + offset[axis]
        inside = np.flatnonzero((positions >= 0) & (positions < src_shape[axis]))
        src_axes.append(positions[inside])
        out_axes.append(inside)
    src_flat = src_axes[0][:, None, None] + src_shape[0] * (
        src_axes[1][None, :, None] + src_shape[1] * src_axes[2][None, None, :]
    )
    out_flat = out_axes[0][:, None, None] + shape[0] * (
        out_axes[1][None, :, None] + shape[1] * out_axes[2][None, None, :]
    )
    on_grid[src_flat.ravel()] = out_flat.ravel()
    flat = on_grid[maps.indices]
    kept = np.flatnonzero(flat >= 0)
    columns = np.searchsorted(maps.indptr, kept, side="right") - 1
    flat, values = flat[kept].astype(np.int64), maps.data[kept]
    # voxel order within each map, as interpolation gives (a flipped axis reverses runs)
    order = np.argsort(columns * n_out + flat, kind="stable")
    flat, values = flat[order], values[order]
    ptr = _ptr(np.bincount(columns, minlength=maps.shape[1]))
    return list(zip(_split(flat, ptr), _split(values, ptr), strict=True))


def _maps_grid(src: AtlasSource, shape, affine) -> dict[str, np.ndarray]:
    maps = src.maps
    k = maps.shape[1]
    dtype = np.dtype(src.maps_dtype)
    lattice = None
    if not same_grid(src.shape, src.affine, shape, affine):
        lattice = voxel_lattice(src.affine, affine)
    sampled = _sample_maps(maps, src.shape, lattice, shape) if lattice is not None else None
    cols = []
    for j in range(k):
        sl = slice(maps.indptr[j], maps.indptr[j + 1])
        if sampled is not None:
            idx, vals = sampled[j]
        else:
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
    return {
        "vox": np.concatenate([c[0] for c in cols] + [np.zeros(0, np.int64)]).astype(np.int64),
        "vals": np.concatenate([c[1] for c in cols] + [np.zeros(0, maps.dtype)]),
        "ptr": _ptr([len(c[0]) for c in cols]),
        "n_voxels": np.array([len(c[0]) for c in cols], dtype=np.int64),
        "weight_total": np.array([np.abs(c[1].astype(float)).sum() for c in cols], dtype=float),
    }


_GRID_BUILDERS = {
    "labels": _labels_grid,
    "spheres": _spheres_grid,
    "maps": _maps_grid,
    "regions": _maps_grid,
}


def _check_arrays(src: AtlasSource, arrays: dict[str, np.ndarray], n_total: int) -> bool:
    """Whether cached arrays have the layout :data:`GRID_ARRAYS` describes for ``src``."""
    spec = GRID_ARRAYS[src.kind]
    if set(arrays) != set(spec):
        return False
    for name, kind in spec.items():
        arr = arrays[name]
        if arr.ndim != 1:
            return False
        if kind == "index" and arr.dtype.kind not in "iu":
            return False
        if kind == "float64" and arr.dtype != np.float64:
            return False
        if kind == "weights" and arr.dtype != np.dtype(src.maps_dtype):
            return False
    n_regions = src.n_regions

    def ptr_ok(ptr: np.ndarray, values: np.ndarray) -> bool:
        return (
            len(ptr) == n_regions + 1
            and ptr[0] == 0
            and ptr[-1] == len(values)
            and bool(np.all(np.diff(ptr) >= 0))
        )

    def vox_ok(vox: np.ndarray) -> bool:
        return len(vox) == 0 or (int(vox.min()) >= 0 and int(vox.max()) < n_total)

    if len(arrays["n_voxels"]) != n_regions:
        return False
    if src.kind == "labels":
        col = arrays["col"]
        return (
            len(col) == len(arrays["vox"])
            and vox_ok(arrays["vox"])
            and (len(col) == 0 or (int(col.min()) >= 0 and int(col.max()) < n_regions))
        )
    if src.kind == "spheres":
        return (
            ptr_ok(arrays["core_ptr"], arrays["core"])
            and ptr_ok(arrays["same_ptr"], arrays["same"])
            and vox_ok(arrays["core"])
            and vox_ok(arrays["same"])
        )
    return (
        len(arrays["vals"]) == len(arrays["vox"])
        and ptr_ok(arrays["ptr"], arrays["vox"])
        and vox_ok(arrays["vox"])
        and len(arrays["weight_total"]) == n_regions
    )


def _as_memory(kind: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cached arrays with their in-memory dtypes (index arrays int64)."""
    spec = GRID_ARRAYS[kind]
    return {
        name: arr.astype(np.int64, copy=False) if spec[name] == "index" else arr
        for name, arr in arrays.items()
    }


def grid_atlas(
    src: AtlasSource,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    cache_dir: Path | str | None = None,
) -> GridAtlas:
    """The grid-level part of one atlas, from ``cache_dir`` when there (built and stored if not).

    A source without a :attr:`~bids_app.extract.AtlasSource.digest` is never cached.
    """
    shape = tuple(int(n) for n in shape[:3])
    affine = np.asarray(affine, dtype=float)
    if src.kind not in _GRID_BUILDERS:
        raise ConfigError(f"atlases.{src.name}: unknown kind {src.kind!r}")
    key = None
    if cache_dir is not None and src.digest:
        key = _cache.grid_key(src.digest, src.kind, shape, affine)
        arrays = _cache.load_entry(cache_dir, key, src.kind)
        if arrays is not None:
            if _check_arrays(src, arrays, int(np.prod(shape))):
                log.debug("atlas %s: grid operators read from the cache (%s)", src.name, key)
                return GridAtlas(src, _as_memory(src.kind, arrays), cached=True)
            log.debug(
                "atlas %s: ignoring a cache entry with unexpected content (%s)", src.name, key
            )
    elif cache_dir is not None:
        log.debug("atlas %s: no content digest, not cached", src.name)
    arrays = _GRID_BUILDERS[src.kind](ensure_loaded(src), shape, affine)
    if key is not None:
        spec = GRID_ARRAYS[src.kind]
        _cache.save_entry(
            cache_dir,
            key,
            {
                name: _cache.compact_index(a) if spec[name] == "index" else a
                for name, a in arrays.items()
            },
            src.kind,
        )
    return GridAtlas(src, arrays)


def prepare_grid(
    sources: list[AtlasSource],
    shape: tuple[int, int, int],
    affine: np.ndarray,
    cache_dir: Path | str | None = None,
) -> GridOperators:
    """Grid-level operators of every atlas for a data grid ``(shape, affine)``.

    Depends on the atlases and the grid only: do it once per grid, then
    :func:`apply_mask` once per run (brain mask). With ``cache_dir``, each atlas's
    part is read from / written to that folder (:mod:`bids_app.extract.cache`).

    Parameters
    ----------
    sources
        Atlases from :func:`~bids_app.extract.load_atlas`.
    shape, affine
        The BOLD grid (first three dimensions of the shape, 4x4 affine).
    cache_dir
        On-disk cache folder (created if needed), shared safely between
        processes; None: no cache.
    """
    shape = tuple(int(n) for n in shape[:3])
    affine = np.asarray(affine, dtype=float)
    return GridOperators(
        shape=shape,
        affine=affine,
        atlases=[grid_atlas(src, shape, affine, cache_dir) for src in sources],
    )


# --- mask level ---------------------------------------------------------------------------------


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


def _labels_part(ga: GridAtlas, in_mask: np.ndarray) -> _Part:
    src, arrays = ga.source, ga.arrays
    keep, col, n_voxels = arrays["vox"], arrays["col"], arrays["n_voxels"]
    k = len(n_voxels)
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


def _spheres_part(ga: GridAtlas, in_mask: np.ndarray | None) -> _Part:
    src, arrays = ga.source, ga.arrays
    core = _split(arrays["core"], arrays["core_ptr"])
    same = _split(arrays["same"], arrays["same_ptr"])
    masked = mask_members(core, same, in_mask)
    if not src.allow_overlap:
        pairs = overlapping(masked)
        if pairs:
            names = src.lut["name"].tolist()
            shown = ", ".join(f"{names[a]}/{names[b]}" for a, b in pairs[:5])
            raise ConfigError(
                f"atlases.{src.name}: {len(pairs)} pairs of spheres overlap ({shown}); "
                "set allow_overlap: true or a smaller radius"
            )
    n_voxels = arrays["n_voxels"]
    n_in = np.array([len(m) for m in masked])
    valid = n_in > 0
    op = AtlasOperator.for_source(src, "mean", n_voxels, n_in, valid, scale=1.0 / n_in[valid])
    reg = np.concatenate([np.full(len(m), i) for i, m in enumerate(masked)] + [np.zeros(0, int)])
    vox = np.concatenate(list(masked) + [np.zeros(0, np.int64)])
    row_of_col = np.cumsum(valid) - 1
    ones = np.ones(len(vox))
    return _Part(op, row_of_col[reg], vox, ones, reg, vox, ones, int(valid.sum()))


def _maps_part(ga: GridAtlas, in_mask: np.ndarray) -> _Part:
    import scipy.linalg

    src, arrays = ga.source, ga.arrays
    vox_all, ptr = arrays["vox"], arrays["ptr"]
    n_voxels, weight_total = arrays["n_voxels"], arrays["weight_total"]
    k = len(n_voxels)
    keep = in_mask[vox_all]
    reg = np.repeat(np.arange(k), np.diff(ptr))[keep]
    vox = vox_all[keep]
    val = arrays["vals"][keep].astype(float)
    n_in = np.bincount(reg, minlength=k)
    valid = np.bincount(reg, weights=np.abs(val), minlength=k) > 0
    op = AtlasOperator.for_source(src, "lstsq", n_voxels, n_in, valid, weight_total=weight_total)
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


def apply_mask(grid: GridOperators, mask: np.ndarray | None = None) -> Operators:
    """Operators for one run: the grid-level operators restricted to a brain ``mask``.

    Parameters
    ----------
    grid
        From :func:`prepare_grid` (possibly shared by many runs).
    mask
        Boolean 3D array on the grid (voxels outside are not used), or None for
        every voxel.

    Returns
    -------
    Operators
        Identical to ``prepare(sources, shape, affine, mask)``.
    """
    shape = grid.shape
    in_mask = _flat_mask(mask, shape)
    parts: list[_Part] = []
    for ga in grid.atlases:
        kind = ga.source.kind
        if kind == "labels":
            parts.append(_labels_part(ga, in_mask))
        elif kind == "spheres":
            parts.append(_spheres_part(ga, None if mask is None else in_mask))
        elif kind in ("maps", "regions"):
            parts.append(_maps_part(ga, in_mask))
        else:  # pragma: no cover - rejected by prepare_grid
            raise ConfigError(f"atlases.{ga.source.name}: unknown kind {kind!r}")
    n_total = int(np.prod(shape))
    used = np.zeros(n_total, dtype=bool)
    for p in parts:
        used[p.vox] = True
        used[p.s_vox] = True
        if p.slow_vox is not None:
            used[p.slow_vox] = True
    n_used = int(np.count_nonzero(used))
    if n_used > 0.6 * n_total:  # reading the whole volume is cheaper than gathering
        gather_idx = None
        n_cols = n_total

        def col(v: np.ndarray) -> np.ndarray:
            return v
    else:
        gather_idx = np.flatnonzero(used).astype(np.int64)
        n_cols = n_used
        position = np.cumsum(used, dtype=np.int64) - 1  # voxel -> column in the gathered vector

        def col(v: np.ndarray) -> np.ndarray:
            return position[v]

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
        affine=grid.affine,
        gather=gather_idx,
        matrix=matrix,
        support=support,
        atlases=[p.op for p in parts],
    )


def prepare(
    sources: list[AtlasSource],
    shape: tuple[int, int, int],
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    cache_dir: Path | str | None = None,
) -> Operators:
    """Operators of every atlas for a data grid ``(shape, affine)`` and brain ``mask``.

    Labels are resampled to the grid with nearest neighbour, maps linearly;
    spheres are placed on the grid. Voxels outside ``mask`` (boolean 3D array
    on the grid, or None for every voxel) are not used. Same as
    ``apply_mask(prepare_grid(sources, shape, affine, cache_dir), mask)``; with
    ``cache_dir`` the grid-level part is cached on disk (identical results).
    """
    return apply_mask(prepare_grid(sources, shape, affine, cache_dir), mask)


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
    from scipy import ndimage

    groups = op.valid_cols + 1
    fn = getattr(ndimage, op.strategy)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = fn(values[op.slow_pos], labels=op.slow_groups, index=groups)
    return np.asarray(out, dtype=float)


__all__ = [
    "prepare",
    "prepare_grid",
    "apply_mask",
    "grid_atlas",
    "GridOperators",
    "GridAtlas",
    "Operators",
    "AtlasOperator",
    "finish_signals",
    "slow_reduce",
]

"""Regions from statistical maps: thresholding, then connected regions.

Semantics of nilearn 0.14.1's ``threshold_img`` and ``connected_regions``
(see docs/extraction.md): a value or percentile threshold (two-sided by
default) with an optional cluster size threshold, then each map is split into
6-connected components, or into the basins of its smoothed local maxima grown
with a random walker (Grady 2006, as nilearn and scikit-image);
regions larger than ``min_region_size`` mm^3
are kept, each as its own map with the original values.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse

from .stream import smooth_volume, smoothing_sigmas


def threshold_cutoff(data: np.ndarray, threshold: float | str, two_sided: bool = True) -> float:
    """The cutoff value of ``threshold`` (a number, or a percentile string like ``"97%"``).

    Percentiles are taken over every voxel of every volume (zeros included) of
    ``|data|`` (two-sided) or of the non-negative values, plus 1e-5.
    """
    if isinstance(threshold, str):
        text = threshold.strip()
        if not text.endswith("%"):
            raise ValueError(f"threshold {threshold!r}: a string threshold must be like '97%'")
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"threshold {threshold!r} is not a percentile") from None
        if not 0 <= pct <= 100:
            raise ValueError(f"threshold {threshold!r}: the percentile must be in [0, 100]")
        ref = np.abs(data) if two_sided else data[data >= 0]
        if ref.size == 0:
            raise ValueError("no non-negative value to take a percentile of")
        return float(np.percentile(ref.ravel(), pct)) + 1e-5
    value = float(threshold)
    if value < 0 and two_sided:
        raise ValueError(f"threshold {value} must be positive when two_sided is true")
    return value


def threshold_maps(
    data: np.ndarray,
    threshold: float | str,
    two_sided: bool = True,
    cluster_threshold: int = 0,
) -> np.ndarray:
    """Zero the values below threshold (and clusters smaller than ``cluster_threshold`` voxels).

    ``data`` is 3D or 4D; non-finite values count as 0. Surviving voxels keep
    their values.
    """
    arr = np.array(data, copy=True)
    if arr.dtype.kind == "f":
        arr[~np.isfinite(arr)] = 0
    cutoff = threshold_cutoff(arr, threshold, two_sided)
    if two_sided:
        arr[(arr > -cutoff) & (arr < cutoff)] = 0
    elif cutoff >= 0:
        arr[arr < cutoff] = 0
    else:
        arr[arr > cutoff] = 0
    if cluster_threshold > 0:
        vols = arr[..., None] if arr.ndim == 3 else arr
        for k in range(vols.shape[3]):
            vol = vols[..., k]
            for sign in np.unique(np.sign(vol)):
                if sign == 0:
                    continue
                clusters, _ = ndimage.label(vol * sign > 0)
                sizes = np.bincount(clusters.ravel())
                small = sizes < cluster_threshold
                small[0] = False
                vol[small[clusters]] = 0
    return arr


def peak_mask(
    image: np.ndarray, min_distance: int = 10, threshold_rel: float = 0.1, threshold_abs: float = 0.0
) -> np.ndarray:
    """Voxels that are the maximum of their ``(2 min_distance + 1)``-wide cube (zero padded)
    and exceed ``max(threshold_rel * max, threshold_abs)``."""
    if np.all(image == image.flat[0]):
        return np.zeros(image.shape, dtype=bool)
    local_max = ndimage.maximum_filter(image, size=2 * min_distance + 1, mode="constant", cval=0)
    kept = np.where(image == local_max, image, 0)
    cut = max(float(kept.max()) * threshold_rel, threshold_abs)
    return kept > cut


def _grid_edges(shape: tuple[int, int, int]) -> np.ndarray:
    """(2, n_edges) voxel index pairs of 6-neighbours: along axis 2, then 1, then 0."""
    ids = np.arange(int(np.prod(shape))).reshape(shape)
    pairs = [
        (ids[:, :, :-1], ids[:, :, 1:]),
        (ids[:, :-1, :], ids[:, 1:, :]),
        (ids[:-1, :, :], ids[1:, :, :]),
    ]
    return np.hstack([np.vstack([a.ravel(), b.ravel()]) for a, b in pairs])


def _edge_weights(data: np.ndarray, beta: float) -> np.ndarray:
    """``exp(-beta * diff^2 / (10 std)) + 1e-10`` over the edges of :func:`_grid_edges`."""
    diffs = [
        np.abs(data[:, :, :-1] - data[:, :, 1:]),
        np.abs(data[:, :-1, :] - data[:, 1:, :]),
        np.abs(data[:-1, :, :] - data[1:, :, :]),
    ]
    grad2 = np.concatenate([d.ravel().astype(np.float64) for d in diffs]) ** 2
    scale = beta / (10 * data.std())  # in the data's float type, as the reference does
    return np.exp(-(grad2 * scale)) + 1e-10


def random_walk(data: np.ndarray, labels: np.ndarray, beta: float = 130.0, tol: float = 1e-3):
    """Grady's random walker: each free voxel (0) gets the seed label (>0) whose walkers
    reach it first; -1 voxels are inactive. ``labels`` must have no isolated part
    (see :func:`_grow_seeds`). Conjugate gradients without preconditioner, relative
    tolerance ``tol``."""
    from scipy.sparse.linalg import cg

    active = labels >= 0
    flat_labels = labels[active]  # active voxels in C order
    edges = _grid_edges(labels.shape)
    weights = _edge_weights(data, beta)
    flat_active = active.ravel()
    both = flat_active[edges[0]] & flat_active[edges[1]]
    edges, weights = edges[:, both], weights[both]
    node = np.cumsum(flat_active) - 1  # voxel -> active node number
    edges = node[edges]
    n = int(flat_active.sum())
    rows = np.hstack([edges[0], edges[1]])
    cols = np.hstack([edges[1], edges[0]])
    off = np.hstack([-weights, -weights])
    adjacency = sparse.coo_matrix((off, (rows, cols)), shape=(n, n))
    degree = -np.ravel(adjacency.sum(axis=1))
    diag = np.arange(n)
    lap = sparse.coo_matrix(
        (np.hstack([off, degree]), (np.hstack([rows, diag]), np.hstack([cols, diag]))),
        shape=(n, n),
    ).tocsr()
    free = np.flatnonzero(flat_labels == 0)
    seeded = np.flatnonzero(flat_labels > 0)
    lap_free_rows = lap[free]
    coupling = lap_free_rows[:, seeded]
    system = lap_free_rows[:, free].tocsc()
    scores = []
    for lab in range(1, int(flat_labels.max()) + 1):
        indicator = sparse.csr_matrix(flat_labels[seeded] == lab).transpose()
        rhs = -(coupling * indicator).todense()
        scores.append(cg(system, rhs, rtol=tol, atol=0)[0])
    best = np.argmax(np.array(scores), axis=0) + 1
    out = flat_labels.copy()
    out[free] = best.astype(out.dtype)
    result = np.full(labels.shape, -1, dtype=labels.dtype)
    result[active] = out
    return result


def _grow_seeds(data: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Random-walker segmentation of ``data`` from ``seeds`` (-1 inactive, 0 free, >0 seed).

    Free voxels that no seed can reach through active voxels, and seeds that
    touch no free voxel, are made inactive (-1); if nothing is left to segment,
    the seeds are returned unchanged.
    """
    if (seeds != 0).all() or (seeds == 0).all():
        return seeds.copy()
    labels = seeds.copy()
    present = np.unique(labels[labels >= 0])
    if np.any(np.diff(np.unique(labels)) != 1):  # consecutive label values
        keep = labels >= 0
        labels[keep] = np.searchsorted(present, labels[keep])
    labels = labels.astype(np.int32)
    active = labels >= 0
    if (~active).any():
        reached = ndimage.binary_propagation(labels > 0, mask=active)
        labels[~reached & (labels == 0)] = -1
        active = labels >= 0
        touching = ndimage.binary_propagation(labels == 0, mask=active)
        labels[(labels > 0) & ~touching] = -1
    if (labels == -1).all():
        return seeds.copy()
    data = np.asarray(data)
    if data.dtype.kind != "f":
        data = data.astype(np.float64)
    return random_walk(data, labels)


def split_map(
    map3d: np.ndarray,
    affine: np.ndarray,
    extract_type: str = "local_regions",
    smoothing_fwhm: float | None = 6.0,
) -> np.ndarray:
    """Integer region labels of one map (0: no region)."""
    if extract_type == "connected_components":
        labels, _ = ndimage.label(map3d != 0)
        return labels
    if extract_type != "local_regions":
        raise ValueError(f"unknown extract_type {extract_type!r}")
    smoothed = np.array(map3d, copy=True)
    if smoothed.dtype.kind == "f":
        smoothed[~np.isfinite(smoothed)] = 0
    sigmas = smoothing_sigmas(affine, smoothing_fwhm)
    if sigmas is not None:
        smoothed = smooth_volume(smoothed, sigmas)
    seeds, _ = ndimage.label(peak_mask(smoothed))
    seeds[map3d == 0] = -1
    labels = _grow_seeds(map3d, seeds)
    labels[labels == -1] = 0
    return labels


def connected_regions(
    maps: np.ndarray,
    affine: np.ndarray,
    min_region_size: float = 1350.0,
    extract_type: str = "local_regions",
    smoothing_fwhm: float | None = 6.0,
) -> tuple[np.ndarray | None, list[int] | None]:
    """Split each map of a 3D/4D array into regions of more than ``min_region_size`` mm^3.

    Returns the 4D array of region maps (map order, then label order) and the
    index of the map each region comes from; ``(None, None)`` if no region.
    """
    if maps.ndim == 3:
        maps = maps[..., None]
    min_voxels = min_region_size / abs(np.linalg.det(np.asarray(affine)[:3, :3]))
    regions: list[np.ndarray] = []
    parents: list[int] = []
    for k in range(maps.shape[3]):
        map3d = maps[..., k]
        labels = split_map(map3d, affine, extract_type, smoothing_fwhm)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        for label_id in np.flatnonzero(sizes > min_voxels):
            regions.append((labels == label_id) * map3d)
            parents.append(k)
    if not regions:
        return None, None
    return np.stack(regions, axis=-1), parents


__all__ = [
    "threshold_cutoff",
    "threshold_maps",
    "peak_mask",
    "split_map",
    "connected_regions",
]

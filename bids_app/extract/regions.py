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

import warnings

import numpy as np

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
    from scipy import ndimage  # deferred: keeps ``import bids_app.extract`` light

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
    image: np.ndarray,
    min_distance: int = 10,
    threshold_rel: float = 0.1,
    threshold_abs: float = 0.0,
) -> np.ndarray:
    """Voxels that are the maximum of their ``(2 min_distance + 1)``-wide cube (zero padded)
    and exceed ``max(threshold_rel * max, threshold_abs)``."""
    from scipy import ndimage  # deferred: keeps ``import bids_app.extract`` light

    if np.all(image == image.flat[0]):
        return np.zeros(image.shape, dtype=bool)
    local_max = ndimage.maximum_filter(image, size=2 * min_distance + 1, mode="constant", cval=0)
    kept = np.where(image == local_max, image, 0)
    cut = max(float(kept.max()) * threshold_rel, threshold_abs)
    return kept > cut


def _grow_seeds(data: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Random-walker segmentation of ``data`` from ``seeds`` (-1 inactive, 0 free, >0 seed).

    scikit-image's ``random_walker`` (Grady 2006; beta 130, conjugate gradients to
    1e-3, as nilearn). Free voxels that no seed can reach through active voxels
    are made inactive first; if nothing is left to segment, the seeds are
    returned unchanged.
    """
    from scipy import ndimage  # deferred: keeps ``import bids_app.extract`` light
    from skimage.segmentation import random_walker

    if (seeds != 0).all() or (seeds == 0).all():
        return seeds.copy()
    labels = seeds.astype(np.int32)
    active = labels >= 0
    if (~active).any():
        reached = ndimage.binary_propagation(labels > 0, mask=active)
        labels[~reached & (labels == 0)] = -1
    if not (labels == 0).any():
        return labels
    data = np.asarray(data)
    if data.dtype.kind != "f":
        data = data.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "isolated seeds/voxels": handled as nilearn does
        return random_walker(data, labels, beta=130, mode="cg", tol=1e-3)


def split_map(
    map3d: np.ndarray,
    affine: np.ndarray,
    extract_type: str = "local_regions",
    smoothing_fwhm: float | None = 6.0,
) -> np.ndarray:
    """Integer region labels of one map (0: no region)."""
    from scipy import ndimage  # deferred: keeps ``import bids_app.extract`` light

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

"""Voxels of spheres around seeds (world mm) on a data grid, with nilearn 0.14.1's rules.

A voxel belongs to a seed's sphere when the distance between its centre and
the seed is at most the radius (inclusive). The voxel nearest to the seed
(index rounded half to even) always belongs, and so does the first voxel (in C
order) whose world coordinates truncated toward zero equal the seed's
coordinates truncated toward zero. Only candidate voxels (the mask, or the
whole grid) are considered.

The work is split in two: :func:`sphere_candidates` depends only on the seeds
and the grid (done once per grid, cacheable); :func:`mask_members` applies a
brain mask to its result (cheap, once per run).
"""

from __future__ import annotations

import numpy as np


def _box(seed: np.ndarray, reach: float, inv: np.ndarray, shape: tuple[int, ...]):
    corners = np.array(
        [
            [seed[0] + sx * reach, seed[1] + sy * reach, seed[2] + sz * reach, 1.0]
            for sx in (-1, 1)
            for sy in (-1, 1)
            for sz in (-1, 1)
        ]
    )
    ijk = corners @ inv.T
    lo = np.maximum(np.floor(ijk[:, :3].min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk[:, :3].max(axis=0)).astype(int) + 1, np.asarray(shape) - 1)
    return lo, hi


def sphere_candidates(
    seeds: np.ndarray,
    radius: float | np.ndarray | None,
    shape: tuple[int, int, int],
    affine: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grid-level sphere membership, before any mask. ``radius``: one for every seed, one
    per seed (an array), or None (the nearest voxel only).

    Returns
    -------
    core : list of ndarray
        Per seed, the flat (Fortran-order) indices, ascending, of the voxels within
        ``radius`` and of the nearest voxel.
    same : list of ndarray
        Per seed, the flat indices of the voxels whose truncated world coordinates
        equal the truncated seed, in C order of the voxel indices: the first one
        inside the mask also belongs to the sphere.
    """
    affine = np.asarray(affine, dtype=float)
    inv = np.linalg.inv(affine)
    shape = tuple(int(n) for n in shape[:3])
    seeds = np.asarray(seeds, dtype=float)
    radii = np.broadcast_to(np.asarray(0.0 if radius is None else radius, dtype=float), len(seeds))
    core: list[np.ndarray] = []
    same_list: list[np.ndarray] = []
    empty = np.zeros(0, dtype=np.int64)
    for seed, r in zip(seeds, radii, strict=True):
        lo, hi = _box(seed, max(r, 2.0), inv, shape)
        if np.any(hi < lo):
            core.append(empty)
            same_list.append(empty)
            continue
        ii, jj, kk = np.meshgrid(
            *(np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)), indexing="ij"
        )
        ii, jj, kk = ii.ravel(), jj.ravel(), kk.ravel()
        wx = affine[0, 0] * ii + affine[0, 1] * jj + affine[0, 2] * kk + affine[0, 3]
        wy = affine[1, 0] * ii + affine[1, 1] * jj + affine[1, 2] * kk + affine[1, 3]
        wz = affine[2, 0] * ii + affine[2, 1] * jj + affine[2, 2] * kk + affine[2, 3]
        inside = np.zeros(ii.shape, bool)
        if radius is not None:
            dx, dy, dz = wx - seed[0], wy - seed[1], wz - seed[2]
            inside = dx * dx + dy * dy + dz * dz <= r * r
        # the nearest voxel
        near = np.round(np.dot(inv, np.r_[seed, 1.0])[:3]).astype(int)
        inside |= (ii == near[0]) & (jj == near[1]) & (kk == near[2])
        # the voxels whose truncated world coordinates equal the truncated seed
        trunc = np.array([int(s) for s in seed])
        same = (
            (wx.astype(int) == trunc[0])
            & (wy.astype(int) == trunc[1])
            & (wz.astype(int) == trunc[2])
        )
        flat = ii + shape[0] * (jj + shape[1] * kk)
        core.append(np.sort(flat[inside].astype(np.int64)))
        same_list.append(flat[same].astype(np.int64))
    return core, same_list


def mask_members(
    core: list[np.ndarray], same: list[np.ndarray], in_mask: np.ndarray | None
) -> list[np.ndarray]:
    """Sphere voxels (flat, ascending) of :func:`sphere_candidates` inside ``in_mask``.

    ``in_mask`` is a flat (Fortran-order) boolean array of the grid, or None for
    every voxel.
    """
    members: list[np.ndarray] = []
    for c, s in zip(core, same, strict=True):
        if in_mask is not None:
            c = c[in_mask[c]]
            s = s[in_mask[s]]
        if len(s) and not np.any(c == s[0]):
            c = np.sort(np.append(c, s[0]))
        members.append(c)
    return members


def sphere_members(
    seeds: np.ndarray,
    radius: float | None,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    candidates: np.ndarray | None = None,
) -> list[np.ndarray]:
    """For each seed, the flat (Fortran-order) indices of its voxels, ascending.

    Parameters
    ----------
    seeds : (n, 3) world coordinates in mm.
    radius : sphere radius in mm, or None (nearest voxel only).
    shape, affine : the data grid.
    candidates : boolean 3D array of usable voxels (None: every voxel).
    """
    core, same = sphere_candidates(seeds, radius, shape, affine)
    in_mask = None
    if candidates is not None:
        in_mask = np.asarray(candidates, dtype=bool).reshape(-1, order="F")
    return mask_members(core, same, in_mask)


def overlapping(members: list[np.ndarray]) -> list[tuple[int, int]]:
    """Pairs of spheres (0-based) sharing at least one voxel."""
    if not members:
        return []
    owner = np.concatenate([np.full(len(m), i) for i, m in enumerate(members)])
    vox = np.concatenate(members)
    order = np.argsort(vox, kind="stable")
    vox, owner = vox[order], owner[order]
    dup = np.flatnonzero(np.diff(vox) == 0)
    return sorted({(int(owner[d]), int(owner[d + 1])) for d in dup})


__all__ = ["sphere_candidates", "mask_members", "sphere_members", "overlapping"]

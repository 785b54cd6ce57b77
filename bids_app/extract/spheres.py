"""Voxels of spheres around seeds (world mm) on a data grid, with nilearn 0.14.1's rules.

A voxel belongs to a seed's sphere when the distance between its centre and
the seed is at most the radius (inclusive). The voxel nearest to the seed
(index rounded half to even) always belongs, and so does the first voxel (in C
order) whose world coordinates truncated toward zero equal the seed's
coordinates truncated toward zero. Only candidate voxels (the mask, or the
whole grid) are considered.
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
    affine = np.asarray(affine, dtype=float)
    inv = np.linalg.inv(affine)
    shape = tuple(int(n) for n in shape[:3])
    r = 0.0 if radius is None else float(radius)
    members: list[np.ndarray] = []
    for seed in np.asarray(seeds, dtype=float):
        lo, hi = _box(seed, max(r, 2.0), inv, shape)
        if np.any(hi < lo):
            members.append(np.zeros(0, dtype=np.int64))
            continue
        ii, jj, kk = np.meshgrid(
            *(np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)), indexing="ij"
        )
        ii, jj, kk = ii.ravel(), jj.ravel(), kk.ravel()
        ok = np.ones(ii.shape, bool) if candidates is None else candidates[ii, jj, kk]
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
        # the first voxel whose truncated world coordinates equal the truncated seed
        trunc = np.array([int(s) for s in seed])
        same = (
            (wx.astype(int) == trunc[0])
            & (wy.astype(int) == trunc[1])
            & (wz.astype(int) == trunc[2])
        ) & ok
        if same.any():
            inside[np.flatnonzero(same)[0]] = True
        inside &= ok
        flat = ii[inside] + shape[0] * (jj[inside] + shape[1] * kk[inside])
        members.append(np.sort(flat.astype(np.int64)))
    return members


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


__all__ = ["sphere_members", "overlapping"]

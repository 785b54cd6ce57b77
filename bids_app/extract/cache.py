"""On-disk cache of grid-level atlas operators (:func:`bids_app.extract.prepare_grid`).

One entry per atlas and BOLD grid: ``<cache_dir>/<kind>-<key>.npz``, an
uncompressed ``.npz`` of plain numeric arrays (read with
``allow_pickle=False``). The key (SHA-256 hex) covers:

* the atlas's content digest (:attr:`bids_app.extract.AtlasSource.digest`: its
  files' bytes and the options that change its regions);
* the grid: shape and the exact float64 affine (``-0.0`` taken as ``0.0``). The
  affine is not rounded: two grids a rounding error apart get two entries, so
  that a cached operator is always the one the grid would have produced;
* :data:`CACHE_FORMAT`, the package version, and the numpy and scipy versions
  (resampling results could change with scipy).

Writing is atomic: the entry is written to a temporary file in the cache folder,
flushed to disk, then renamed over the final name (``os.replace``). Several
processes (cluster jobs sharing a cache folder) may build and write the same
entry at the same time: every writer succeeds, the last rename wins, and a
reader only ever opens a complete file. An unreadable, truncated or foreign
entry is ignored (debug log) and rebuilt; a cache folder that cannot be
written only costs the rebuild. The cache never makes ``prepare`` fail.
Temporary files of killed writers are removed by the next writer of the same
entry once they are an hour old.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when the content or meaning of the cached arrays changes (2: maps on a grid that
# samples the atlas's voxel centres are sampled, not interpolated).
CACHE_FORMAT = 2

_KEY_ARRAY = "__key__"


def _versions() -> dict[str, str]:
    import scipy

    from .. import __version__

    return {"bids_connectome": __version__, "numpy": np.__version__, "scipy": scipy.__version__}


def grid_key(digest: str, kind: str, shape: tuple[int, ...], affine: np.ndarray) -> str:
    """Cache key (SHA-256 hex) of one atlas (content ``digest``, ``kind``) on a grid."""
    affine = np.asarray(affine, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    payload = {
        "format": CACHE_FORMAT,
        "versions": _versions(),
        "atlas": digest,
        "kind": kind,
        "shape": [int(n) for n in shape[:3]],
        "affine": [float.hex(float(v)) for v in affine.ravel()],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir: Path | str, key: str, kind: str = "") -> Path:
    """Where the entry of ``key`` lives (``kind`` only makes the name readable)."""
    return Path(cache_dir) / f"{kind + '-' if kind else ''}{key}.npz"


def load_entry(cache_dir: Path | str, key: str, kind: str = "") -> dict[str, np.ndarray] | None:
    """The arrays of entry ``key``, or None (absent, unreadable or not this key's entry)."""
    path = entry_path(cache_dir, key, kind)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        stored = str(arrays.pop(_KEY_ARRAY))
    except Exception as err:  # corrupt, truncated, foreign: rebuild
        log.debug("ignoring unreadable cache entry %s: %s: %s", path, type(err).__name__, err)
        return None
    if stored != key:
        log.debug("ignoring cache entry %s: it holds key %s", path, stored)
        return None
    return arrays


def save_entry(
    cache_dir: Path | str, key: str, arrays: dict[str, np.ndarray], kind: str = ""
) -> Path | None:
    """Write entry ``key`` atomically; the path written, or None if the cache is not writable."""
    folder = Path(cache_dir)
    final = entry_path(folder, key, kind)
    tmp = folder / f".{final.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            np.savez(fh, **{_KEY_ARRAY: np.array(key)}, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as err:
        log.debug("cannot write cache entry %s: %s", final, err)
        _unlink(tmp)
        return None
    _remove_stale(folder, final.stem)
    return final


# A temporary file older than this was left by a writer that died (a write takes seconds).
STALE_SECONDS = 3600.0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _remove_stale(folder: Path, stem: str) -> None:
    """Temporary files of entry ``stem`` left behind by killed writers."""
    now = time.time()
    for path in folder.glob(f".{stem}.*.tmp"):
        try:
            if now - path.stat().st_mtime > STALE_SECONDS:
                _unlink(path)
        except OSError:
            pass


def compact_index(arr: np.ndarray) -> np.ndarray:
    """An integer array as int32 when its values fit (smaller entries), else unchanged."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 4:
        info = np.iinfo(np.int32)
        if arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max):
            return arr.astype(np.int32)
    return arr


__all__ = ["CACHE_FORMAT", "grid_key", "entry_path", "load_entry", "save_entry", "compact_index"]

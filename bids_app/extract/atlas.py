"""Atlases: loading, lookup tables and resampling to a data grid.

An :class:`AtlasSource` holds what one configured atlas needs, independent of
any BOLD grid: label arrays, sparse map weights or sphere seeds, in the
atlas's own space, and a content digest of its inputs. It is picklable (sent
once to every worker process). Operators for a given BOLD grid are built by
:func:`bids_app.extract.prepare`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy import sparse

from ..errors import ConfigError, InputDataError
from ..vocabulary import BUILTIN_COORDINATES
from .stream import VolumeReader, load_image

log = logging.getLogger(__name__)


@dataclass
class AtlasSource:
    """One atlas of the config, loaded in its own space.

    Attributes
    ----------
    name, kind
        From the config (``kind`` is ``labels``, ``maps``, ``spheres`` or ``regions``).
    lut
        One row per region, in output column order: ``index``, ``name``, ``x``, ``y``,
        ``z`` (world mm centre: label centroid, map centre of mass of ``|w|``, or the
        seed); spheres add ``radius``, regions add ``parent_map``.
    outputs
        Images to write once to the outputs, by BIDS suffix (``regions``: the
        extracted region maps as ``probseg``).
    digest
        SHA-256 (hex) of the atlas inputs, computed once by :func:`load_atlas`: the
        bytes of every input file (image, labels table, atlas mask, coordinates
        table or built-in set) and every config option except ``name`` and
        ``min_coverage`` (see :func:`atlas_digest`). Empty for a source built by
        hand: such a source is never cached.
    """

    name: str
    kind: str
    lut: pd.DataFrame
    outputs: dict[str, Any] = field(default_factory=dict)
    min_coverage: float | None = None
    source: str = ""
    digest: str = ""
    # labels
    labels: np.ndarray | None = None  # int32, own grid
    label_ids: np.ndarray | None = None  # label value of each region (LUT order)
    background: int = 0
    strategy: str = "mean"
    atlas_mask: np.ndarray | None = None  # bool, own grid (config ``mask``)
    atlas_mask_affine: np.ndarray | None = None
    # maps / regions: weights as (voxels in Fortran order) x (maps), CSC
    maps: sparse.csc_matrix | None = None
    maps_dtype: str = "float32"
    allow_overlap: bool = True
    # shared grid of labels / maps
    shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    # spheres
    seeds: np.ndarray | None = None
    radius: float | np.ndarray | None = None  # one for all seeds, or one per seed
    # the config entry, and whether the voxel arrays (labels, maps) are still to be read:
    # a source described by the cache (:func:`load_atlas`) reads them only if a grid needs
    # them (see :func:`ensure_loaded`)
    cfg: Any = None
    light: bool = False

    @property
    def region_names(self) -> list[str]:
        return [str(n) for n in self.lut["name"]]

    @property
    def n_regions(self) -> int:
        return len(self.lut)


# --- tables -----------------------------------------------------------------------------------


def _read_table(path: Path | str, what: str) -> pd.DataFrame:
    """A TSV/CSV table; a header row is detected (a first cell that is not a number)."""
    path = Path(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    if path.suffix.lower() not in (".tsv", ".csv"):
        # other text tables (e.g. Seitzman's ROI list): tabs, commas, else any whitespace
        try:
            first = path.read_text(errors="replace").splitlines()[:1]
        except OSError as err:
            raise InputDataError(f"{path}: cannot read the {what} table: {err}") from None
        sep = "\t" if first and "\t" in first[0] else "," if first and "," in first[0] else r"\s+"
    try:
        raw = pd.read_csv(
            path, sep=sep, header=None, dtype=str, keep_default_na=False, engine="python"
        )
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputDataError(f"{path}: cannot read the {what} table: {err}") from None
    if raw.empty:
        raise InputDataError(f"{path}: the {what} table is empty")
    raw = raw.apply(lambda col: col.str.strip())
    try:
        float(raw.iloc[0, 0])
        has_header = False
    except ValueError:
        has_header = True
    if has_header:
        frame = raw.iloc[1:].reset_index(drop=True)
        frame.columns = [str(c) for c in raw.iloc[0]]
    else:
        frame = raw
        frame.columns = [f"col{i}" for i in range(raw.shape[1])]
    # Trailing empty columns (CSV written with extra commas).
    keep = [c for c in frame.columns if (frame[c] != "").any() or has_header]
    return frame[keep]


def _column(frame: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in frame.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def read_label_table(path: Path | str) -> pd.DataFrame:
    """``index`` (int) and ``name`` of a labels TSV/CSV.

    Accepted: a header with ``index`` and ``name`` (or ``label``/``labels``/``region``)
    columns (BIDS dseg.tsv, Schaefer tables), or no header with ``index, name``
    rows (neuroparc CSVs), or a single column of names (positional).
    """
    frame = _read_table(path, "labels")
    if frame.columns[0].startswith("col"):  # no header
        if frame.shape[1] == 1:
            return pd.DataFrame({"index": np.arange(len(frame)), "name": frame["col0"]}).assign(
                positional=True
            )
        idx_col, name_col = "col0", "col1"
    else:
        idx_col = _column(frame, ("index", "label_id", "id", "roi", "number", "value"))
        name_col = _column(frame, ("name", "label", "labels", "region", "region_name", "roi_name"))
        if name_col is None:
            raise InputDataError(
                f"{path}: no name column in the labels table (expected 'name'); "
                f"columns: {', '.join(frame.columns)}"
            )
        if idx_col is None:
            return pd.DataFrame(
                {"index": np.arange(len(frame)), "name": frame[name_col].to_numpy()}
            ).assign(positional=True)
    try:
        index = frame[idx_col].astype(float)
    except ValueError:
        raise InputDataError(f"{path}: column '{idx_col}' must hold integer label values") from None
    if not np.all(index == np.round(index)):
        raise InputDataError(f"{path}: column '{idx_col}' must hold integer label values")
    out = pd.DataFrame({"index": index.astype(np.int64).to_numpy(), "name": frame[name_col]})
    if out["index"].duplicated().any():
        dup = out.loc[out["index"].duplicated(), "index"].tolist()
        raise InputDataError(f"{path}: repeated index values in the labels table: {dup[:10]}")
    return out.assign(positional=False)


def unique_names(names: list[str], index: list[Any]) -> list[str]:
    """Region names made unique (empty ones replaced by the index) by appending ``_<index>``."""
    names = [str(n) if str(n) != "" else str(i) for n, i in zip(names, index, strict=True)]
    counts = pd.Series(names).value_counts()
    return [f"{n}_{i}" if counts[n] > 1 else n for n, i in zip(names, index, strict=True)]


def _builtin_coordinates(spec: str | Path):
    """The packaged table of a built-in coordinate set, or None."""
    builtin = str(spec).lower()
    if builtin not in BUILTIN_COORDINATES:
        return None
    return resources.files("bids_app.data").joinpath("coords", f"{builtin}.tsv")


def read_coordinates(spec: str | Path) -> pd.DataFrame:
    """Seeds of a built-in set (``power2011``, ``dosenbach2010``, ``seitzman2018``) or a
    TSV/CSV file with ``x``, ``y``, ``z`` columns (+ optional ``name``, ``index``, ...)."""
    ref = _builtin_coordinates(spec)
    if ref is not None:
        with resources.as_file(ref) as path:
            table = pd.read_csv(path, sep="\t")
        return table
    path = Path(spec)
    frame = _read_table(path, "coordinates")
    cols = [_column(frame, (ax, f"{ax}.mni", f"{ax}_mni")) for ax in "xyz"]
    if any(c is None for c in cols):
        raise InputDataError(
            f"{path}: the coordinates table needs x, y, z columns; got {', '.join(frame.columns)}"
        )
    try:
        xyz = frame[cols].astype(float).to_numpy()
    except ValueError:
        raise InputDataError(f"{path}: x, y, z must be numbers (mm)") from None
    if not np.isfinite(xyz).all():
        raise InputDataError(f"{path}: x, y, z must be finite numbers (mm)")
    idx_col = _column(frame, ("index", "roi", "number"))
    index = frame[idx_col].astype(int).to_numpy() if idx_col else np.arange(1, len(frame) + 1)
    out = pd.DataFrame({"index": index, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    name_col = _column(frame, ("name", "label", "region", "roi_name"))
    out["name"] = frame[name_col].to_numpy() if name_col else [str(i) for i in index]
    net_col = _column(frame, ("network", "netname", "network_name"))
    if net_col:
        out["network"] = frame[net_col].to_numpy()
    radius_col = _column(frame, ("radius", "radius(mm)", "radius_mm", "radiusmm"))
    if radius_col:
        try:
            out["radius"] = frame[radius_col].astype(float).to_numpy()
        except ValueError:
            raise InputDataError(f"{path}: column {radius_col!r} must hold numbers (mm)") from None
    return out


# --- content digest ---------------------------------------------------------------------------

# Config options that do not change an atlas's regions (voxels, weights, seeds).
_DIGEST_EXCLUDED = ("name", "min_coverage")


def file_digest(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as err:
        raise InputDataError(f"{path}: cannot read the file: {err}") from None
    return h.hexdigest()


def _config_items(cfg) -> dict[str, Any]:
    if hasattr(cfg, "model_dump"):
        return {k: getattr(cfg, k) for k in type(cfg).model_fields}
    return dict(vars(cfg))


def atlas_digest(cfg) -> str:
    """Content digest (SHA-256 hex) of one configured atlas.

    Covers the bytes of every input file (paths are replaced by the digest of
    their content, so a moved or renamed file keeps its digest; a built-in
    coordinate set by its packaged table) and every other option of the config
    entry except ``name`` and ``min_coverage``, which do not change the regions.
    """
    payload: dict[str, Any] = {}
    for key, value in sorted(_config_items(cfg).items()):
        if key in _DIGEST_EXCLUDED:
            continue
        if key == "coordinates" and value is not None:
            ref = _builtin_coordinates(value)
            if ref is not None:
                value = {
                    "builtin": str(value).lower(),
                    "sha256": hashlib.sha256(ref.read_bytes()).hexdigest(),
                }
            else:
                value = {"sha256": file_digest(value)}
        elif isinstance(value, Path):
            value = {"sha256": file_digest(value)}
        payload[key] = value
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- images -----------------------------------------------------------------------------------


def _as_3d(data: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"{path}: the {what} image must be 3D, got shape {data.shape}")
    return data


def load_mask_image(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """A mask image as a boolean array (any non-zero, all volumes) and its affine."""
    img = load_image(path, "mask image")
    data = np.asanyarray(img.dataobj)
    data = np.where(np.isfinite(data), data, 0) if data.dtype.kind == "f" else data
    if data.ndim == 4:
        data = (data != 0).all(axis=3)
    mask = _as_3d(np.asarray(data), path, "mask") != 0
    if not mask.any():
        raise InputDataError(f"{path}: the mask image is empty")
    return mask, np.asarray(img.affine, dtype=float)


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b)


def transform_to(src_affine: np.ndarray, tgt_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` mapping target voxel indices to source voxel indices (``A`` 1-D if diagonal)."""
    if np.all(src_affine == tgt_affine):
        t = np.eye(4)
    else:
        import scipy.linalg  # deferred: keeps ``import bids_app.extract`` light

        t = np.dot(scipy.linalg.inv(src_affine), tgt_affine)
    a, b = t[:3, :3], t[:3, 3]
    if np.all(np.diag(np.diag(a)) == a):
        a = np.diag(a)
    return a, b


def resample(
    data: np.ndarray,
    src_affine: np.ndarray,
    tgt_shape: tuple[int, ...],
    tgt_affine: np.ndarray,
    order: int,
) -> np.ndarray:
    """A 3D array on another grid (scipy ``affine_transform``, constant 0 outside, dtype kept)."""
    if same_grid(data.shape, src_affine, tgt_shape, tgt_affine):
        return data
    from scipy import ndimage

    a, b = transform_to(src_affine, tgt_affine)
    out = np.zeros(tuple(tgt_shape[:3]), dtype=data.dtype)
    ndimage.affine_transform(
        data, a, offset=b, output_shape=tuple(tgt_shape[:3]), order=order, output=out, cval=0
    )
    return out


# --- loaders ----------------------------------------------------------------------------------


def _labels_array(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    img = load_image(path, "labels image")
    data = _as_3d(np.asanyarray(img.dataobj), path, "labels")
    if data.dtype.kind == "f":
        data = np.where(np.isfinite(data), data, 0)
        if not np.all(data == np.round(data)):
            raise InputDataError(f"{path}: a labels image must hold integer values")
    elif data.dtype.kind not in "iub":
        raise InputDataError(f"{path}: unsupported labels data type {data.dtype}")
    if data.size and (data.max() > np.iinfo(np.int32).max or data.min() < np.iinfo(np.int32).min):
        raise InputDataError(f"{path}: label values do not fit in 32-bit integers")
    return np.asarray(data, dtype=np.int32), np.asarray(img.affine, dtype=float)


def make_lut(index, names: list[str], centres: np.ndarray, **extra) -> pd.DataFrame:
    """Lookup table: ``index``, ``name``, world centre ``x``, ``y``, ``z``, then ``extra`` columns."""
    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    columns = {"index": index, "name": names, "x": centres[:, 0], "y": centres[:, 1]}
    return pd.DataFrame({**columns, "z": centres[:, 2], **extra})


# Largest value range for which labels are mapped with a lookup table (else sorting).
_MAX_LUT_RANGE = 1 << 24


def present_labels(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (``np.unique``, counting when the range is small)."""
    flat = labels.reshape(-1, order="A")
    if flat.size == 0:
        return np.unique(flat)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= _MAX_LUT_RANGE:
        return np.unique(flat)
    counts = np.bincount(flat - lo if lo else flat, minlength=hi - lo + 1)
    return (np.flatnonzero(counts) + lo).astype(labels.dtype)


def label_positions(flat: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each value of ``flat``, its position in the sorted distinct ``ids`` (-1 if absent)."""
    ids = np.asarray(ids)
    if len(ids) == 0 or flat.size == 0:
        return np.full(flat.shape, -1, dtype=np.int64)
    lo = min(int(flat.min()), int(ids[0]))
    hi = max(int(flat.max()), int(ids[-1]))
    if hi - lo < _MAX_LUT_RANGE:
        table = np.full(hi - lo + 1, -1, dtype=np.int64)
        table[ids.astype(np.int64) - lo] = np.arange(len(ids))
        return table[flat.astype(np.int64) - lo if lo else flat]
    pos = np.searchsorted(ids, flat)
    pos[pos == len(ids)] = 0
    return np.where(ids[pos] == flat, pos, -1)


def label_centroids(labels: np.ndarray, affine: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """World centroid (mean voxel position) of each label value in ``ids`` (NaN if absent).

    ``ids`` are sorted and distinct. Voxel index sums are integers, exact in float64, so
    the result equals ``scipy.ndimage.center_of_mass`` bit for bit.
    """
    ids = np.asarray(ids)
    flat = labels.reshape(-1, order="F")
    key = label_positions(flat, ids)
    sel = np.flatnonzero(key >= 0)
    key = key[sel]
    nx, ny = labels.shape[0], labels.shape[1]
    rest, i = np.divmod(sel, nx)
    k, j = np.divmod(rest, ny)
    n = len(ids)
    counts = np.bincount(key, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ijk = np.column_stack(
            [np.bincount(key, weights=axis, minlength=n) / counts for axis in (i, j, k)]
        )
    return apply_affine(affine, ijk.reshape(-1, 3))


def _load_labels(cfg) -> AtlasSource:
    labels, affine = _labels_array(cfg.image)
    present = present_labels(labels)
    ids = present[present != cfg.background_label]
    names: dict[int, str] = {}
    if cfg.labels is not None:
        table = read_label_table(cfg.labels)
        if table["positional"].iloc[0]:
            # names of the sorted label values, background included (nilearn's ``labels=``)
            values = list(present)
            names = {int(v): str(n) for v, n in zip(values, table["name"], strict=False)}
        else:
            names = {int(i): str(n) for i, n in zip(table["index"], table["name"], strict=True)}
        names.pop(int(cfg.background_label), None)
        missing = sorted(set(names) - set(ids.tolist()))
        if missing:
            log.warning(
                "%s: %d labels of %s are absent from the image (kept as n/a columns): %s",
                cfg.name,
                len(missing),
                Path(cfg.labels).name,
                missing[:10],
            )
        unnamed = sorted(set(ids.tolist()) - set(names))
        if unnamed:
            log.warning(
                "%s: %d label values of %s are not in %s and are named by their value: %s",
                cfg.name,
                len(unnamed),
                Path(cfg.image).name,
                Path(cfg.labels).name,
                unnamed[:10] + (["..."] if len(unnamed) > 10 else []),
            )
        ids = np.union1d(ids, np.asarray(sorted(names), dtype=np.int64)).astype(np.int64)
    if len(ids) == 0:
        raise InputDataError(f"{cfg.image}: the labels image has no label (only background)")
    centres = label_centroids(labels, affine, ids)
    names = unique_names([names.get(int(i), str(int(i))) for i in ids], ids.tolist())
    lut = make_lut(ids.astype(np.int64), names, centres)
    atlas_mask = mask_affine = None
    if cfg.mask is not None:
        atlas_mask, mask_affine = load_mask_image(cfg.mask)
    return AtlasSource(
        name=cfg.name,
        kind="labels",
        lut=lut,
        min_coverage=cfg.min_coverage,
        source=str(cfg.image),
        labels=labels,
        label_ids=ids,
        background=int(cfg.background_label),
        strategy=cfg.strategy,
        atlas_mask=atlas_mask,
        atlas_mask_affine=mask_affine,
        shape=tuple(labels.shape),
        affine=affine,
    )


def maps_dtype(dtype: np.dtype) -> np.dtype:
    """Float type nilearn's maps masker works in: float64 for 8-byte types, else float32."""
    return np.dtype(np.float64 if np.dtype(dtype).itemsize >= 8 else np.float32)


def map_centre(
    idx: np.ndarray,
    vals: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
    integer_valued: bool = False,
) -> np.ndarray:
    """World centre of mass of ``|w|`` of one map given as flat (Fortran) indices and values.

    NaN for an all-zero map. Index sums are accumulated in voxel order (``np.cumsum``),
    the total weight with numpy's pairwise sum. ``integer_valued``: the values are
    known to be whole numbers (an integer image), so that index sums below 2**52 are
    exact in any order and numpy's (faster) pairwise sum gives the same bits.
    """
    w = np.abs(vals.astype(float))
    total = w.sum()
    if total <= 0:
        return np.full(3, np.nan)
    rest, i = np.divmod(idx, shape[0])
    k, j = np.divmod(rest, shape[1])
    if integer_valued and total * max(shape[:3]) < 2.0**52:
        sums = np.array([(axis * w).sum() for axis in (i, j, k)])
    else:
        sums = np.array([np.cumsum(axis * w)[-1] for axis in (i, j, k)])
    return apply_affine(affine, sums / total)


def nonzero_indices(vol: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(vol != 0)`` of a 1-D array, faster for mostly-zero volumes: the data
    are first scanned eight bytes at a time, then only the words with a set bit are tested
    element by element (NaN counts as non-zero, -0.0 does not)."""
    per = 8 // vol.dtype.itemsize if 8 % vol.dtype.itemsize == 0 else 0
    if not per or vol.ndim != 1 or not vol.flags.c_contiguous or vol.size < 64:
        return np.flatnonzero(vol != 0)
    n_words = vol.size // per
    words = np.flatnonzero(vol[: n_words * per].view(np.uint64) != 0)
    candidates = (words[:, None] * per + np.arange(per)).ravel()
    if n_words * per < vol.size:
        candidates = np.concatenate([candidates, np.arange(n_words * per, vol.size)])
    return candidates[vol[candidates] != 0]


def _sparse_maps(
    volumes, n_voxels: int, dtype: np.dtype | None = None, grid: tuple | None = None
) -> tuple[sparse.csc_matrix, np.ndarray | None]:
    """:func:`maps_to_sparse`, and each map's centre (:func:`map_centre`) if ``grid`` =
    ``(shape, affine)`` is given, computed volume by volume while the values are at hand."""
    indptr = [0]
    indices, values, centres = [], [], []
    for vol in volumes:
        vol = np.asarray(vol)
        if dtype is None:
            dtype = maps_dtype(vol.dtype)
        nz = nonzero_indices(vol)  # NaN counts as non-zero here, dropped below
        vals = vol[nz].astype(dtype, copy=False)  # vol[nz] is already a copy
        if vals.dtype.kind == "f":
            ok = np.isfinite(vals) & (vals != 0)  # also drops values that underflow to 0
            if not ok.all():
                nz, vals = nz[ok], vals[ok]
        indices.append(nz)
        values.append(vals)
        indptr.append(indptr[-1] + len(nz))
        if grid is not None:
            centres.append(map_centre(nz, vals, *grid, integer_valued=vol.dtype.kind in "iub"))
    centres_arr = np.array(centres, dtype=float).reshape(-1, 3) if grid is not None else None
    if not values:
        return sparse.csc_matrix((n_voxels, 0), dtype=dtype or np.float32), centres_arr
    maps = sparse.csc_matrix(
        (np.concatenate(values), np.concatenate(indices), np.asarray(indptr, dtype=np.int64)),
        shape=(n_voxels, len(indptr) - 1),
    )
    return maps, centres_arr


def maps_to_sparse(volumes, n_voxels: int, dtype: np.dtype | None = None) -> sparse.csc_matrix:
    """Stack flat (Fortran-order) map volumes into a (voxels x maps) CSC matrix.

    ``dtype`` None: the float type nilearn would use for the first volume's type.
    Values are converted to ``dtype``; non-finite values count as 0. Each volume
    is scanned once (a boolean test, then only its non-zero values are touched),
    so a volume may be a reused buffer.
    """
    return _sparse_maps(volumes, n_voxels, dtype)[0]


def maps_centres(maps: sparse.csc_matrix, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World centre of mass of ``|w|`` of each map (NaN for an all-zero map)."""
    out = np.full((maps.shape[1], 3), np.nan)
    for k in range(maps.shape[1]):
        sl = slice(maps.indptr[k], maps.indptr[k + 1])
        out[k] = map_centre(maps.indices[sl], maps.data[sl], shape, affine)
    return out


def _maps_names(cfg, n_maps: int) -> list[str]:
    if cfg.labels is None:
        return [str(i) for i in range(1, n_maps + 1)]
    table = read_label_table(cfg.labels)
    if len(table) != n_maps:
        # a background row is tolerated in front
        if len(table) == n_maps + 1 and str(table["name"].iloc[0]).lower() in (
            "background",
            "null",
            "empty",
        ):
            table = table.iloc[1:]
        else:
            raise InputDataError(
                f"{cfg.labels}: {len(table)} names for {n_maps} maps in {Path(cfg.image).name}"
            )
    return unique_names([str(n) for n in table["name"]], list(range(1, n_maps + 1)))


def _load_maps(cfg) -> AtlasSource:
    reader = VolumeReader(cfg.image)
    maps, centres = _sparse_maps(iter(reader), reader.n_voxels, grid=(reader.shape3, reader.affine))
    dtype = maps.dtype
    if maps.shape[1] == 0 or maps.nnz == 0:
        raise InputDataError(f"{cfg.image}: the maps image is empty (all zeros)")
    names = _maps_names(cfg, maps.shape[1])
    lut = make_lut(np.arange(1, maps.shape[1] + 1), names, centres)  # 1-based, as labels
    return AtlasSource(
        name=cfg.name,
        kind="maps",
        lut=lut,
        min_coverage=cfg.min_coverage,
        source=str(cfg.image),
        maps=maps,
        maps_dtype=str(dtype),
        allow_overlap=cfg.allow_overlap,
        shape=reader.shape3,
        affine=reader.affine,
    )


def _load_regions(cfg) -> AtlasSource:
    from . import regions as _regions  # scipy.ndimage, skimage: only for this kind

    img = load_image(cfg.image, "statistical map image")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputDataError(f"{cfg.image}: expected a 3D or 4D map, got shape {data.shape}")
    data = np.array(data, dtype=maps_dtype(data.dtype))
    affine = np.asarray(img.affine, dtype=float)
    try:
        thresholded = _regions.threshold_maps(
            data, cfg.threshold, two_sided=cfg.two_sided, cluster_threshold=cfg.cluster_threshold
        )
    except ValueError as err:
        raise ConfigError(f"atlases.{cfg.name}: {err}") from None
    region_maps, parents = _regions.connected_regions(
        thresholded,
        affine,
        min_region_size=cfg.min_region_size,
        extract_type=cfg.extract_type,
        smoothing_fwhm=cfg.smoothing_fwhm,
    )
    if region_maps is None:
        raise ConfigError(
            f"atlases.{cfg.name}: no region of {Path(cfg.image).name} survives threshold "
            f"{cfg.threshold!r} and min_region_size {cfg.min_region_size} mm3"
        )
    shape3 = region_maps.shape[:3]
    maps = maps_to_sparse(
        (region_maps[..., k].reshape(-1, order="F") for k in range(region_maps.shape[3])),
        int(np.prod(shape3)),
        region_maps.dtype,
    )
    centres = maps_centres(maps, shape3, affine)
    n = region_maps.shape[3]
    lut = make_lut(
        np.arange(1, n + 1),  # 1-based, as labels
        [str(i) for i in range(1, n + 1)],
        centres,
        parent_map=np.asarray(parents, dtype=int) + 1,
    )
    out_img = nib.Nifti1Image(region_maps, affine)
    out_img.header.set_xyzt_units("mm")
    return AtlasSource(
        name=cfg.name,
        kind="regions",
        lut=lut,
        outputs={"probseg": out_img},
        min_coverage=cfg.min_coverage,
        source=str(cfg.image),
        maps=maps,
        maps_dtype=str(region_maps.dtype),
        allow_overlap=cfg.allow_overlap,
        shape=tuple(shape3),
        affine=affine,
    )


def _load_spheres(cfg) -> AtlasSource:
    table = read_coordinates(cfg.coordinates)
    if len(table) == 0:
        raise InputDataError(f"{cfg.coordinates}: no coordinates")
    if cfg.radius == "table":  # one radius per seed, from the table's radius column
        if "radius" not in table.columns:
            raise InputDataError(
                f"{cfg.coordinates}: radius: table needs a radius column (radius, radius(mm))"
            )
        radius = table["radius"].to_numpy(dtype=float)
        if not (np.isfinite(radius).all() and (radius > 0).all()):
            raise InputDataError(f"{cfg.coordinates}: the radius column must be positive numbers")
    else:
        radius = None if cfg.radius is None else float(cfg.radius)
    lut = make_lut(
        table["index"].astype(int).to_numpy(),
        unique_names([str(n) for n in table["name"]], table["index"].tolist()),
        table[["x", "y", "z"]].to_numpy(dtype=float),
        radius=np.nan if radius is None else radius,
    )
    if "network" in table.columns:
        lut["network"] = table["network"].to_numpy()
    return AtlasSource(
        name=cfg.name,
        kind="spheres",
        lut=lut,
        min_coverage=cfg.min_coverage,
        source=str(cfg.coordinates),
        seeds=lut[["x", "y", "z"]].to_numpy(dtype=float),
        radius=radius,
        allow_overlap=cfg.allow_overlap,
    )


_LOADERS_LIGHT = ("labels", "maps", "spheres")  # kinds a cache entry can describe
_SOURCE_FORMAT = 1


def load_atlas(cfg, cache_dir: Path | str | None = None) -> AtlasSource:
    """Load one configured atlas (labels, maps, spheres or regions) in its own space.

    With ``cache_dir``, what the run engine needs from the atlas besides its voxels (lookup
    table, label values, grid, seeds) comes from a small cache entry when the atlas was
    loaded before: its voxel arrays are then read only if a BOLD grid is not in the
    operator cache either (:func:`ensure_loaded`), so the jobs of a cohort skip reading a
    1 mm atlas.
    """
    loaders = {
        "labels": _load_labels,
        "maps": _load_maps,
        "spheres": _load_spheres,
        "regions": _load_regions,
    }
    if cfg.kind not in loaders:
        raise ConfigError(f"atlases.{cfg.name}: unknown kind {cfg.kind!r}")
    digest = atlas_digest(cfg)
    if cache_dir is not None and cfg.kind in _LOADERS_LIGHT:
        src = _light_source(cfg, digest, Path(cache_dir))
        if src is not None:
            return src
    src = loaders[cfg.kind](cfg)
    src.digest, src.cfg = digest, cfg
    if cache_dir is not None and cfg.kind in _LOADERS_LIGHT:
        _save_light(src, Path(cache_dir))
    return src


def ensure_loaded(src: AtlasSource) -> AtlasSource:
    """``src`` with its voxel arrays (read now if it came from the cache)."""
    if src.light:
        full = load_atlas(src.cfg)
        for name in ("labels", "atlas_mask", "atlas_mask_affine", "maps"):
            setattr(src, name, getattr(full, name))
        src.light = False
    return src


def _light_path(cache_dir: Path, kind: str, digest: str) -> Path:
    return cache_dir / f"source-{kind}-{digest}.json"


def _save_light(src: AtlasSource, cache_dir: Path) -> None:
    from ..write import write_text

    lut = {
        col: {"dtype": str(src.lut[col].dtype), "values": src.lut[col].tolist()}
        for col in src.lut.columns
    }
    entry = {
        "format": _SOURCE_FORMAT,
        "digest": src.digest,
        "lut": lut,
        "columns": list(src.lut.columns),
        "label_ids": None if src.label_ids is None else np.asarray(src.label_ids).tolist(),
        "maps_dtype": src.maps_dtype,
        "shape": None if src.shape is None else list(src.shape),
        "affine": None if src.affine is None else np.asarray(src.affine).tolist(),
        "seeds": None if src.seeds is None else np.asarray(src.seeds).tolist(),
        "radius": src.radius.tolist() if isinstance(src.radius, np.ndarray) else src.radius,
    }
    try:
        write_text(_light_path(cache_dir, src.kind, src.digest), json.dumps(entry))
    except OSError as err:  # a cache that cannot be written only costs the next load
        log.debug("atlas %s: cache entry not written: %s", src.name, err)


def _light_source(cfg, digest: str, cache_dir: Path) -> AtlasSource | None:
    path = _light_path(cache_dir, cfg.kind, digest)
    try:
        entry = json.loads(path.read_text())
        if entry.get("format") != _SOURCE_FORMAT or entry.get("digest") != digest:
            return None
        lut = pd.DataFrame(
            {
                col: pd.Series(entry["lut"][col]["values"], dtype=entry["lut"][col]["dtype"])
                for col in entry["columns"]
            }
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        if path.exists():
            log.debug("atlas %s: ignoring the cache entry %s: %s", cfg.name, path.name, err)
        return None
    radius = entry["radius"]
    return AtlasSource(
        name=cfg.name,
        kind=cfg.kind,
        lut=lut,
        min_coverage=cfg.min_coverage,
        source=str(getattr(cfg, "image", None) or getattr(cfg, "coordinates", "")),
        digest=digest,
        label_ids=None if entry["label_ids"] is None else np.asarray(entry["label_ids"], np.int64),
        background=int(getattr(cfg, "background_label", 0) or 0),
        strategy=getattr(cfg, "strategy", "mean"),
        maps_dtype=entry["maps_dtype"],
        allow_overlap=getattr(cfg, "allow_overlap", True),
        shape=None if entry["shape"] is None else tuple(entry["shape"]),
        affine=None if entry["affine"] is None else np.asarray(entry["affine"], dtype=float),
        seeds=None if entry["seeds"] is None else np.asarray(entry["seeds"], dtype=float),
        radius=np.asarray(radius, dtype=float) if isinstance(radius, list) else radius,
        cfg=cfg,
        light=cfg.kind != "spheres",  # spheres have no voxel arrays
    )

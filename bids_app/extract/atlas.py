"""Atlases: loading, lookup tables and resampling to a data grid.

An :class:`AtlasSource` holds what one configured atlas needs, independent of
any BOLD grid: label arrays, sparse map weights or sphere seeds, in the
atlas's own space. It is picklable (sent once to every worker process).
Operators for a given BOLD grid are built by :func:`bids_app.extract.prepare`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.linalg
from nibabel.affines import apply_affine
from scipy import ndimage, sparse

from ..errors import ConfigError, InputDataError
from . import regions as _regions
from .stream import VolumeReader, load_image

log = logging.getLogger(__name__)

KINDS = ("labels", "maps", "spheres", "regions")


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
    """

    name: str
    kind: str
    lut: pd.DataFrame
    outputs: dict[str, Any] = field(default_factory=dict)
    min_coverage: float | None = None
    source: str = ""
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
    radius: float | None = None

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
        first = path.read_text(errors="replace").splitlines()[:1]
        sep = "\t" if first and "\t" in first[0] else ","
    try:
        raw = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
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


def read_coordinates(spec: str | Path) -> pd.DataFrame:
    """Seeds of a built-in set (``power2011``, ``dosenbach2010``, ``seitzman2018``) or a
    TSV/CSV file with ``x``, ``y``, ``z`` columns (+ optional ``name``, ``index``, ...)."""
    builtin = str(spec).lower()
    if builtin in ("power2011", "dosenbach2010", "seitzman2018"):
        ref = resources.files("bids_app.data").joinpath("coords", f"{builtin}.tsv")
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
    net_col = _column(frame, ("network",))
    if net_col:
        out["network"] = frame[net_col].to_numpy()
    return out


# --- images -----------------------------------------------------------------------------------


def _as_3d(data: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"{path}: the {what} image must be 3D, got shape {data.shape}")
    return data


def load_mask_image(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """A mask image as a boolean array (any non-zero, all volumes) and its affine."""
    img = load_image(path, "mask")
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
    a, b = transform_to(src_affine, tgt_affine)
    out = np.zeros(tuple(tgt_shape[:3]), dtype=data.dtype)
    ndimage.affine_transform(
        data, a, offset=b, output_shape=tuple(tgt_shape[:3]), order=order, output=out, cval=0
    )
    return out


# --- loaders ----------------------------------------------------------------------------------


def _labels_array(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    img = load_image(path, "labels")
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


def label_centroids(labels: np.ndarray, affine: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """World centroid (mean voxel position) of each label value in ``ids`` (NaN if absent)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ijk = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, ids), dtype=float)
    return apply_affine(affine, ijk.reshape(-1, 3))


def _load_labels(cfg) -> AtlasSource:
    labels, affine = _labels_array(cfg.image)
    present = np.unique(labels)
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


def maps_to_sparse(volumes, n_voxels: int, dtype: np.dtype | None = None) -> sparse.csc_matrix:
    """Stack flat (Fortran-order) map volumes into a (voxels x maps) CSC matrix.

    ``dtype`` None: the float type nilearn would use for the first volume's type.
    """
    indptr = [0]
    indices, values = [], []
    for vol in volumes:
        vol = np.asarray(vol)
        if dtype is None:
            dtype = maps_dtype(vol.dtype)
        vol = vol.astype(dtype, copy=False)
        vol = np.where(np.isfinite(vol), vol, 0) if vol.dtype.kind == "f" else vol
        nz = np.flatnonzero(vol)
        indices.append(nz.astype(np.int64))
        values.append(vol[nz].astype(dtype, copy=True))
        indptr.append(indptr[-1] + len(nz))
    if not values:
        return sparse.csc_matrix((n_voxels, 0), dtype=dtype or np.float32)
    return sparse.csc_matrix(
        (np.concatenate(values), np.concatenate(indices), np.asarray(indptr, dtype=np.int64)),
        shape=(n_voxels, len(indptr) - 1),
    )


def maps_centres(maps: sparse.csc_matrix, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World centre of mass of ``|w|`` of each map (NaN for an all-zero map)."""
    out = np.full((maps.shape[1], 3), np.nan)
    for k in range(maps.shape[1]):
        sl = slice(maps.indptr[k], maps.indptr[k + 1])
        w = np.abs(maps.data[sl].astype(float))
        if w.sum() <= 0:
            continue
        ijk = np.column_stack(np.unravel_index(maps.indices[sl], shape, order="F"))
        out[k] = apply_affine(affine, (ijk * w[:, None]).sum(0) / w.sum())
    return out


def _maps_names(cfg, n_maps: int) -> list[str]:
    if cfg.labels is None:
        return [str(i) for i in range(n_maps)]
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
    return unique_names([str(n) for n in table["name"]], list(range(n_maps)))


def _load_maps(cfg) -> AtlasSource:
    reader = VolumeReader(cfg.image)
    maps = maps_to_sparse(iter(reader), reader.n_voxels)
    dtype = maps.dtype
    if maps.shape[1] == 0 or maps.nnz == 0:
        raise InputDataError(f"{cfg.image}: the maps image is empty (all zeros)")
    names = _maps_names(cfg, maps.shape[1])
    centres = maps_centres(maps, reader.shape3, reader.affine)
    lut = make_lut(np.arange(maps.shape[1]), names, centres)
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
    img = load_image(cfg.image, "statistical map")
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
        np.arange(n),
        [str(i) for i in range(n)],
        centres,
        parent_map=np.asarray(parents, dtype=int),
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


def load_atlas(cfg) -> AtlasSource:
    """Load one configured atlas (labels, maps, spheres or regions) in its own space."""
    loaders = {
        "labels": _load_labels,
        "maps": _load_maps,
        "spheres": _load_spheres,
        "regions": _load_regions,
    }
    if cfg.kind not in loaders:
        raise ConfigError(f"atlases.{cfg.name}: unknown kind {cfg.kind!r}")
    return loaders[cfg.kind](cfg)

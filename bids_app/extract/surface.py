"""Region signals of surface runs: CIFTI-2 dense time series and GIFTI hemisphere pairs.

Usage (what the run engine does for a surface run)::

    atlas = load_surface_atlas(
        "Glasser", "tpl-fsLR_atlas-Glasser_den-32k_dseg.dlabel.nii",
        labels="atlas-Glasser_dseg.tsv",
        mesh=("S1200.L.midthickness.surf.gii", "S1200.R.midthickness.surf.gii"),
    )
    data = open_surface_data("sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii")
    ops = prepare_surface([atlas], data)          # once per grid (data.key)
    run = extract_surface_run(data, ops)          # one pass over the file
    run.signals["Glasser"]                        # (frames, regions) float64, NaN: no signal
    run.coverage["Glasser"]                       # per-region coverage table
    ops.parcels("Glasser")                        # nibabel ParcelsAxis for ptseries / pconn

Atlases and data are matched by brain structure and vertex index (surfaces) and by
voxel ijk on the CIFTI volume grid (subcortical voxels), never by array position: an
atlas may hold the medial wall or not, cortex only or subcortex only; data may be a
full 91k file. An atlas region without any grayordinate in the data keeps its column
(all NaN) and its coverage row.

The reductions are those of the volume engine (:func:`bids_app.extract.prepare`),
applied on a one-dimensional grid whose "voxels" are the data's grayordinates: the
mean / sum / median... of a label's grayordinates, and the least squares solution
``pinv(M) d`` for maps, with the same treatment of ill-conditioned or rank-deficient
maps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import cifti2
from nibabel.affines import apply_affine
from scipy import sparse

from ..errors import ConfigError, InputDataError
from .atlas import AtlasSource, make_lut, read_label_table, unique_names
from .cifti_io import (
    BLOCK_BYTES,
    GRID_CIFTI,
    GRID_GIFTI,
    LEFT,
    RIGHT,
    Grayordinates,
    LabelMaps,
    ScalarMaps,
    SurfaceData,
    as_grayordinates,
    check_hemisphere,
    open_surface_data,
    parcels_axis,
    read_cifti,
    short_structure,
    structure_name,
)
from .operators import AtlasOperator, finish_signals, prepare, slow_reduce
from .run import RunSignals, store_atlas
from .stream import load_image

log = logging.getLogger(__name__)

UNLABELED_NAME = "???"  # Workbench's name of the unlabeled key

_CIFTI_FILES = tuple(
    f".{kind}.nii"
    for kind in (
        "dtseries",
        "dscalar",
        "dlabel",
        "dconn",
        "dpconn",
        "ptseries",
        "pscalar",
        "plabel",
        "pconn",
        "pdconn",
        "pconnseries",
        "pconnscalar",
        "dfan",
        "fiberTemp",
    )
)
_GIFTI_ATLAS = (".label.gii", ".annot")
_VOLUME = (".nii", ".nii.gz", ".mgz", ".mgh", ".img", ".hdr")

COVERAGE_COLUMNS = (
    "index",
    "name",
    "n_grayordinates",
    "n_grayordinates_in_data",
    "n_grayordinates_usable",
    "coverage",
    "usable",
)


def file_grid(path: Path | str) -> str:
    """The kind of grid a file is on, from its name: ``"cifti"``, ``"gifti"`` or ``"volume"``.

    CIFTI-2: ``.dtseries.nii``, ``.dlabel.nii``, ``.dscalar.nii``; GIFTI / FreeSurfer:
    ``.func.gii``, ``.time.gii``, ``.shape.gii``, ``.label.gii``, ``.annot``; volume:
    other ``.nii``/``.nii.gz``/``.mgz`` files. Unknown extensions raise ConfigError.
    """
    name = Path(path).name.lower()
    if name.endswith(_CIFTI_FILES):
        return GRID_CIFTI
    if name.endswith((".gii", ".annot")):
        return GRID_GIFTI
    if name.endswith(_VOLUME):
        return "volume"
    raise ConfigError(f"{path}: unknown image type (expected NIfTI, CIFTI-2 or GIFTI)")


# --- atlases ------------------------------------------------------------------------------


@dataclass
class SurfaceAtlas:
    """One surface atlas, on its own grayordinates.

    Attributes
    ----------
    name, kind
        Atlas name; ``kind`` is ``"labels"`` (dlabel, label.gii, annot) or ``"maps"``
        (dscalar).
    grid
        ``"cifti"`` (dlabel / dscalar: for CIFTI runs) or ``"gifti"`` (a hemisphere
        pair: for GIFTI runs).
    lut
        One row per region, in output column order: ``index``, ``name``, ``x``, ``y``,
        ``z`` (world mm centroid: mean mesh coordinate of the region's vertices, NaN
        for surface regions without a mesh; mean voxel position for voxels; maps
        weight them by ``|w|``), ``structure`` (``CORTEX_LEFT``, ``CORTEX_RIGHT``,
        ``THALAMUS_LEFT``... or ``MIXED`` / empty).
    grayordinates
        The atlas's grayordinates (GIFTI pair: every vertex of both hemispheres).
    labels
        ``labels`` kind: the label value of each grayordinate (``background`` where
        unlabeled), int32.
    maps
        ``maps`` kind: (grayordinates x maps) weights, CSC.
    """

    name: str
    kind: str
    grid: str
    lut: pd.DataFrame
    grayordinates: Grayordinates
    source: str = ""
    labels: np.ndarray | None = None
    label_ids: np.ndarray | None = None
    maps: sparse.csc_matrix | None = None
    maps_dtype: str = "float32"
    background: int = 0
    strategy: str = "mean"
    min_coverage: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def region_names(self) -> list[str]:
        return [str(n) for n in self.lut["name"]]

    @property
    def n_regions(self) -> int:
        return len(self.lut)


def _integer_labels(values: np.ndarray, path: Path) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.all(values == np.round(values)):
            raise InputDataError(f"{path}: label values must be integers")
    elif values.dtype.kind not in "iub":
        raise InputDataError(f"{path}: unsupported label data type {values.dtype}")
    if values.size and (values.max() > np.iinfo(np.int32).max or values.min() < -(2**31)):
        raise InputDataError(f"{path}: label values do not fit in 32-bit integers")
    return values.astype(np.int64)


def _map_index(names: Sequence[str], which: int | str, path: Path) -> int:
    if isinstance(which, str) and not which.lstrip("-").isdigit():
        if which not in names:
            raise ConfigError(f"{path}: no map named {which!r}; maps: {', '.join(names)}")
        return list(names).index(which)
    idx = int(which)
    if not -len(names) <= idx < len(names):
        raise ConfigError(f"{path}: map {idx} requested, the file has {len(names)} map(s)")
    return idx % len(names)


def _read_dlabel(path: Path, label_map: int | str):
    cf = read_cifti(path)
    maps, g = cf.axes
    if not isinstance(g, Grayordinates):
        raise InputDataError(f"{path}: the CIFTI-2 columns are not dense brain models")
    if not isinstance(maps, LabelMaps):
        raise InputDataError(
            f"{path}: not a CIFTI-2 label file (its rows are {type(maps).__name__}; "
            "a .dscalar.nii file is a maps atlas)"
        )
    idx = _map_index(maps.names, label_map, path)
    values = _integer_labels(cf.read_all()[idx], path)
    return g, values, maps.tables[idx]


def _read_dscalar(path: Path):
    cf = read_cifti(path)
    maps, g = cf.axes
    if not isinstance(g, Grayordinates):
        raise InputDataError(f"{path}: the CIFTI-2 columns are not dense brain models")
    if isinstance(maps, LabelMaps):
        raise InputDataError(f"{path}: a CIFTI-2 label file is a labels atlas, not maps")
    dtype = np.float64 if cf.dtype.itemsize >= 8 else np.float32
    data = cf.read_all()
    data = np.where(np.isfinite(data), data, 0).astype(dtype, copy=False)
    names = (
        list(maps.names) if isinstance(maps, ScalarMaps) else [str(i) for i in range(data.shape[0])]
    )
    return g, sparse.csc_matrix(data.T), names, np.dtype(dtype)


def _read_hemi_labels(path: Path, hemi: str, label_map: int | str, background: int):
    """Label values (int64, ``background`` where unassigned) and key -> name of one hemisphere."""
    if path.name.lower().endswith(".annot"):
        try:
            values, _ctab, names = nib.freesurfer.read_annot(str(path))
        except FileNotFoundError:
            raise InputDataError(f"{path}: annotation file not found") from None
        except Exception as err:
            raise InputDataError(f"{path}: not a readable FreeSurfer annotation: {err}") from None
        values = np.asarray(values, dtype=np.int64)
        values[values < 0] = background
        table = {
            i: (n.decode(errors="replace") if isinstance(n, bytes) else str(n))
            for i, n in enumerate(names)
        }
        return values, table
    img = load_image(path, "GIFTI label file")
    if not isinstance(img, nib.gifti.GiftiImage):
        raise InputDataError(f"{path}: not a GIFTI label file")
    check_hemisphere(path, img, hemi, "label file")
    if not img.darrays:
        raise InputDataError(f"{path}: the GIFTI label file holds no data array")
    names = [str(dict(da.meta or {}).get("Name", i)) for i, da in enumerate(img.darrays)]
    idx = _map_index(names, label_map, path)
    values = _integer_labels(np.asarray(img.darrays[idx].data).reshape(-1), path)
    table = {int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items()}
    return values, table


def _pair(spec: Any) -> tuple[Path, Path] | None:
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        if len(spec) != 2:
            raise ConfigError(f"expected a (left, right) pair of files, got {len(spec)} items")
        return Path(spec[0]), Path(spec[1])
    return None


def _merge_hemispheres(
    left: tuple[np.ndarray, dict[int, str]],
    right: tuple[np.ndarray, dict[int, str]],
    background: int,
    sources: tuple[Path, Path],
) -> tuple[np.ndarray, dict[int, str]]:
    """One label array and table for a hemisphere pair.

    When the two hemispheres use overlapping label values (FreeSurfer annotations
    number each hemisphere from 1), the right values are shifted by the largest
    left value, so that each hemisphere's regions stay distinct (Schaefer: right
    1..200 become 201..400, the numbering of its labels TSV). Names used by both
    hemispheres get ``lh_`` / ``rh_`` prefixes.
    """
    (lv, lt), (rv, rt) = left, right

    def keys(values: np.ndarray, table: dict[int, str]) -> set[int]:
        found = set(np.unique(values).tolist()) | set(table)
        return {k for k in found if k != background and table.get(k) != UNLABELED_NAME}

    kl, kr = keys(lv, lt), keys(rv, rt)
    rt = {k: n for k, n in rt.items() if k in kr}
    lt = {k: n for k, n in lt.items() if k in kl}
    if kl & kr:
        offset = max(kl)
        log.info(
            "%s and %s use the same label values; right-hemisphere values are shifted by %d",
            sources[0].name,
            sources[1].name,
            offset,
        )
        rv = np.where(np.isin(rv, list(kr)), rv + offset, background)
        rt = {k + offset: n for k, n in rt.items()}
    else:
        rv = np.where(np.isin(rv, list(kr)), rv, background)
    lv = np.where(np.isin(lv, list(kl)), lv, background)
    shared = set(lt.values()) & set(rt.values())
    if shared:
        lt = {k: (f"lh_{n}" if n in shared else n) for k, n in lt.items()}
        rt = {k: (f"rh_{n}" if n in shared else n) for k, n in rt.items()}
    return np.concatenate([lv, rv]), {**lt, **rt}


def _region_table(
    values: np.ndarray,
    table: dict[int, str],
    labels_tsv: Path | str | None,
    background: int,
    source: str,
) -> tuple[np.ndarray, list[str]]:
    """Region values (sorted) and names: the file's label table and values, or the TSV."""
    file_names = {k: n for k, n in table.items() if k != background and n != UNLABELED_NAME}
    present = np.unique(values)
    present = present[present != background]
    base = np.union1d(present, np.asarray(sorted(file_names), dtype=np.int64)).astype(np.int64)
    if labels_tsv is None:
        ids = base
        names = [file_names.get(int(i), str(int(i))) for i in ids]
    else:
        tab = read_label_table(labels_tsv)
        if bool(tab["positional"].iloc[0]):
            ids = base
            names_list = [str(n) for n in tab["name"]]
            if len(names_list) == len(ids) + 1:  # a background row first
                names_list = names_list[1:]
            if len(names_list) != len(ids):
                raise InputDataError(
                    f"{labels_tsv}: {len(names_list)} names for the {len(ids)} labels of {source}"
                )
            names = names_list
        else:
            tsv = {int(i): str(n) for i, n in zip(tab["index"], tab["name"], strict=True)}
            tsv.pop(int(background), None)
            absent = sorted(set(tsv) - set(present.tolist()))
            if absent:
                log.warning(
                    "%d labels of %s are absent from %s (kept as n/a columns): %s",
                    len(absent),
                    Path(labels_tsv).name,
                    source,
                    absent[:10],
                )
            extra = sorted(set(present.tolist()) - set(tsv))
            if extra:
                log.warning(
                    "%s: %d label values are not in %s (named from the file's own table): %s",
                    source,
                    len(extra),
                    Path(labels_tsv).name,
                    extra[:10],
                )
            ids = np.union1d(present, np.asarray(sorted(tsv), dtype=np.int64)).astype(np.int64)
            names = [tsv.get(int(i), file_names.get(int(i), str(int(i)))) for i in ids]
    if len(ids) == 0:
        raise InputDataError(f"{source}: the atlas has no label (only background)")
    return ids, unique_names(names, ids.tolist())


def _maps_names(names: list[str], labels_tsv: Path | str | None, source: str) -> list[str]:
    n = len(names)
    if labels_tsv is not None:
        tab = read_label_table(labels_tsv)
        if len(tab) == n + 1 and str(tab["name"].iloc[0]).lower() in (
            "background",
            "null",
            "empty",
        ):
            tab = tab.iloc[1:]
        if len(tab) != n:
            raise InputDataError(f"{labels_tsv}: {len(tab)} names for {n} maps in {source}")
        names = [str(x) for x in tab["name"]]
    return unique_names(names, list(range(n)))


def _meshes(mesh: Any) -> dict[str, Path]:
    if mesh is None:
        return {}
    pair = None if isinstance(mesh, Mapping) else _pair(mesh)
    if pair is not None:
        return {LEFT: pair[0], RIGHT: pair[1]}
    if isinstance(mesh, Mapping):
        return {structure_name(k): Path(v) for k, v in mesh.items() if v is not None}
    raise ConfigError(f"mesh: expected (left, right) surface files or a mapping, got {mesh!r}")


def _mesh_coordinates(path: Path, structure: str, n_vertices: int) -> np.ndarray:
    img = load_image(path, "GIFTI surface")
    if not isinstance(img, nib.gifti.GiftiImage):
        raise InputDataError(f"{path}: not a GIFTI surface file")
    if structure in (LEFT, RIGHT):
        check_hemisphere(path, img, structure, "surface")
    points = [da for da in img.darrays if da.intent == nib.nifti1.intent_codes["pointset"]]
    if not points:
        raise InputDataError(f"{path}: no vertex coordinates (POINTSET array) in the surface")
    xyz = np.asarray(points[0].data, dtype=float)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputDataError(f"{path}: vertex coordinates of shape {xyz.shape}")
    if len(xyz) != n_vertices:
        raise InputDataError(
            f"{path}: {len(xyz)} vertices, but {short_structure(structure)} of the atlas has "
            f"{n_vertices} (a mesh of another density?)"
        )
    return xyz


def grayordinate_coordinates(
    grayordinates: Grayordinates | cifti2.BrainModelAxis,
    mesh: Mapping[str, Path | str] | Sequence[Path | str] | None = None,
) -> np.ndarray:
    """World coordinates (mm) of each grayordinate: mesh vertex positions (NaN for a
    surface structure without a mesh) and voxel centres on the CIFTI volume grid."""
    bm = as_grayordinates(grayordinates)
    meshes = _meshes(mesh)
    xyz = np.full((len(bm), 3), np.nan)
    for name, a, b, is_volume in bm.runs:
        if is_volume:
            xyz[a:b] = apply_affine(bm.affine, bm.voxel[a:b])
        elif name in meshes:
            coords = _mesh_coordinates(meshes[name], name, int(bm.nvertices[name]))
            xyz[a:b] = coords[bm.vertex[a:b]]
    return xyz


def _structure_column(bm: Grayordinates, region_of: np.ndarray, k: int) -> list[str]:
    """Structure of each region (``MIXED`` when it spans several, empty when it has none)."""
    n_s = len(bm.structures)
    inside = region_of >= 0
    code = region_of[inside] * n_s + bm.structure_index[inside]
    present = np.bincount(code, minlength=k * n_s).reshape(k, n_s) > 0
    out = []
    for row in present:
        found = np.flatnonzero(row)
        if len(found) == 1:
            out.append(short_structure(bm.structures[found[0]]))
        else:
            out.append("MIXED" if len(found) else "")
    return out


def load_surface_atlas(
    name: str,
    image: Path | str | Sequence[Path | str],
    *,
    kind: str | None = None,
    image_right: Path | str | None = None,
    labels: Path | str | None = None,
    mesh: Mapping[str, Path | str] | Sequence[Path | str] | None = None,
    strategy: str = "mean",
    background: int = 0,
    min_coverage: float | None = None,
    label_map: int | str = 0,
) -> SurfaceAtlas:
    """Load a surface atlas in its own space.

    Parameters
    ----------
    name
        Atlas name (output entity, error messages).
    image
        A CIFTI-2 ``.dlabel.nii`` (labels) or ``.dscalar.nii`` (maps, one map per
        row), or the left hemisphere ``.label.gii`` / ``.annot`` of a GIFTI pair
        (with ``image_right``), or a ``(left, right)`` pair.
    kind
        ``"labels"`` or ``"maps"``; checked against the file type when given.
    image_right
        Right hemisphere label file of a GIFTI pair.
    labels
        Optional labels TSV (:func:`~bids_app.extract.read_label_table`): names by
        label value (for a GIFTI pair, values after the right-hemisphere shift, see
        :func:`_merge_hemispheres`), or one name per map for a dscalar. Without it,
        names come from the file's label table / map names.
    mesh
        Surfaces for the centroids: ``(left, right)`` GIFTI ``.surf.gii`` files (e.g.
        midthickness) or a mapping structure -> file (``left``, ``CortexRight``,
        ``CIFTI_STRUCTURE_CEREBELLUM``...). Without one, surface centroids are NaN.
    strategy
        Labels: ``mean`` (default), ``sum``, ``median``, ``minimum``, ``maximum``,
        ``variance``, ``standard_deviation`` (as for volume labels).
    background
        Label value of unlabeled grayordinates (default 0; labels named ``???``, the
        unlabeled key of Workbench, are background too).
    min_coverage
        Regions whose usable fraction is below this are n/a.
    label_map
        Which map of a multi-map dlabel / label.gii (index or name), default the first.

    Raises
    ------
    ConfigError
        A volume image, an unknown file type, or a ``kind`` that does not match the file.
    InputDataError
        Unreadable files, non-integer labels, hemisphere files of different sizes.
    """
    pair = _pair(image)
    if pair is None and image_right is not None:
        pair = (Path(image), Path(image_right))
    if pair is not None:
        for p in pair:
            if not p.name.lower().endswith(_GIFTI_ATLAS):
                raise ConfigError(
                    f"atlases.{name}: {p} is not a GIFTI label file; a hemisphere pair is two "
                    ".label.gii or .annot files"
                )
        if kind not in (None, "labels"):
            raise ConfigError(f"atlases.{name}: a GIFTI label pair is a labels atlas, not {kind}")
        left = _read_hemi_labels(pair[0], LEFT, label_map, background)
        right = _read_hemi_labels(pair[1], RIGHT, label_map, background)
        values, table = _merge_hemispheres(left, right, background, pair)
        bm = Grayordinates.surfaces(len(left[0]), len(right[0]))
        source = f"{pair[0]} + {pair[1]}"
        return _labels_atlas(
            name,
            GRID_GIFTI,
            bm,
            values,
            table,
            labels,
            mesh,
            strategy,
            background,
            min_coverage,
            source,
        )
    path = Path(image)
    lower = path.name.lower()
    if lower.endswith(_GIFTI_ATLAS):
        raise ConfigError(
            f"atlases.{name}: {path} is one hemisphere; give the right hemisphere file too "
            "(image_right)"
        )
    if lower.endswith(".dlabel.nii"):
        if kind not in (None, "labels"):
            raise ConfigError(f"atlases.{name}: {path} is a labels atlas (dlabel), not {kind}")
        bm, values, table = _read_dlabel(path, label_map)
        return _labels_atlas(
            name,
            GRID_CIFTI,
            bm,
            values,
            table,
            labels,
            mesh,
            strategy,
            background,
            min_coverage,
            str(path),
        )
    if lower.endswith(".dscalar.nii"):
        if kind not in (None, "maps"):
            raise ConfigError(f"atlases.{name}: {path} is a maps atlas (dscalar), not {kind}")
        bm, maps, names, dtype = _read_dscalar(path)
        if maps.nnz == 0:
            raise InputDataError(f"{path}: the maps are empty (all zeros)")
        names = _maps_names(names, labels, str(path))
        absw = abs(maps)
        total = np.asarray(absw.sum(axis=0)).ravel()
        xyz = grayordinate_coordinates(bm, mesh)
        with np.errstate(invalid="ignore", divide="ignore"):
            centres = (absw.T @ np.nan_to_num(xyz, nan=0.0)) / total[:, None]
        has_nan = (absw.T @ np.isnan(xyz).any(axis=1).astype(float)) > 0
        centres[has_nan | (total == 0)] = np.nan
        winner = _argmax_assignment(maps)
        lut = make_lut(
            np.arange(len(names)),
            names,
            centres,
            structure=_structure_column(bm, winner, len(names)),
        )
        return SurfaceAtlas(
            name=name,
            kind="maps",
            grid=GRID_CIFTI,
            lut=lut,
            grayordinates=bm,
            source=str(path),
            maps=maps,
            maps_dtype=str(dtype),
            min_coverage=min_coverage,
        )
    if file_grid(path) == "volume":
        raise ConfigError(
            f"atlases.{name}: {path} is a volume image; a surface atlas is a .dlabel.nii, "
            ".dscalar.nii or a pair of .label.gii / .annot files"
        )
    raise ConfigError(f"atlases.{name}: {path} is not a surface atlas file")


def load_surface_atlas_config(cfg: Any) -> SurfaceAtlas:
    """:func:`load_surface_atlas` from a config entry (attributes read when present).

    Reads ``name``, ``image``, and optionally ``kind``, ``image_right``, ``labels``,
    ``mesh`` (a ``(left, right)`` pair or a mapping), ``strategy``,
    ``background_label``, ``min_coverage`` and ``map``.
    """
    return load_surface_atlas(
        cfg.name,
        cfg.image,
        kind=getattr(cfg, "kind", None),
        image_right=getattr(cfg, "image_right", None),
        labels=getattr(cfg, "labels", None),
        mesh=getattr(cfg, "mesh", None),
        strategy=getattr(cfg, "strategy", None) or "mean",
        background=int(getattr(cfg, "background_label", 0) or 0),
        min_coverage=getattr(cfg, "min_coverage", None),
        label_map=getattr(cfg, "map", None) or 0,
    )


def _labels_atlas(
    name, grid, bm, values, table, labels_tsv, mesh, strategy, background, min_coverage, source
) -> SurfaceAtlas:
    if len(values) != len(bm):
        raise InputDataError(f"{source}: {len(values)} label values for {len(bm)} grayordinates")
    unlabeled = [k for k, n in table.items() if n == UNLABELED_NAME and k != background]
    if unlabeled:
        values = np.where(np.isin(values, unlabeled), background, values)
    ids, names = _region_table(values, table, labels_tsv, background, source)
    region_of = np.full(len(values), -1, dtype=np.int64)
    inside = (values != background) & np.isin(values, ids)
    region_of[inside] = np.searchsorted(ids, values[inside])
    xyz = grayordinate_coordinates(bm, mesh)
    k = len(ids)
    counts = np.bincount(region_of[inside], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = (
            np.column_stack(
                [
                    np.bincount(region_of[inside], weights=xyz[inside, a], minlength=k)
                    for a in range(3)
                ]
            )
            / counts[:, None]
        )
    lut = make_lut(ids, names, centres, structure=_structure_column(bm, region_of, k))
    return SurfaceAtlas(
        name=name,
        kind="labels",
        grid=grid,
        lut=lut,
        grayordinates=bm,
        source=source,
        labels=values.astype(np.int32),
        label_ids=ids,
        background=int(background),
        strategy=strategy,
        min_coverage=min_coverage,
    )


def _argmax_assignment(maps: sparse.csc_matrix) -> np.ndarray:
    """For each row (grayordinate), the column (map) of largest ``|w|`` (-1 if all zero)."""
    csr = abs(maps).tocsr()
    out = np.full(csr.shape[0], -1, dtype=np.int64)
    has = np.diff(csr.indptr) > 0
    if has.any():
        out[has] = np.asarray(csr[has].argmax(axis=1)).ravel()
    return out


# --- matching -----------------------------------------------------------------------------


def match_grayordinates(
    atlas: Grayordinates | cifti2.BrainModelAxis,
    data: Grayordinates | cifti2.BrainModelAxis,
    atlas_label: str = "atlas",
    data_label: str = "data",
) -> np.ndarray:
    """The data column of each atlas grayordinate, -1 where the data has none.

    Surface vertices match by structure and vertex index (the two meshes of a
    structure must have the same number of vertices); voxels match by ijk on the
    CIFTI volume grid (which must be the same grid in both files).

    Raises
    ------
    InputDataError
        Different mesh sizes for a structure, or different volume grids.
    """
    atlas_bm, data_bm = as_grayordinates(atlas), as_grayordinates(data)
    out = np.full(len(atlas_bm), -1, dtype=np.int64)
    data_surf: dict[str, list[tuple[int, int]]] = {}
    for name, a, b, is_volume in data_bm.runs:
        if not is_volume:
            data_surf.setdefault(name, []).append((a, b))
    for name, a, b, is_volume in atlas_bm.runs:
        if is_volume or name not in data_surf:
            continue
        n_atlas, n_data = int(atlas_bm.nvertices[name]), int(data_bm.nvertices[name])
        if n_atlas != n_data:
            raise InputDataError(
                f"{atlas_label}: {short_structure(name)} is on a mesh of {n_atlas} vertices but "
                f"{data_label} is on a mesh of {n_data} vertices (different surface densities, "
                "e.g. fsLR 32k vs 59k or fsaverage vs fsaverage5)"
            )
        lookup = np.full(n_data, -1, dtype=np.int64)
        for da, db in data_surf[name]:
            lookup[data_bm.vertex[da:db]] = np.arange(da, db)
        vert = np.asarray(atlas_bm.vertex[a:b])
        if len(vert) and (vert.min() < 0 or vert.max() >= n_atlas):
            raise InputDataError(f"{atlas_label}: vertex indices outside the mesh")
        out[a:b] = lookup[vert]
    a_vox, d_vox = atlas_bm.volume_mask, data_bm.volume_mask
    if a_vox.any() and d_vox.any():
        a_shape, d_shape = tuple(atlas_bm.volume_shape), tuple(data_bm.volume_shape)
        if a_shape != d_shape or not np.allclose(atlas_bm.affine, data_bm.affine, atol=1e-3):
            raise InputDataError(
                f"{atlas_label}: subcortical voxels on a grid {a_shape} that is not the grid "
                f"{d_shape} of {data_label} (another CIFTI density or template?)"
            )
        lookup = np.full(int(np.prod(d_shape)), -1, dtype=np.int64)
        lookup[np.ravel_multi_index(data_bm.voxel[d_vox].T, d_shape)] = np.flatnonzero(d_vox)
        out[a_vox] = lookup[np.ravel_multi_index(atlas_bm.voxel[a_vox].T, d_shape)]
    return out


# --- operators ----------------------------------------------------------------------------


@dataclass
class SurfaceOperators:
    """All atlases' operators for one surface grid (the data's brain models).

    ``matrix`` (rows x data columns) and ``support`` (regions x data columns) are
    those of :class:`bids_app.extract.Operators` with the grayordinates as voxels.
    """

    kind: str
    key: str
    grayordinates: Grayordinates
    matrix: sparse.csc_matrix
    support: sparse.csc_matrix
    support_count: sparse.csc_matrix
    used: np.ndarray
    atlases: list[AtlasOperator]
    sources: list[SurfaceAtlas]
    n_atlas: dict[str, np.ndarray]
    weight_atlas: dict[str, np.ndarray]
    assignment: dict[str, np.ndarray]
    slow_cols: dict[str, np.ndarray] = field(default_factory=dict)

    def atlas(self, name: str) -> AtlasOperator:
        for op in self.atlases:
            if op.name == name:
                return op
        raise KeyError(name)

    def parcels(self, name: str) -> cifti2.ParcelsAxis:
        """``ParcelsAxis`` of atlas ``name``: each region's grayordinates in the data (maps:
        the grayordinates where the map has the largest ``|w|``); regions without any are
        empty parcels."""
        src = next(s for s in self.sources if s.name == name)
        return parcels_axis(src.region_names, self.assignment[name], self.grayordinates)


def check_atlas_grid(atlas: Any, data: SurfaceData) -> None:
    """Raise ConfigError when ``atlas`` cannot be used with the surface run ``data``."""
    if isinstance(atlas, AtlasSource):
        what = atlas.source or atlas.kind
        raise ConfigError(
            f"atlases.{atlas.name}: {what} is a volume atlas ({atlas.kind}); it cannot be used "
            f"with the surface run {data.label}: a CIFTI-2 run needs a .dlabel.nii or "
            ".dscalar.nii atlas, a GIFTI run a pair of .label.gii / .annot files"
        )
    if not isinstance(atlas, SurfaceAtlas):
        raise ConfigError(f"not an atlas: {atlas!r}")
    if atlas.grid != data.kind:
        need = (
            "a .dlabel.nii or .dscalar.nii atlas"
            if data.kind == GRID_CIFTI
            else "a pair of .label.gii / .annot files"
        )
        raise ConfigError(
            f"atlases.{atlas.name}: {atlas.source} is a {atlas.grid.upper()} atlas and "
            f"{data.label} a {data.kind.upper()} run; this run needs {need}"
        )


def prepare_surface(
    atlases: Sequence[SurfaceAtlas], data: SurfaceData | str | Path | Sequence[Path | str]
) -> SurfaceOperators:
    """Operators of every atlas for the grayordinates of ``data``.

    ``data`` is a :class:`SurfaceData` (or what :func:`open_surface_data` accepts).
    The result can be reused for every run with the same ``data.key``.

    Raises
    ------
    ConfigError
        A volume atlas, or a CIFTI atlas for a GIFTI run (or the reverse).
    InputDataError
        Mesh sizes or volume grids that differ between an atlas and the data.
    """
    if not isinstance(data, SurfaceData):
        data = open_surface_data(data)
    n = data.n_grayordinates
    sources: list[AtlasSource] = []
    n_atlas, weight_atlas, assignment = {}, {}, {}
    for atlas in atlases:
        check_atlas_grid(atlas, data)
        col = match_grayordinates(atlas.grayordinates, data.grayordinates, atlas.source, data.label)
        inside = col >= 0
        common = {
            "name": atlas.name,
            "lut": atlas.lut,
            "min_coverage": atlas.min_coverage,
            "source": atlas.source,
            "shape": (n, 1, 1),
            "affine": np.eye(4),
        }
        if atlas.kind == "labels":
            lab = np.full(n, atlas.background, dtype=np.int32)
            lab[col[inside]] = atlas.labels[inside]
            ids = atlas.label_ids
            in_atlas = (atlas.labels != atlas.background) & np.isin(atlas.labels, ids)
            n_atlas[atlas.name] = np.bincount(
                np.searchsorted(ids, atlas.labels[in_atlas]), minlength=len(ids)
            )
            weight_atlas[atlas.name] = n_atlas[atlas.name].astype(float)
            region = np.full(n, -1, dtype=np.int64)
            ok = (lab != atlas.background) & np.isin(lab, ids)
            region[ok] = np.searchsorted(ids, lab[ok])
            assignment[atlas.name] = region
            sources.append(
                AtlasSource(
                    kind="labels",
                    labels=lab.reshape(n, 1, 1),
                    label_ids=ids,
                    background=atlas.background,
                    strategy=atlas.strategy,
                    **common,
                )
            )
        elif atlas.kind == "maps":
            coo = atlas.maps.tocoo()
            keep = inside[coo.row]
            maps = sparse.csc_matrix(
                (coo.data[keep], (col[coo.row[keep]], coo.col[keep])),
                shape=(n, atlas.maps.shape[1]),
            )
            maps.sum_duplicates()
            maps.sort_indices()
            n_atlas[atlas.name] = np.diff(atlas.maps.indptr)
            weight_atlas[atlas.name] = np.asarray(abs(atlas.maps).sum(axis=0), float).ravel()
            assignment[atlas.name] = _argmax_assignment(maps)
            sources.append(
                AtlasSource(
                    kind="maps",
                    maps=maps,
                    maps_dtype=atlas.maps_dtype,
                    allow_overlap=True,
                    **common,
                )
            )
        else:
            raise ConfigError(f"atlases.{atlas.name}: unknown surface atlas kind {atlas.kind!r}")
        if not inside.any() or not (assignment[atlas.name] >= 0).any():
            log.warning(
                "atlas %s: none of its %d regions has a grayordinate in %s (all n/a)",
                atlas.name,
                atlas.n_regions,
                data.label,
            )
    ops = prepare(sources, (n, 1, 1), np.eye(4), None)

    def full_width(m: sparse.csr_matrix) -> sparse.csc_matrix:
        if ops.gather is None:
            return m.tocsc()
        c = m.tocoo()
        return sparse.csc_matrix((c.data, (c.row, ops.gather[c.col])), shape=(m.shape[0], n))

    matrix, support = full_width(ops.matrix), full_width(ops.support)
    count = support.copy()
    count.data = (count.data != 0).astype(float)
    used = np.zeros(n, dtype=bool)
    used |= np.diff(matrix.indptr) > 0
    used |= np.diff(support.indptr) > 0
    slow_cols = {}
    for op in ops.atlases:
        if op.slow_pos is not None:
            cols = op.slow_pos if ops.gather is None else ops.gather[op.slow_pos]
            slow_cols[op.name] = np.asarray(cols, dtype=np.int64)
            used[cols] = True
    return SurfaceOperators(
        kind=data.kind,
        key=data.key,
        grayordinates=data.grayordinates,
        matrix=matrix,
        support=support,
        support_count=count,
        used=used,
        atlases=ops.atlases,
        sources=list(atlases),
        n_atlas=n_atlas,
        weight_atlas=weight_atlas,
        assignment=assignment,
        slow_cols=slow_cols,
    )


# --- extraction ---------------------------------------------------------------------------


def extract_surface_run(
    data: SurfaceData | str | Path | Sequence[Path | str],
    ops: SurfaceOperators,
    block_bytes: int = BLOCK_BYTES,
) -> RunSignals:
    """Region signals of every atlas in ``ops``, reading the run once in blocks of grayordinates.

    Non-finite values count as 0 and make their grayordinate unusable, as do
    grayordinates constant over the run (they still enter the means, as voxels do).

    Returns
    -------
    RunSignals
        ``signals[atlas]`` (frames, regions) float64 (NaN columns: regions without a
        grayordinate in the data, or below ``min_coverage``); ``coverage[atlas]`` with
        columns ``index, name, n_grayordinates`` (in the atlas), ``n_grayordinates_in_data,
        n_grayordinates_usable, coverage`` (usable fraction of the atlas region, of its
        ``|w|`` for maps), ``usable``; ``n_volumes`` = frames; ``zooms`` empty.
    """
    if not isinstance(data, SurfaceData):
        data = open_surface_data(data)
    if data.key != ops.key:
        raise InputDataError(
            f"{data.label}: its grayordinates are not those the atlases were prepared for"
        )
    n_t = data.n_frames
    n = data.n_grayordinates
    acc = np.zeros((ops.matrix.shape[0], n_t), dtype=np.float64)
    usable = np.zeros(n, dtype=bool)
    slow_ops = [op for op in ops.atlases if op.name in ops.slow_cols and len(op.valid_cols)]
    slow_vals = {
        op.name: np.zeros((n_t, len(ops.slow_cols[op.name])), np.float32) for op in slow_ops
    }
    slow_order = {op.name: np.argsort(ops.slow_cols[op.name], kind="stable") for op in slow_ops}
    buf = np.empty(0)
    for a, b, raw in data.blocks(ops.used, block_bytes):
        size = (b - a) * n_t
        if buf.size < size:
            buf = np.empty(size, dtype=np.float64)
        vals = buf[:size].reshape(b - a, n_t)
        np.copyto(vals, raw, casting="unsafe")
        if n_t:
            # min / max propagate NaN and reach +-inf: non-finite rows are found without
            # a full isfinite pass
            lo, hi = raw.min(axis=1), raw.max(axis=1)
            bad = ~(np.isfinite(lo) & np.isfinite(hi))
            ok = ~bad & (hi > lo)
            if bad.any():
                rows = np.flatnonzero(bad)
                part = vals[rows]
                part[~np.isfinite(part)] = 0
                vals[rows] = part
        else:
            ok = np.zeros(b - a, dtype=bool)
        usable[a:b] = ok
        sub = ops.matrix[:, a:b]
        if sub.nnz:
            acc += sub @ vals
        for op in slow_ops:
            cols = ops.slow_cols[op.name]
            order = slow_order[op.name]
            first, last = np.searchsorted(cols[order], [a, b])
            pos = order[first:last]
            slow_vals[op.name][:, pos] = vals[cols[pos] - a].T
    usable_w = ops.support @ usable.astype(float)
    usable_n = np.rint(ops.support_count @ usable.astype(float)).astype(int)
    out = RunSignals()
    region0 = 0
    for op in ops.atlases:
        k = op.n_regions
        if op.slow_pos is not None:
            sig = np.full((n_t, k), np.nan)
            if op.name in slow_vals:
                local = dataclasses.replace(op, slow_pos=np.arange(len(ops.slow_cols[op.name])))
                for t in range(n_t):
                    sig[t, op.valid_cols] = slow_reduce(local, slow_vals[op.name][t])
        else:
            sig = finish_signals(op, acc[op.rows].T, n_t)
        total = ops.weight_atlas[op.name]
        w = usable_w[region0 : region0 + k]
        n_usable = usable_n[region0 : region0 + k]
        region0 += k
        counts = (ops.n_atlas[op.name], op.n_in_mask, n_usable)
        store_atlas(out, op, sig, w, total, counts, unit="grayordinates", in_data="in_data")
    return out


__all__ = [
    "COVERAGE_COLUMNS",
    "SurfaceAtlas",
    "SurfaceData",
    "SurfaceOperators",
    "check_atlas_grid",
    "extract_surface_run",
    "file_grid",
    "grayordinate_coordinates",
    "load_surface_atlas",
    "load_surface_atlas_config",
    "match_grayordinates",
    "open_surface_data",
    "prepare_surface",
]

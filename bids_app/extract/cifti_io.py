"""Surface data input (CIFTI-2 files, GIFTI hemisphere pairs) and CIFTI-2 parcellated
outputs (``ptseries``, ``pconn``).

Input
-----
:func:`read_cifti` reads the header of a CIFTI-2 file: its two axes (series, brain
models, labels, scalars) and where its data are. The CIFTI-2 XML is parsed here with
the standard library's (C) ElementTree parser: nibabel's reader builds Python objects
per grayordinate and spends ~0.5 s on each 91k header, more than a whole parcellation
takes. nibabel is the fallback for any file the fast reader does not understand, and
the reference the tests compare with (:meth:`Grayordinates.to_axis` /
:meth:`Grayordinates.from_axis` convert to and from nibabel's ``BrainModelAxis``).

:func:`open_surface_data` opens a run: a CIFTI-2 ``*.dtseries.nii`` file, or a pair
of GIFTI ``*_hemi-L_*.func.gii`` / ``*_hemi-R_*.func.gii`` files (one run). Its
:meth:`SurfaceData.blocks` then yields blocks of grayordinates x frames. A CIFTI-2
dense time series is stored time-fastest (each grayordinate's series is contiguous),
so a block of consecutive grayordinates is one contiguous byte range, read with plain
``readinto`` calls into one reused buffer: neither the whole array nor a memory map
of it is ever held (file-backed pages of a memory map count in the resident memory).

Output
------
:func:`parcels_axis` builds a nibabel ``ParcelsAxis`` from region names, the data
column assigned to each region and the data's grayordinates; :func:`ptseries_bytes`
and :func:`pconn_bytes` return the bytes of a CIFTI-2 file (same inputs, same bytes);
:func:`write_cifti` writes them to a path chosen by the caller.
"""

from __future__ import annotations

import hashlib
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import cifti2
from nibabel.volumeutils import apply_read_scaling

from ..errors import InputDataError
from .stream import load_image

GRID_CIFTI = "cifti"
GRID_GIFTI = "gifti"

LEFT = "CIFTI_STRUCTURE_CORTEX_LEFT"
RIGHT = "CIFTI_STRUCTURE_CORTEX_RIGHT"

NIFTI_ECODE_CIFTI = 32

# Block size for reading a dense time series: a few tens of MiB keeps the peak memory
# low while each read stays large.
BLOCK_BYTES = 16 * 1024 * 1024

_HEMI_ALIASES = {
    "l": LEFT,
    "lh": LEFT,
    "left": LEFT,
    "cortexleft": LEFT,
    "cortex_left": LEFT,
    "r": RIGHT,
    "rh": RIGHT,
    "right": RIGHT,
    "cortexright": RIGHT,
    "cortex_right": RIGHT,
}


def structure_name(name: str) -> str:
    """The CIFTI structure name (``CIFTI_STRUCTURE_...``) of ``name``.

    Accepts ``left``/``right``/``lh``/``rh``/``L``/``R``, GIFTI names
    (``CortexLeft``, ``Cerebellum``) and CIFTI names.
    """
    key = str(name).strip()
    alias = _HEMI_ALIASES.get(key.lower())
    if alias is not None:
        return alias
    try:
        return cifti2.BrainModelAxis.to_cifti_brain_structure_name(key)
    except (ValueError, IndexError):
        raise InputDataError(f"unknown brain structure name {name!r}") from None


def short_structure(name: str) -> str:
    """``CIFTI_STRUCTURE_CORTEX_LEFT`` -> ``CORTEX_LEFT`` (for messages and tables)."""
    return name.removeprefix("CIFTI_STRUCTURE_")


# --- grayordinates ------------------------------------------------------------------------


@dataclass(eq=False)
class Grayordinates:
    """The brain models of a CIFTI-2 axis (or of a GIFTI pair), as plain arrays.

    Attributes
    ----------
    runs
        ``(structure, start, stop, is_volume)`` of each brain model, in order.
    vertex
        (N,) vertex index of each surface grayordinate (-1 for voxels).
    voxel
        (N, 3) voxel ijk of each volume grayordinate (-1 for vertices).
    nvertices
        Mesh size of each surface structure.
    volume_shape, affine
        The CIFTI volume grid (voxel ijk -> world mm), None without voxels.
    """

    runs: tuple[tuple[str, int, int, bool], ...]
    vertex: np.ndarray
    voxel: np.ndarray
    nvertices: dict[str, int] = field(default_factory=dict)
    volume_shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vertex)

    @cached_property
    def volume_mask(self) -> np.ndarray:
        """Which grayordinates are voxels."""
        mask = np.zeros(len(self), dtype=bool)
        for _, a, b, is_volume in self.runs:
            mask[a:b] = is_volume
        return mask

    @cached_property
    def structure_index(self) -> np.ndarray:
        """Index in :attr:`structures` of each grayordinate's structure."""
        out = np.empty(len(self), dtype=np.int64)
        for name, a, b, _ in self.runs:
            out[a:b] = self.structures.index(name)
        return out

    @cached_property
    def structures(self) -> list[str]:
        """Structure names, in order of first appearance."""
        return list(dict.fromkeys(r[0] for r in self.runs))

    @cached_property
    def key(self) -> str:
        """A digest of structures, vertices, voxels, mesh sizes and volume grid."""
        h = hashlib.sha1()
        for name, a, b, is_volume in self.runs:
            h.update(f"{name}:{a}:{b}:{is_volume}:{self.nvertices.get(name, -1)};".encode())
        h.update(np.ascontiguousarray(self.vertex, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.voxel, dtype=np.int64).tobytes())
        if self.volume_shape is not None:
            h.update(np.int64(self.volume_shape).tobytes())
            h.update(np.round(np.asarray(self.affine, dtype=float), 6).tobytes())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grayordinates) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_axis(cls, bm: cifti2.BrainModelAxis) -> Grayordinates:
        """From a nibabel ``BrainModelAxis``."""
        names = np.asarray(bm.name)
        runs: list[tuple[str, int, int, bool]] = []
        if names.size:
            cuts = np.concatenate([[0], np.flatnonzero(names[1:] != names[:-1]) + 1, [names.size]])
            runs = [
                (str(names[a]), int(a), int(b), str(names[a]) not in bm.nvertices)
                for a, b in zip(cuts[:-1], cuts[1:], strict=True)
            ]
        has_volume = any(r[3] for r in runs) and bm.volume_shape is not None
        return cls(
            runs=tuple(runs),
            vertex=np.asarray(bm.vertex, dtype=np.int64),
            voxel=np.asarray(bm.voxel, dtype=np.int64).reshape(-1, 3),
            nvertices={str(k): int(v) for k, v in bm.nvertices.items()},
            volume_shape=tuple(int(n) for n in bm.volume_shape) if has_volume else None,
            affine=np.asarray(bm.affine, dtype=float) if has_volume else None,
        )

    def to_axis(self) -> cifti2.BrainModelAxis:
        """As a nibabel ``BrainModelAxis`` (slow for 91k grayordinates: tests, outputs)."""
        names = np.empty(len(self), dtype=object)
        for name, a, b, _ in self.runs:
            names[a:b] = name
        return cifti2.BrainModelAxis(
            list(names),
            voxel=self.voxel,
            vertex=self.vertex,
            affine=self.affine,
            volume_shape=self.volume_shape,
            nvertices=dict(self.nvertices),
        )

    @classmethod
    def surfaces(cls, n_left: int, n_right: int) -> Grayordinates:
        """A GIFTI hemisphere pair: every left vertex, then every right vertex."""
        n = n_left + n_right
        return cls(
            runs=((LEFT, 0, n_left, False), (RIGHT, n_left, n, False)),
            vertex=np.concatenate([np.arange(n_left), np.arange(n_right)]).astype(np.int64),
            voxel=np.full((n, 3), -1, dtype=np.int64),
            nvertices={LEFT: int(n_left), RIGHT: int(n_right)},
        )


def as_grayordinates(obj: Any) -> Grayordinates:
    """``Grayordinates`` from itself or a nibabel ``BrainModelAxis``."""
    if isinstance(obj, Grayordinates):
        return obj
    if isinstance(obj, cifti2.BrainModelAxis):
        return Grayordinates.from_axis(obj)
    raise TypeError(f"expected Grayordinates or a BrainModelAxis, got {type(obj).__name__}")


# --- CIFTI-2 header -----------------------------------------------------------------------


@dataclass
class SeriesInfo:
    """A CIFTI-2 series axis (start and step in ``unit``, already scaled by the exponent)."""

    size: int
    start: float = 0.0
    step: float = 1.0
    unit: str = "SECOND"


@dataclass
class LabelMaps:
    """A CIFTI-2 labels axis: map names and, for each map, label key -> name."""

    names: list[str]
    tables: list[dict[int, str]]

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass
class ScalarMaps:
    """A CIFTI-2 scalars axis: map names."""

    names: list[str]

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass
class OtherAxis:
    """Any other CIFTI-2 axis (parcels...), by type only."""

    kind: str
    size: int


CiftiAxis = SeriesInfo | LabelMaps | ScalarMaps | Grayordinates | OtherAxis


@dataclass
class CiftiFile:
    """Header of a CIFTI-2 file: its two axes and where its data are."""

    path: Path
    axes: tuple[Any, Any]
    shape: tuple[int, int]
    dtype: np.dtype
    offset: int
    slope: float = 1.0
    inter: float = 0.0
    streamable: bool = True  # uncompressed, column-major: plain reads

    def read_all(self) -> np.ndarray:
        """The whole (rows, columns) data array, floating point (for atlases: small files)."""
        if not self.streamable:
            img = load_image(self.path, "CIFTI-2 file")
            return np.asarray(np.asanyarray(img.dataobj), dtype=float)
        n_rows, n_cols = self.shape
        count = n_rows * n_cols
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            raw = np.fromfile(fh, dtype=self.dtype, count=count)
        if raw.size < count:
            raise InputDataError(f"{self.path}: truncated data ({raw.size} of {count} values)")
        return _scaled(raw.reshape(n_cols, n_rows), self.slope, self.inter).T


def _scaled(raw: np.ndarray, slope: Any, inter: Any) -> np.ndarray:
    # Same promotion rules as nibabel's ArrayProxy.
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    slope, inter = np.asanyarray(slope), np.asanyarray(inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    out = apply_read_scaling(raw, slope, inter)
    if out.dtype.kind != "f":
        out = out.astype(np.float64)
    return out


def _ints(text: str | None, path: Path, what: str) -> np.ndarray:
    try:
        return np.array((text or "").split(), dtype=np.int64)
    except ValueError:
        raise InputDataError(f"{path}: malformed {what} in the CIFTI-2 header") from None


def _parse_brain_models(mim: ET.Element, path: Path) -> Grayordinates:
    models = []
    volume_shape = affine = None
    for child in mim:
        if child.tag == "Volume":
            volume_shape = tuple(int(x) for x in child.attrib["VolumeDimensions"].split(","))
            tm = child.find("TransformationMatrixVoxelIndicesIJKtoXYZ")
            if tm is None:
                raise InputDataError(f"{path}: CIFTI-2 volume without a transformation matrix")
            values = np.array(tm.text.split(), dtype=float)
            if values.size != 16:
                raise InputDataError(f"{path}: malformed CIFTI-2 volume transformation matrix")
            affine = values.reshape(4, 4)
            scale = 10.0 ** (int(tm.attrib.get("MeterExponent", "-3")) + 3)
            affine[:3, :] *= scale
        elif child.tag == "BrainModel":
            models.append(child)
    models.sort(key=lambda m: int(m.attrib["IndexOffset"]))
    n = sum(int(m.attrib["IndexCount"]) for m in models)
    vertex = np.full(n, -1, dtype=np.int64)
    voxel = np.full((n, 3), -1, dtype=np.int64)
    runs, nvertices = [], {}
    for m in models:
        a = int(m.attrib["IndexOffset"])
        count = int(m.attrib["IndexCount"])
        name = m.attrib["BrainStructure"]
        if m.attrib["ModelType"] == "CIFTI_MODEL_TYPE_SURFACE":
            nvertices[name] = int(m.attrib["SurfaceNumberOfVertices"])
            node = m.find("VertexIndices")
            values = np.arange(count) if node is None else _ints(node.text, path, "VertexIndices")
            if values.size != count:
                raise InputDataError(f"{path}: {name}: {values.size} vertex indices for {count}")
            vertex[a : a + count] = values
            runs.append((name, a, a + count, False))
        else:
            node = m.find("VoxelIndicesIJK")
            values = _ints(None if node is None else node.text, path, "VoxelIndicesIJK")
            if values.size != 3 * count:
                raise InputDataError(f"{path}: {name}: {values.size // 3} voxels for {count}")
            voxel[a : a + count] = values.reshape(count, 3)
            runs.append((name, a, a + count, True))
    has_volume = any(r[3] for r in runs)
    if has_volume and volume_shape is None:
        raise InputDataError(f"{path}: CIFTI-2 voxels without a volume definition")
    return Grayordinates(
        runs=tuple(runs),
        vertex=vertex,
        voxel=voxel,
        nvertices=nvertices,
        volume_shape=volume_shape if has_volume else None,
        affine=affine if has_volume else None,
    )


def _map_names(mim: ET.Element) -> list[ET.Element]:
    return [c for c in mim if c.tag == "NamedMap"]


def _parse_axis(mim: ET.Element, path: Path) -> Any:
    kind = mim.attrib.get("IndicesMapToDataType", "")
    if kind == "CIFTI_INDEX_TYPE_BRAIN_MODELS":
        return _parse_brain_models(mim, path)
    if kind == "CIFTI_INDEX_TYPE_SERIES":
        exponent = int(mim.attrib.get("SeriesExponent", "0"))
        return SeriesInfo(
            size=int(mim.attrib["NumberOfSeriesPoints"]),
            start=float(mim.attrib.get("SeriesStart", "0")) * 10.0**exponent,
            step=float(mim.attrib.get("SeriesStep", "1")) * 10.0**exponent,
            unit=mim.attrib.get("SeriesUnit", "SECOND").upper(),
        )
    if kind == "CIFTI_INDEX_TYPE_LABELS":
        names, tables = [], []
        for nm in _map_names(mim):
            names.append((nm.findtext("MapName") or "").strip())
            table = nm.find("LabelTable")
            labels = [] if table is None else table.findall("Label")
            tables.append({int(lb.attrib["Key"]): (lb.text or "").strip() for lb in labels})
        return LabelMaps(names, tables)
    if kind == "CIFTI_INDEX_TYPE_SCALARS":
        return ScalarMaps([(nm.findtext("MapName") or "").strip() for nm in _map_names(mim)])
    return OtherAxis(kind.removeprefix("CIFTI_INDEX_TYPE_").lower() or "unknown", -1)


def _fast_header(path: Path) -> CiftiFile:
    with open(path, "rb") as fh:
        head = fh.read(544)
        if len(head) < 544:
            raise ValueError("too short for a NIfTI-2 header")
        hdr = nib.Nifti2Header(binaryblock=head[:540], check=False)
        if int(hdr["sizeof_hdr"]) != 540:
            raise ValueError("not a NIfTI-2 header")
        offset = int(hdr["vox_offset"])
        rest = fh.read(max(0, offset - 544))
    order = "<" if hdr.endianness == "<" else ">"
    xml = None
    pos = 0
    while head[540] and pos + 8 <= len(rest):
        esize, ecode = struct.unpack(order + "ii", rest[pos : pos + 8])
        if esize < 8:
            break
        if ecode == NIFTI_ECODE_CIFTI:
            xml = rest[pos + 8 : pos + esize].rstrip(b"\0")
            break
        pos += esize
    if xml is None:
        raise ValueError("no CIFTI-2 extension")
    root = ET.fromstring(xml)
    matrix = root.find("Matrix")
    if matrix is None:
        raise ValueError("no Matrix element")
    dims = [int(x) for x in hdr["dim"][: int(hdr["dim"][0]) + 1]]
    if len(dims) < 7 or any(d != 1 for d in dims[1:5]):
        raise ValueError(f"unexpected NIfTI-2 dims {dims}")
    shape = (dims[5], dims[6])
    axes: list[Any] = [None, None]
    for mim in matrix.findall("MatrixIndicesMap"):
        parsed = _parse_axis(mim, path)
        for d in mim.attrib["AppliesToMatrixDimension"].split(","):
            axes[int(d)] = parsed
    for d, ax in enumerate(axes):
        if ax is None:
            raise ValueError(f"no mapping for dimension {d}")
        if isinstance(ax, OtherAxis):
            ax.size = shape[d]
        size = len(ax) if isinstance(ax, Grayordinates) else ax.size
        if size != shape[d]:
            raise ValueError(f"axis {d} has {size} elements, the data {shape[d]}")
    slope, inter = hdr.get_slope_inter()
    return CiftiFile(
        path=path,
        axes=(axes[0], axes[1]),
        shape=shape,
        dtype=hdr.get_data_dtype(),
        offset=offset,
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        streamable=True,
    )


def _from_nibabel_axis(ax: Any) -> Any:
    if isinstance(ax, cifti2.BrainModelAxis):
        return Grayordinates.from_axis(ax)
    if isinstance(ax, cifti2.SeriesAxis):
        return SeriesInfo(len(ax), float(ax.start), float(ax.step), str(ax.unit).upper())
    if isinstance(ax, cifti2.LabelAxis):
        tables = [{int(k): str(v[0]) for k, v in lab.items()} for lab in ax.label]
        return LabelMaps([str(n) for n in ax.name], tables)
    if isinstance(ax, cifti2.ScalarAxis):
        return ScalarMaps([str(n) for n in ax.name])
    return OtherAxis(type(ax).__name__.removesuffix("Axis").lower(), len(ax))


def _nibabel_header(path: Path) -> CiftiFile:
    img = load_image(path, "CIFTI-2 file")
    if not isinstance(img, cifti2.Cifti2Image):
        what = "a GIFTI file" if isinstance(img, nib.gifti.GiftiImage) else type(img).__name__
        raise InputDataError(f"{path}: not a CIFTI-2 file ({what})")
    try:
        axes = (
            _from_nibabel_axis(img.header.get_axis(0)),
            _from_nibabel_axis(img.header.get_axis(1)),
        )
    except Exception as err:
        raise InputDataError(f"{path}: cannot read the CIFTI-2 axes: {err}") from None
    proxy = img.dataobj
    streamable = (
        isinstance(proxy, nib.arrayproxy.ArrayProxy)
        and getattr(proxy, "order", "F") == "F"
        and proxy.dtype.kind in "iuf"
        and proxy.dtype.fields is None
        and not _is_gzip(path)
    )
    return CiftiFile(
        path=path,
        axes=axes,
        shape=tuple(int(n) for n in img.shape),
        dtype=np.dtype(proxy.dtype) if hasattr(proxy, "dtype") else np.dtype(np.float32),
        offset=int(getattr(proxy, "offset", 0)),
        slope=float(np.asanyarray(getattr(proxy, "slope", 1.0))),
        inter=float(np.asanyarray(getattr(proxy, "inter", 0.0))),
        streamable=streamable,
    )


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_cifti(path: Path | str) -> CiftiFile:
    """Header of a CIFTI-2 file (fast reader; nibabel for anything it does not understand).

    Raises :class:`~bids_app.errors.InputDataError` naming the file when it is missing,
    unreadable or not CIFTI-2.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: CIFTI-2 file not found")
    if not _is_gzip(path):
        try:
            return _fast_header(path)
        except (ValueError, KeyError, TypeError, ET.ParseError, struct.error, AttributeError):
            pass
    return _nibabel_header(path)


# --- data ---------------------------------------------------------------------------------


@dataclass
class SurfaceData:
    """One surface run: its grayordinates and frames (headers only, no data read).

    Attributes
    ----------
    paths
        The CIFTI file, or the left and right GIFTI files.
    kind
        ``"cifti"`` or ``"gifti"``.
    grayordinates
        The data columns, in file order (GIFTI: all left vertices, then all right ones).
    n_frames
        Number of time points.
    t_r
        Series step in seconds from the CIFTI series axis (None when the unit is not
        seconds or the step is not positive, and for GIFTI files, which carry no
        reliable timing: use the sidecar's ``RepetitionTime``).
    start
        Series start (seconds) of a CIFTI file, 0 for GIFTI.
    """

    paths: tuple[Path, ...]
    kind: str
    grayordinates: Grayordinates
    n_frames: int
    t_r: float | None = None
    start: float = 0.0
    cifti: CiftiFile | None = None

    @property
    def n_grayordinates(self) -> int:
        return len(self.grayordinates)

    @property
    def label(self) -> str:
        """The file name(s), for messages."""
        return " + ".join(str(p) for p in self.paths)

    @property
    def key(self) -> str:
        """Digest of the grid (kind and grayordinates): runs with one key share operators."""
        return f"{self.kind}:{self.grayordinates.key}"

    def blocks(
        self, used: np.ndarray | None = None, block_bytes: int = BLOCK_BYTES
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Blocks ``(start, stop, values)`` of consecutive data columns.

        ``values`` is (stop - start, n_frames), floating point, scaled as nibabel
        does; it is only valid until the next block (its buffer is reused). Blocks
        without any column in ``used`` (boolean, per data column) are not read.
        """
        if self.kind == GRID_GIFTI:
            yield from self._gifti_blocks(used)
        else:
            yield from self._cifti_blocks(used, block_bytes)

    def _cifti_blocks(
        self, used: np.ndarray | None, block_bytes: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        n, t = self.n_grayordinates, self.n_frames
        cf = self.cifti
        if t == 0 or n == 0 or cf is None:
            return
        path = self.paths[0]
        if not cf.streamable:  # compressed or unusual storage: nibabel slicing
            img = load_image(path, "CIFTI-2 file")
            step = max(1, block_bytes // (8 * t))
            for a, b in _spans(n, step, used):
                yield a, b, np.asarray(np.asanyarray(img.dataobj[:, a:b]).T, order="C")
            return
        itemsize = cf.dtype.itemsize
        step = max(1, block_bytes // (t * itemsize))
        buf = bytearray(min(step, n) * t * itemsize)
        try:
            with open(path, "rb", buffering=0) as fh:
                for a, b in _spans(n, step, used):
                    nbytes = (b - a) * t * itemsize
                    fh.seek(cf.offset + a * t * itemsize)
                    got = _read_into(fh, memoryview(buf)[:nbytes])
                    if got < nbytes:
                        raise InputDataError(
                            f"{path}: truncated data: grayordinates {a}-{b - 1} of {n} are "
                            f"incomplete ({got} of {nbytes} bytes)"
                        )
                    raw = np.frombuffer(buf, dtype=cf.dtype, count=(b - a) * t).reshape(b - a, t)
                    yield a, b, _scaled(raw, cf.slope, cf.inter)
        except OSError as err:
            raise InputDataError(f"{path}: cannot read the data: {err}") from None

    def _gifti_blocks(self, used: np.ndarray | None) -> Iterator[tuple[int, int, np.ndarray]]:
        for path, (_, a, b, _) in zip(self.paths, self.grayordinates.runs, strict=True):
            if used is not None and not used[a:b].any():
                continue
            values = gifti_array(path, "GIFTI time series")
            if values.shape != (b - a, self.n_frames):
                raise InputDataError(
                    f"{path}: data of shape {values.shape}, expected {(b - a, self.n_frames)}"
                )
            yield a, b, values
            del values


def _spans(n: int, step: int, used: np.ndarray | None) -> Iterator[tuple[int, int]]:
    """Column ranges of at most ``step`` columns, trimmed to the used columns."""
    if used is None:
        for a in range(0, n, step):
            yield a, min(n, a + step)
        return
    cols = np.flatnonzero(used)
    while len(cols):
        a = int(cols[0])
        inside = cols[cols < a + step]
        yield a, int(inside[-1]) + 1
        cols = cols[len(inside) :]


def _read_into(fh: Any, view: memoryview) -> int:
    total = 0
    while total < len(view):
        got = fh.readinto(view[total:])
        if not got:
            break
        total += got
    return total


def gifti_array(path: Path, what: str) -> np.ndarray:
    """All data arrays of a GIFTI file as (vertices, arrays), floating point."""
    img = load_image(path, what)
    if not isinstance(img, nib.gifti.GiftiImage):
        raise InputDataError(f"{path}: not a GIFTI file ({what} expected)")
    arrays = [np.asarray(da.data) for da in img.darrays]
    if not arrays:
        raise InputDataError(f"{path}: the GIFTI file holds no data array")
    if len(arrays) == 1 and arrays[0].ndim == 2:
        out = arrays[0]
    else:
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 1:
            raise InputDataError(
                f"{path}: expected one 1-D array per frame, got shapes {sorted(shapes)[:3]}"
            )
        out = np.column_stack(arrays)
    out = np.ascontiguousarray(out)
    if out.dtype.kind != "f":
        out = out.astype(np.float64)
    return out


def gifti_structure(img: nib.gifti.GiftiImage) -> str | None:
    """``AnatomicalStructurePrimary`` of a GIFTI file as a CIFTI structure name, if any."""
    for meta in [img.meta] + [da.meta for da in img.darrays[:1]]:
        value = dict(meta or {}).get("AnatomicalStructurePrimary")
        if value:
            try:
                return structure_name(value)
            except InputDataError:
                return None
    return None


def check_hemisphere(path: Path, img: nib.gifti.GiftiImage, expected: str, what: str) -> None:
    """Raise when a GIFTI file's declared structure is not the expected hemisphere."""
    declared = gifti_structure(img)
    if declared in (LEFT, RIGHT) and declared != expected:
        raise InputDataError(
            f"{path}: this {what} is declared {short_structure(declared)} but is given as the "
            f"{short_structure(expected)} file (left and right swapped?)"
        )


def is_pair(spec: Any) -> bool:
    """Whether ``spec`` is a (left, right) pair of paths rather than one path."""
    return isinstance(spec, Sequence) and not isinstance(spec, str | bytes)


def open_surface_data(spec: Path | str | Sequence[Path | str]) -> SurfaceData:
    """Header of a surface run: a CIFTI-2 dense time series, or a ``(left, right)`` GIFTI pair.

    Raises :class:`~bids_app.errors.InputDataError` naming the file when it is not a
    CIFTI-2 file with a series axis and a brain model axis, or when the two GIFTI
    files do not have the same number of frames.
    """
    if is_pair(spec):
        if len(spec) != 2:
            raise InputDataError(f"a GIFTI run is two files (left, right), got {len(spec)}")
        return _open_gifti_pair(Path(spec[0]), Path(spec[1]))
    return _open_cifti(Path(spec))


def _open_cifti(path: Path) -> SurfaceData:
    if path.name.lower().endswith(".gii"):
        raise InputDataError(
            f"{path}: a GIFTI file is one hemisphere; a GIFTI run is a (hemi-L, hemi-R) pair"
        )
    cf = read_cifti(path)
    rows, cols = cf.axes
    if not isinstance(cols, Grayordinates):
        raise InputDataError(
            f"{path}: the CIFTI-2 columns are {type(cols).__name__}, expected dense brain "
            "models (a *.dtseries.nii file)"
        )
    if not isinstance(rows, SeriesInfo):
        raise InputDataError(
            f"{path}: the CIFTI-2 rows are {type(rows).__name__}, expected a series "
            "(a *.dtseries.nii file)"
        )
    if cf.dtype.kind not in "iuf":
        raise InputDataError(f"{path}: unsupported data type {cf.dtype}")
    if cf.streamable:
        expected = cf.offset + cf.shape[0] * cf.shape[1] * cf.dtype.itemsize
        size = path.stat().st_size
        if size < expected:
            raise InputDataError(
                f"{path}: truncated file ({size} bytes, {expected} expected for "
                f"{cf.shape[0]} frames x {cf.shape[1]} grayordinates)"
            )
    seconds = rows.unit == "SECOND"
    return SurfaceData(
        paths=(path,),
        kind=GRID_CIFTI,
        grayordinates=cols,
        n_frames=rows.size,
        t_r=float(rows.step) if seconds and rows.step > 0 else None,
        start=float(rows.start) if seconds else 0.0,
        cifti=cf,
    )


def _gifti_frames(path: Path, expected: str) -> tuple[int, int]:
    img = load_image(path, "GIFTI time series")
    if not isinstance(img, nib.gifti.GiftiImage):
        raise InputDataError(
            f"{path}: not a GIFTI file; a GIFTI run is a pair of hemi-L / hemi-R *.func.gii files"
        )
    check_hemisphere(path, img, expected, "time series")
    arrays = img.darrays
    if not arrays:
        raise InputDataError(f"{path}: the GIFTI file holds no data array")
    shape = tuple(arrays[0].dims)
    if len(arrays) == 1 and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    if len(shape) != 1 or any(tuple(da.dims) != shape for da in arrays):
        raise InputDataError(f"{path}: expected one 1-D array per frame")
    return int(shape[0]), len(arrays)


def _open_gifti_pair(left: Path, right: Path) -> SurfaceData:
    n_left, t_left = _gifti_frames(left, LEFT)
    n_right, t_right = _gifti_frames(right, RIGHT)
    if t_left != t_right:
        raise InputDataError(
            f"{left} and {right}: {t_left} and {t_right} frames; the two hemispheres of a run "
            "must have the same number of frames"
        )
    return SurfaceData(
        paths=(left, right),
        kind=GRID_GIFTI,
        grayordinates=Grayordinates.surfaces(n_left, n_right),
        n_frames=t_left,
    )


# --- outputs ------------------------------------------------------------------------------


def parcels_axis(
    names: Sequence[str], assignment: np.ndarray, grayordinates: Grayordinates
) -> cifti2.ParcelsAxis:
    """A nibabel ``ParcelsAxis``: parcel ``k`` holds the data columns where ``assignment == k``.

    ``assignment`` has one entry per grayordinate (-1: no parcel). Vertices are listed
    per structure in increasing order, voxels in data order; a region without any
    grayordinate is an empty parcel (CIFTI-2 allows it; Workbench reads it). As
    Workbench does, the volume grid is included when a parcel has voxels, and the
    mesh sizes of the surface structures the parcels use.
    """
    g = as_grayordinates(grayordinates)
    assignment = np.asarray(assignment)
    if len(assignment) != len(g):
        raise ValueError(f"{len(assignment)} assignments for {len(g)} grayordinates")
    k = len(names)
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(-1, k + 1))
    is_vox = g.volume_mask
    struct = g.structure_index
    voxels, vertices = [], []
    for p in range(k):
        cols = order[bounds[p + 1] : bounds[p + 2]]
        voxels.append(g.voxel[cols[is_vox[cols]]].reshape(-1, 3))
        surf = cols[~is_vox[cols]]
        verts: dict[str, np.ndarray] = {}
        for s in dict.fromkeys(struct[surf].tolist()):
            verts[g.structures[s]] = np.sort(g.vertex[surf[struct[surf] == s]])
        vertices.append(verts)
    has_volume = g.volume_shape is not None and any(len(v) for v in voxels)
    used = {name for verts in vertices for name in verts}
    return cifti2.ParcelsAxis(
        [str(n) for n in names],
        voxels,
        vertices,
        affine=np.asarray(g.affine, dtype=float) if has_volume else None,
        volume_shape=tuple(g.volume_shape) if has_volume else None,
        nvertices={k: int(v) for k, v in g.nvertices.items() if k in used},
    )


def _image_bytes(data: np.ndarray, axes: tuple, intent: str) -> bytes:
    img = cifti2.Cifti2Image(data, header=axes)
    img.nifti_header.set_intent(intent, name=intent)
    img.update_headers()
    return img.to_bytes()


def ptseries_bytes(
    timeseries: np.ndarray,
    parcels: cifti2.ParcelsAxis,
    step: float,
    start: float = 0.0,
    dtype: np.dtype | type = np.float32,
) -> bytes:
    """Bytes of a CIFTI-2 parcellated time series (``*.ptseries.nii``).

    ``timeseries`` is (frames, parcels); ``step`` the frame interval in seconds. NaN
    columns (regions without signal) are written as NaN. Identical inputs give
    identical bytes.
    """
    ts = np.asarray(timeseries)
    if ts.ndim != 2 or ts.shape[1] != len(parcels):
        raise ValueError(f"timeseries of shape {ts.shape} for {len(parcels)} parcels")
    series = cifti2.SeriesAxis(float(start), float(step), ts.shape[0], unit="SECOND")
    return _image_bytes(np.asarray(ts, dtype=dtype), (series, parcels), "ConnParcelSries")


def pconn_bytes(
    matrix: np.ndarray, parcels: cifti2.ParcelsAxis, dtype: np.dtype | type = np.float32
) -> bytes:
    """Bytes of a CIFTI-2 parcel-by-parcel matrix (``*.pconn.nii``); same inputs, same bytes."""
    mat = np.asarray(matrix)
    if mat.shape != (len(parcels), len(parcels)):
        raise ValueError(f"matrix of shape {mat.shape} for {len(parcels)} parcels")
    return _image_bytes(np.asarray(mat, dtype=dtype), (parcels, parcels), "ConnParcels")


def write_cifti(
    dest: Path | str, data: bytes, writer: Callable[[Path, bytes], Any] | None = None
) -> Path:
    """Write CIFTI bytes to ``dest`` with ``writer(dest, data)`` (default: the app's atomic
    :func:`bids_app.write.write_bytes`)."""
    dest = Path(dest)
    if writer is None:
        from ..write import write_bytes

        writer = write_bytes
    writer(dest, data)
    return dest


__all__ = [
    "GRID_CIFTI",
    "GRID_GIFTI",
    "CiftiFile",
    "Grayordinates",
    "LabelMaps",
    "ScalarMaps",
    "SeriesInfo",
    "SurfaceData",
    "as_grayordinates",
    "open_surface_data",
    "parcels_axis",
    "pconn_bytes",
    "ptseries_bytes",
    "read_cifti",
    "structure_name",
    "write_cifti",
]

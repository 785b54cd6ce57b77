"""Read a 4D NIfTI file one volume at a time, in a single sequential pass.

``.nii.gz`` files are decompressed with ISA-L (``isal.igzip_threaded``: the
decompression runs in a background thread, overlapping the arithmetic) when it
is installed, with the standard library's ``gzip`` as the fallback. Each volume
is decoded into a reused buffer; the 4D array never exists in memory.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from ..errors import InputDataError

try:  # ISA-L: ~2x faster than zlib for decompression
    from isal import igzip_threaded as _igzip_threaded
except ImportError:  # pragma: no cover - isal is a dependency
    _igzip_threaded = None

FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


def load_image(path: Path | str, what: str = "NIfTI image") -> nib.filebasedimages.FileBasedImage:
    """``nib.load`` (header only) with errors that name the file and what it should be."""
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise InputDataError(f"{path}: {what} not found") from None
    except Exception as err:
        raise InputDataError(f"{path}: not a readable {what}: {err}") from None


def read_header(path: Path | str) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Shape, affine (4x4) and voxel sizes of an image, without reading its data."""
    img = load_image(path)
    shape = tuple(int(n) for n in img.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return shape, np.asarray(img.affine, dtype=float), zooms


class VolumeReader:
    """Sequential reader of the 3D volumes of a 4D (or 3D) NIfTI image.

    Yields each volume as a 1-D array in NIfTI (Fortran) voxel order, scaled by
    ``scl_slope``/``scl_inter`` exactly as nibabel does. The array is only
    valid until the next volume is read (its buffer is reused).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        img = load_image(self.path)
        self.shape = tuple(int(n) for n in img.shape)
        if len(self.shape) > 4 and any(n != 1 for n in self.shape[4:]):
            raise InputDataError(f"{self.path}: expected a 3D or 4D image, got shape {self.shape}")
        self.shape3 = self.shape[:3] + (1,) * (3 - len(self.shape[:3]))
        self.n_volumes = self.shape[3] if len(self.shape) > 3 else 1
        self.affine = np.asarray(img.affine, dtype=float)
        self.zooms = tuple(float(z) for z in img.header.get_zooms())
        self.n_voxels = int(np.prod(self.shape3))
        self._img = img
        self._streamable = isinstance(img, nib.Nifti1Image | nib.Nifti2Image) and isinstance(
            img.dataobj, nib.arrayproxy.ArrayProxy
        )
        if self._streamable:
            dtype = img.header.get_data_dtype()
            if dtype.kind not in "iuf" or dtype.fields is not None:
                raise InputDataError(f"{self.path}: unsupported data type {dtype} for a BOLD image")
            self._dtype = dtype
            self._offset = int(img.dataobj.offset)
            self._slope = np.asanyarray(img.dataobj.slope)
            self._inter = np.asanyarray(img.dataobj.inter)

    def _open(self) -> BinaryIO:
        with open(self.path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            if _igzip_threaded is not None:
                return _igzip_threaded.open(self.path, "rb", threads=1)
            return gzip.open(self.path, "rb")
        return open(self.path, "rb", buffering=0)

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        # Same promotion rules as nibabel's ArrayProxy (np.asanyarray(img.dataobj)).
        if not raw.dtype.isnative:
            raw = raw.astype(raw.dtype.newbyteorder("="))
        slope, inter = self._slope, self._inter
        if np.can_cast(inter, slope.dtype):
            inter = inter.astype(slope.dtype)
        return apply_read_scaling(raw, slope, inter)

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self._streamable:  # other formats: nibabel slicing, one volume at a time
            for t in range(self.n_volumes):
                idx = (slice(None),) * 3 + ((t,) if len(self.shape) > 3 else ())
                vol = np.asanyarray(self._img.dataobj[idx])
                yield np.asarray(vol).reshape(-1, order="F")
            return
        nbytes = self.n_voxels * self._dtype.itemsize
        buf = bytearray(nbytes)
        view = memoryview(buf)
        raw = np.frombuffer(buf, dtype=self._dtype)
        try:
            with self._open() as fh:
                _skip(fh, self._offset)
                for t in range(self.n_volumes):
                    got = _read_exactly(fh, view)
                    if got < nbytes:
                        raise InputDataError(
                            f"{self.path}: truncated data: volume {t + 1} of {self.n_volumes} "
                            f"is incomplete ({got} of {nbytes} bytes)"
                        )
                    yield self._scale(raw)
        except (OSError, EOFError, gzip.BadGzipFile, ValueError) as err:
            if isinstance(err, InputDataError):
                raise
            raise InputDataError(f"{self.path}: cannot read the image data: {err}") from None


def _skip(fh: BinaryIO, n: int) -> None:
    remaining = n
    while remaining > 0:
        chunk = fh.read(min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("file ends inside the header")
        remaining -= len(chunk)


def _read_exactly(fh: BinaryIO, view: memoryview) -> int:
    total = 0
    size = len(view)
    readinto = getattr(fh, "readinto", None)
    while total < size:
        if readinto is not None:
            n = readinto(view[total:])
        else:  # pragma: no cover
            chunk = fh.read(size - total)
            n = len(chunk)
            view[total : total + n] = chunk
        if not n:
            break
        total += n
    return total


def smoothing_sigmas(affine: np.ndarray, fwhm: float | None) -> np.ndarray | None:
    """Gaussian sigma per voxel axis for a FWHM in mm (column norms of the affine)."""
    if fwhm is None or fwhm == 0:
        return None
    vox = np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
    return np.asarray(fwhm, dtype=float) * FWHM_TO_SIGMA / vox


def smooth_volume(vol: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Gaussian smoothing of a 3D volume, in place for float input (mode "reflect", truncate 4).

    Integer volumes are converted to float32 (float64 for 64-bit integers); the
    caller must have replaced non-finite values by 0.
    """
    from scipy import ndimage  # deferred: keeps ``import bids_app.extract`` light

    if vol.dtype.kind in "iu":
        vol = vol.astype(np.float64 if vol.dtype.itemsize == 8 else np.float32)
    return ndimage.gaussian_filter(vol, sigmas, output=vol)


__all__ = ["read_header", "VolumeReader", "smooth_volume", "smoothing_sigmas"]

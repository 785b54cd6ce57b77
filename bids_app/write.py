"""Atomic, byte-reproducible writers for TSV, JSON, NumPy and NIfTI outputs.

Every file is written to a temporary name in its destination folder and then
renamed over the destination, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NA = "n/a"


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(dest: Path, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def write_text(dest: Path, text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


def to_json_text(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(dest: Path, obj: Any) -> Path:
    return write_text(dest, to_json_text(obj))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return None if not np.isfinite(value) else value
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def tsv_text(frame: pd.DataFrame, float_format: str = "%.10g") -> str:
    """Tab-separated, header row, no index column, missing values as ``n/a``."""
    names = [str(c) for c in frame.columns]
    plain = not any(ch in n for n in names for ch in '\t\n\r"')
    if plain and len(names) and all(dt.kind == "f" for dt in frame.dtypes):
        # All-float tables (time series, matrices): same text as pandas, several times faster.
        lines = ["\t".join(names)]
        for row in frame.to_numpy(dtype=np.float64).tolist():
            lines.append("\t".join([NA if v != v else float_format % v for v in row]))
        return "\n".join(lines) + "\n"
    buf = io.StringIO()
    frame.to_csv(
        buf, sep="\t", index=False, na_rep=NA, float_format=float_format, lineterminator="\n"
    )
    return buf.getvalue()


def write_tsv(dest: Path, frame: pd.DataFrame, float_format: str = "%.10g") -> Path:
    return write_text(dest, tsv_text(frame, float_format))


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=[NA], keep_default_na=False)


def write_npy(dest: Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(dest, buf.getvalue())


def write_nifti(dest: Path, img: Any, compresslevel: int = 6) -> Path:
    """Write a nibabel image; ``.nii.gz`` is gzipped with a zero timestamp (reproducible)."""
    raw = img.to_bytes() if hasattr(img, "to_bytes") else None
    if raw is None:  # pragma: no cover - every Nifti1Image has to_bytes
        raise TypeError("expected a nibabel image")
    if str(dest).endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(
            fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=compresslevel
        ) as gz:
            gz.write(raw)
        raw = buf.getvalue()
    return write_bytes(dest, raw)

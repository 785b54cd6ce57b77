"""matplotlib, imported lazily and used without pyplot: a ``Figure`` with an Agg canvas,
saved to bytes with no timestamp, so that the same data give the same file.

Nothing here touches the global backend of a program that already uses pyplot; the
only global setting is ``svg.hashsalt`` (SVG element ids are random without it), set
once when it is still unset.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
# matplotlib shares its FreeType fonts within a process and is not thread-safe: every
# drawing holds this lock (Dask workers may run several runs in threads of one process).
RENDER = threading.RLock()
_READY = False

# Shared styling (explicit per artist where possible: rcParams are process-wide).
FONT = 8
DPI = 96
BAD = "#d9d9d9"  # n/a cells
CENSORED = "#f2b8b5"  # censored volumes
NSS = "#bdbdbd"  # non-steady-state volumes
ACCENT = "#c0392b"  # thresholds, censored marks
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def setup() -> Any:
    """Import matplotlib (once), without selecting a GUI backend; returns the module."""
    global _READY
    with _LOCK:
        if not _READY:
            if "MPLCONFIGDIR" not in os.environ and not os.access(
                os.path.expanduser("~"), os.W_OK
            ):  # read-only home (containers): keep matplotlib's cache in the temp folder
                os.environ["MPLCONFIGDIR"] = os.path.join(
                    os.environ.get("TMPDIR", "/tmp"), "matplotlib"
                )
            import matplotlib

            if "matplotlib.pyplot" not in sys.modules:  # ours only: never switch a user's pyplot
                matplotlib.use("Agg")
            if matplotlib.rcParams.get("svg.hashsalt") is None:
                matplotlib.rcParams["svg.hashsalt"] = "bids-connectome"
            _READY = True
    import matplotlib

    return matplotlib


def figure(width: float, height: float, dpi: int = DPI):
    """A new ``Figure`` (inches) with its own Agg canvas (thread-safe, no pyplot)."""
    setup()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi: int | None = None) -> bytes:
    """PNG without the ``Software`` text chunk (byte-identical for identical figures)."""
    buf = io.BytesIO()
    with RENDER:
        fig.savefig(
            buf,
            format="png",
            dpi=dpi or fig.dpi,
            metadata={"Software": None},
            pil_kwargs={"compress_level": 1},
        )
    return buf.getvalue()


def svg_bytes(fig) -> bytes:
    """SVG without date or creator (element ids are salted: see :func:`setup`)."""
    buf = io.BytesIO()
    with RENDER:
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def cmap(name: str, bad: str = BAD):
    """A copy of a registered colormap whose NaN colour is ``bad``."""
    matplotlib = setup()
    out = matplotlib.colormaps[name].copy()
    out.set_bad(bad)
    return out


def style_axes(ax, grid: bool = False) -> None:
    ax.tick_params(labelsize=FONT - 1, length=2, pad=1.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)


def colorbar(fig, image, cax, label: str = "") -> None:
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=FONT - 1, length=2, pad=1)
    bar.outline.set_linewidth(0.5)
    if label:
        bar.set_label(label, fontsize=FONT - 1, labelpad=2)


def network_colors(labels: list[str]) -> dict[str, str]:
    """A stable colour per network label (in order of first appearance)."""
    out: dict[str, str] = {}
    for label in labels:
        if label not in out:
            out[label] = PALETTE[len(out) % len(PALETTE)]
    return out


# --- pixel-exact figures ------------------------------------------------------------------
#
# Images (carpets, matrices, regressors, colour bars) are coloured through a lookup table
# and pasted into a numpy RGBA canvas; labels are pasted as cached bitmaps. matplotlib
# renders only real vector content (an Axes, lines, markers) into a transparent layer
# composited on top, and Pillow encodes the PNG once. No resampling happens: a region or
# a volume is an integer number of pixels, so figures are crisp and their geometry known.

_LUTS: dict[tuple[str, str], object] = {}


def lut(name: str, bad: str = BAD):
    """(257, 4) uint8: 256 colours of the colormap, then the NaN colour."""
    import numpy as np

    key = (name, bad)
    if key not in _LUTS:
        matplotlib = setup()
        table = matplotlib.colormaps[name](np.linspace(0, 1, 256), bytes=True)
        _LUTS[key] = np.vstack([table, np.array(hex_rgba(bad), dtype=np.uint8)])
    return _LUTS[key]


def colorize(data, cmap_name: str, vmin: float, vmax: float, bad: str = BAD):
    """``data`` mapped through a colormap to uint8 RGBA (NaN -> ``bad``), clipped."""
    import numpy as np

    data = np.asarray(data, dtype=np.float64)
    span = (vmax - vmin) or 1.0
    with np.errstate(invalid="ignore"):
        idx = np.clip(np.floor((data - vmin) / span * 256), 0, 255)
    idx = np.where(np.isfinite(data), idx, 256).astype(np.intp)
    return lut(cmap_name, bad)[idx]


def rescale(data, axis: int, target: int):
    """Repeat (integer factor) or block-average ``data`` along ``axis`` to about ``target``
    pixels; returns (array, pixels per element), the factor < 1 when averaged."""
    import warnings

    import numpy as np

    n = data.shape[axis]
    if n == 0:
        return data, 1.0
    if n <= target:
        k = max(1, target // n)
        return np.repeat(data, k, axis=axis), float(k)
    f = -(-n // target)
    pad = (-n) % f
    if pad:
        widths = [(0, 0)] * data.ndim
        widths[axis] = (0, pad)
        data = np.pad(data.astype(float), widths, constant_values=np.nan)
    shape = list(data.shape)
    shape[axis : axis + 1] = [shape[axis] // f, f]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(data.reshape(shape), axis=axis + 1)
    return out, 1.0 / f


_RGBA: dict[tuple[str, float], tuple[int, int, int, int]] = {}


def hex_rgba(color: str, alpha: float = 1.0) -> tuple[int, int, int, int]:
    key = (color, alpha)
    if key not in _RGBA:
        from matplotlib.colors import to_rgba

        r, g, b, _ = to_rgba(color)
        _RGBA[key] = tuple(int(round(255 * v)) for v in (r, g, b, alpha))
    return _RGBA[key]


_TEXT_CACHE: dict[tuple, object] = {}
_TEXT_CACHE_MAX = 8192
_CACHE_DIR: list[Path] = []  # the on-disk cache folder, when one is in use (use_cache)
_TEXT_FORMAT = 1


def use_cache(folder: Path | str | None) -> None:
    """Keep what the figures draw once for a whole cohort in ``folder`` too (the atlas
    cache, ``--atlas-cache``): the glass brain (:mod:`.glass`) and the labels, in
    ``folder``/text (region, network and confound names cost ~1.3 ms each to draw and
    ~0.05 ms to read back)."""
    _CACHE_DIR[:] = [] if folder is None else [Path(folder)]


def cache_dir() -> Path | None:
    """The folder set by :func:`use_cache`, or None."""
    return _CACHE_DIR[0] if _CACHE_DIR else None


def text_bitmaps(keys) -> None:
    """Render every ``(text, size, weight)`` of ``keys`` not cached yet, in one drawing.

    The labels are laid out one under the other in a single figure, drawn once, and cut
    out as coverage bitmaps (uint8, 0 = none): drawing costs ~1 ms per label this way,
    and a label seen before costs nothing. With :func:`use_cache`, a label drawn by an
    earlier job is read from disk (the same bytes as drawing it).
    """

    todo = sorted({k for k in keys if k not in _TEXT_CACHE})
    if todo and _CACHE_DIR:
        todo = [k for k in todo if not _read_text(k)]
    if not todo:
        return
    with RENDER:
        _render_texts(todo)
    if _CACHE_DIR:
        for key in todo:
            _write_text(key, _TEXT_CACHE[key])


@functools.lru_cache(maxsize=1)
def _matplotlib_version() -> str:
    from importlib import metadata

    try:  # without importing matplotlib: a label read back may need nothing else from it
        return metadata.version("matplotlib")
    except metadata.PackageNotFoundError:  # pragma: no cover - a vendored copy
        return str(setup().__version__)


def _text_path(key: tuple) -> Path:
    payload = json.dumps([_TEXT_FORMAT, _matplotlib_version(), DPI, *key])
    return _CACHE_DIR[0] / "text" / (hashlib.sha256(payload.encode()).hexdigest()[:40] + ".npy")


def _read_text(key: tuple) -> bool:
    import numpy as np

    try:
        bitmap = np.load(_text_path(key), allow_pickle=False)
    except (OSError, ValueError):  # absent, or unreadable: drawn again
        return False
    if bitmap.dtype != np.uint8 or bitmap.ndim != 2:
        return False
    with _LOCK:
        if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
            _TEXT_CACHE.clear()
        _TEXT_CACHE[key] = bitmap
    return True


def _write_text(key: tuple, bitmap) -> None:
    """Atomically (:func:`bids_app.write.write_bytes`); a cache that cannot be written only
    costs drawing the label again."""
    import numpy as np

    from ..write import write_bytes

    buf = io.BytesIO()
    np.save(buf, bitmap, allow_pickle=False)
    try:
        write_bytes(_text_path(key), buf.getvalue())
    except OSError:
        pass


def _render_texts(todo: list[tuple]) -> None:
    import numpy as np

    fig = figure(1, 1, DPI)
    renderer = fig.canvas.get_renderer()
    texts, boxes = [], []
    for s, size, weight in todo:
        t = fig.text(0, 0, s, fontsize=size, weight=weight, color="black", ha="left", va="bottom")
        box = t.get_window_extent(renderer)
        texts.append(t)
        boxes.append((int(np.ceil(box.width)) + 2, int(np.ceil(box.height)) + 2))
    from matplotlib.transforms import IdentityTransform

    width = max(w for w, _ in boxes) + 2
    height = sum(h for _, h in boxes) + 2
    fig.set_size_inches(width / DPI, height / DPI)
    _, real_h = fig.canvas.get_width_height()  # whole pixels, as the renderer uses them
    # Positions in device pixels (whole numbers): a label is rasterised the same wherever it
    # sits in the batch, so its bitmap does not depend on which labels it was drawn with.
    tops, y = [], 0
    for t, (_, h) in zip(texts, boxes, strict=True):
        t.set_transform(IdentityTransform())
        t.set_position((1.0, float(real_h - y - h + 1)))
        tops.append(y)
        y += h
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    cov = (255 - rgba[..., :3].min(axis=2)).astype(np.uint8)
    with _LOCK:
        if len(_TEXT_CACHE) + len(todo) > _TEXT_CACHE_MAX:
            _TEXT_CACHE.clear()
        for key, (w, h), top in zip(todo, boxes, tops, strict=True):
            _TEXT_CACHE[key] = cov[top : top + h, :w].copy()


def text_bitmap(s: str, size: float, weight: str = "normal"):
    """Coverage bitmap of one label (see :func:`text_bitmaps`)."""
    key = (s, float(size), weight)
    if key not in _TEXT_CACHE:
        text_bitmaps([key])
    return _TEXT_CACHE[key]


def _blend(dst, src_rgb, alpha) -> None:
    """``src`` over ``dst`` (uint8 RGB views), ``alpha`` in [0, 1] (float32)."""
    a = alpha[..., None]
    dst[...] = (src_rgb * a + dst * (1 - a) + 0.5).astype("uint8")


class Canvas:
    """A raster figure addressed in pixels from its top-left corner (white background)."""

    def __init__(self, width: int, height: int, dpi: int = DPI):
        import numpy as np

        self.width, self.height, self.dpi = int(width), int(height), dpi
        self.base = np.full((self.height, self.width, 3), 255, dtype=np.uint8)
        self._texts: list[tuple] = []
        self._fig = None

    @property
    def fig(self):
        """A transparent matplotlib figure of the same size, for vector content."""
        if self._fig is None:
            self._fig = figure(self.width / self.dpi, self.height / self.dpi, self.dpi)
            self._fig.patch.set_alpha(0)
        return self._fig

    def _clip(self, x0: int, y0: int, w: int, h: int):
        xs = slice(max(x0, 0), min(x0 + w, self.width))
        ys = slice(max(y0, 0), min(y0 + h, self.height))
        if xs.start >= xs.stop or ys.start >= ys.stop:
            return None
        return ys, xs, slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)

    def image(self, rgba, x: int, y: int) -> None:
        """Paste an RGBA (or RGB) uint8 array with its top-left pixel at (x, y)."""
        import numpy as np

        h, w = rgba.shape[:2]
        cut = self._clip(int(x), int(y), w, h)
        if cut is None:
            return
        ys, xs, sy, sx = cut
        src = rgba[sy, sx]
        if src.shape[2] == 3 or (src[..., 3] == 255).all():
            self.base[ys, xs] = src[..., :3]
        else:
            _blend(
                self.base[ys, xs],
                src[..., :3].astype(np.float32),
                src[..., 3].astype(np.float32) / 255,
            )

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: float = FONT - 1,
        color: str = "black",
        ha: str = "left",
        va: str = "center",
        weight: str = "normal",
        rotation: int = 0,
    ) -> None:
        """Label at (x, y); drawn last, above images and vector content."""
        if s:
            self._texts.append((x, y, str(s), size, color, ha, va, weight, rotation))

    def _paste_text(self, x, y, s, size, color, ha, va, weight, rotation) -> None:
        import numpy as np

        cov = text_bitmap(s, size, weight)
        if rotation == 90:
            cov = np.rot90(cov)
        h, w = cov.shape
        x0 = int(round(x - {"left": 0, "center": w / 2, "right": w}[ha]))
        y0 = int(round(y - {"top": 0, "center": h / 2, "bottom": h}[va]))
        cut = self._clip(x0, y0, w, h)
        if cut is None:
            return
        ys, xs, sy, sx = cut
        rgb = np.array(hex_rgba(color)[:3], dtype=np.float32)
        _blend(self.base[ys, xs], rgb, cov[sy, sx].astype(np.float32) / 255)

    def axes(self, x: float, y: float, w: float, h: float):
        """A real Axes occupying the pixel box (x, y, w, h)."""
        return self.fig.add_axes(
            (x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height)
        )

    def colorbar(
        self,
        x: int,
        y: int,
        height: int,
        cmap_name: str,
        vmin: float,
        vmax: float,
        label: str = "",
        width: int = 9,
        fmt: str = "{:.2g}",
    ) -> None:
        """A vertical colour bar (top = vmax) with three labels."""
        import numpy as np

        ramp = np.linspace(vmax, vmin, height)[:, None].repeat(width, axis=1)
        bar = colorize(ramp, cmap_name, vmin, vmax)
        bar[[0, -1], :] = (90, 90, 90, 255)
        bar[:, [0, -1]] = (90, 90, 90, 255)
        self.image(bar, x, y)
        for value, yy in ((vmax, y), ((vmin + vmax) / 2, y + height / 2), (vmin, y + height)):
            self.text(x + width + 3, yy, fmt.format(0 if abs(value) < 1e-12 else value))
        if label:
            self.text(x + width / 2, y - 9, label, ha="center")

    def png(self) -> bytes:
        """The composed figure as PNG bytes (RGB, no text chunks: reproducible)."""
        import numpy as np
        from PIL import Image

        if self._fig is not None:
            with RENDER:
                self._fig.canvas.draw()
            layer = np.asarray(self._fig.canvas.buffer_rgba())
            alpha = layer[..., 3]
            if alpha.any():
                _blend(self.base, layer[..., :3].astype(np.float32), alpha.astype(np.float32) / 255)
        text_bitmaps((t[2], float(t[3]), t[7]) for t in self._texts)
        for item in self._texts:
            self._paste_text(*item)
        buf = io.BytesIO()
        Image.fromarray(self.base, "RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

"""Connectome plots on nilearn's glass brain, at a fraction of ``plot_connectome``'s cost.

``nilearn.plotting.plot_glass_brain`` draws the brain schematics (about a second: hundreds
of patches per view); ``plot_connectome`` then adds one ``Line2D`` per edge. Here the
empty glass brain is rendered by nilearn **once per process and figure size**, kept as an
RGBA raster with the position and millimetre limits of each view, and every connectome
figure is that raster plus axes with the same limits on which the edges (one
``LineCollection``) and the nodes are drawn. The projection is nilearn's: a view along
``x`` shows (y, z), along ``y`` (x, z), along ``z`` (x, y), in world millimetres.

:func:`warm_up` renders the background ahead of time (call it in a parent process before
forking workers so that none of them pays for it).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np

from . import _mpl

WIDTH, HEIGHT = 7.2, 2.4  # inches
VIEWS = "ortho"  # sagittal (x), coronal (y), axial (z)
_PLOT_RECT = (0.0, 0.0, 0.9, 1.0)  # glass brain part of the figure; the colour bar on the right
_DROP = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Background:
    rgba: np.ndarray  # (height px, width px, 4) uint8
    views: tuple[tuple[str, tuple[float, float, float, float], tuple, tuple], ...]
    dpi: int


_CACHE: dict[tuple[float, float, int], Background] = {}
_LOCK = threading.Lock()


def _disk_key(dpi: int) -> str:
    from importlib import metadata

    payload = {
        "what": "glass-brain-background",
        "format": 1,
        "nilearn": metadata.version("nilearn"),
        "matplotlib": metadata.version("matplotlib"),
        "size": [WIDTH, HEIGHT, dpi, VIEWS, list(_PLOT_RECT)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def background(dpi: int = _mpl.DPI) -> Background:
    """The empty glass brain (rendered by nilearn on first use, then cached in memory and,
    with :func:`._mpl.use_cache`, on disk: the other jobs of a cohort neither import
    nilearn nor render it)."""
    key = (WIDTH, HEIGHT, dpi)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _cached_background(dpi) or _render_background(dpi)
        return _CACHE[key]


def _cached_background(dpi: int) -> Background | None:
    folder = _mpl.cache_dir()
    if folder is None:
        return None
    from ..extract import cache

    arrays = cache.load_entry(folder, _disk_key(dpi), "glass")
    if arrays is None:
        return None
    try:
        views = tuple(
            (str(d), tuple(map(float, b)), tuple(map(float, x)), tuple(map(float, y)))
            for d, b, x, y in zip(
                arrays["directions"], arrays["bounds"], arrays["xlim"], arrays["ylim"], strict=True
            )
        )
        return Background(rgba=arrays["rgba"], views=views, dpi=dpi)
    except (KeyError, ValueError, TypeError):
        return None


def _save_background(bg: Background) -> None:
    folder = _mpl.cache_dir()
    if folder is None:
        return
    from ..extract import cache

    arrays = {
        "rgba": bg.rgba,
        "directions": np.array([v[0] for v in bg.views]),
        "bounds": np.array([v[1] for v in bg.views], dtype=np.float64),
        "xlim": np.array([v[2] for v in bg.views], dtype=np.float64),
        "ylim": np.array([v[3] for v in bg.views], dtype=np.float64),
    }
    cache.save_entry(folder, _disk_key(bg.dpi), arrays, "glass")


def _render_background(dpi: int) -> Background:
    import warnings

    fig = _mpl.figure(WIDTH, HEIGHT, dpi)
    with _mpl.RENDER, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import plotting

        display = plotting.plot_glass_brain(
            None,
            display_mode=VIEWS,
            figure=fig,
            axes=_PLOT_RECT,
            annotate=False,
            black_bg=False,
        )
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba()).copy()
    views = []
    for direction, axes in display.axes.items():
        ax = axes.ax
        views.append(
            (
                str(direction),
                tuple(float(v) for v in ax.get_position().bounds),
                tuple(float(v) for v in ax.get_xlim()),
                tuple(float(v) for v in ax.get_ylim()),
            )
        )
    bg = Background(rgba=rgba, views=tuple(views), dpi=dpi)
    _save_background(bg)
    return bg


def warm_up() -> None:
    """Import nilearn.plotting and render the glass brain now (e.g. before forking)."""
    background()


def strongest_edges(
    matrix: np.ndarray, usable: np.ndarray, fraction: float = 0.005, lo: int = 10, hi: int = 150
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``fraction`` strongest edges by ``|value|`` (at least ``lo``, at most ``hi``) among
    regions flagged ``usable``: (rows, cols, values), weakest first (drawn under the strongest).
    """
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return np.empty(0, int), np.empty(0, int), np.empty(0)
    sub = matrix[np.ix_(idx, idx)]
    r, c = np.triu_indices(idx.size, 1)
    vals = sub[r, c]
    ok = np.isfinite(vals)
    r, c, vals = r[ok], c[ok], vals[ok]
    if vals.size == 0:
        return np.empty(0, int), np.empty(0, int), np.empty(0)
    k = int(min(vals.size, max(lo, min(hi, round(fraction * vals.size)))))
    pick = np.argsort(-np.abs(vals), kind="stable")[:k][::-1]
    return idx[r[pick]], idx[c[pick]], vals[pick]


def connectome_png(
    coords: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    node_colors: list[str] | None = None,
    label: str = "",
    dpi: int = _mpl.DPI,
) -> bytes:
    """PNG of edges ``(rows[i], cols[i], values[i])`` between ``coords`` (mm) on the glass brain.

    Colour scale centred at 0 (``-max|v|`` to ``+max|v|``); line width grows with ``|v|``;
    nodes are the regions with coordinates (coloured by network when given).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.transforms import IdentityTransform

    bg = background(dpi)
    height, width = bg.rgba.shape[:2]
    cv = _mpl.Canvas(width, height, dpi)
    cv.image(bg.rgba, 0, 0)
    vmax = float(np.max(np.abs(values))) if values.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cm = _mpl.setup().colormaps["RdBu_r"]
    colors = cm(Normalize(-vmax, vmax)(values))
    lo = float(np.min(np.abs(values))) if values.size else 0.0
    widths = 0.5 + 1.5 * (np.abs(values) - lo) / max(vmax - lo, 1e-12)
    finite = np.isfinite(coords).all(axis=1)
    if node_colors is None:
        node_colors = ["#333333"] * len(coords)
    pixel = IdentityTransform()
    for direction, bounds, xlim, ylim in bg.views:
        keep = [d for d in range(3) if d != _DROP[direction]]
        x0, y0, w, h = bounds[0] * width, bounds[1] * height, bounds[2] * width, bounds[3] * height

        def to_px(uv: np.ndarray) -> np.ndarray:
            u = x0 + (uv[..., 0] - xlim[0]) / (xlim[1] - xlim[0]) * w  # noqa: B023
            v = y0 + (uv[..., 1] - ylim[0]) / (ylim[1] - ylim[0]) * h  # noqa: B023
            return np.stack([u, v], axis=-1)

        if values.size:
            segs = to_px(np.stack([coords[rows][:, keep], coords[cols][:, keep]], axis=1))
            lines = LineCollection(segs, colors=colors, linewidths=widths, alpha=0.75)
            lines.set_transform(pixel)
            cv.fig.add_artist(lines)
        pts = to_px(coords[:, keep])
        for color in sorted(set(node_colors)):
            sel = finite & np.array([c == color for c in node_colors])
            if sel.any():
                dots = Line2D(
                    pts[sel, 0],
                    pts[sel, 1],
                    linestyle="none",
                    marker="o",
                    markersize=2.4,
                    markerfacecolor=color,
                    markeredgewidth=0,
                    transform=pixel,
                )
                cv.fig.add_artist(dots)
    bar_h = int(height * 0.62)
    cv.colorbar(
        int(width * 0.915),
        int((height - bar_h) / 2),
        bar_h,
        "RdBu_r",
        -vmax,
        vmax,
        label,
        fmt="{:+.2f}",
    )
    return cv.png()


__all__ = ["background", "connectome_png", "strongest_edges", "warm_up"]

"""Per-run (and per session / subject connectome) figures, written by the worker that
computed the run, from the :class:`~bids_app.engine.RunRecord` in memory.

Files go to ``OUTPUT_DIR/sub-<L>/figures/`` (fMRIPrep's layout), named after the run's
source entities and the denoising label::

    <source>_desc-<D>_carpet.png              region signals before / after, FD underneath
    <source>_desc-<D>_regressors.png          the confound regressors (z-scored)
    <source>_atlas-<A>_desc-<D>_relmat.png    connectivity matrices of the atlas
    <source>_atlas-<A>_desc-<D>_connectome.png strongest edges on the glass brain
    <source>_desc-<D>_figures.json            what the HTML report needs (figure list, captions)

Session / subject connectomes (``connectivity.aggregate``) get the ``relmat`` and
``connectome`` figures under the unit's entities and ``<unit>_desc-<D>_unitfigures.json``.
Every file is written atomically; a figure that fails is logged and left out (the run's
science outputs never depend on the report).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import naming
from ..write import write_bytes, write_json
from . import _mpl
from .networks import Ordering, lut_network_column, ordering

if TYPE_CHECKING:
    from ..engine import RunContext, RunRecord, UnitRecord

log = logging.getLogger(__name__)

FORMAT = 1
RUN_SUFFIXES = ("carpet", "regressors", "figures")
MATRIX_SUFFIXES = ("relmat", "connectome")
UNIT_SUFFIXES = ("unitfigures",) + MATRIX_SUFFIXES
Z_LIMIT = 2.5  # carpet colour scale, in standard deviations


# --- names ----------------------------------------------------------------------------------


def figures_dir(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<L>/figures``."""
    return Path(output_dir) / f"sub-{subject}" / "figures"


def figure_path(
    output_dir: Path, entities: Mapping[str, str], suffix: str, extension: str, **extra: str | None
) -> Path:
    ents = {**naming.source_entities(entities), **extra}
    return figures_dir(output_dir, ents["sub"]) / naming.build_name(ents, suffix, extension)


# --- data helpers ---------------------------------------------------------------------------


def _zscore_rows(data: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (both over ``columns``)."""
    ref = data if columns is None else data[:, columns]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n/a regions: all-NaN rows
        mean = np.nanmean(ref, axis=1, keepdims=True) if ref.shape[1] else 0.0
        std = np.nanstd(ref, axis=1, keepdims=True) if ref.shape[1] else 1.0
    std = np.where(np.isfinite(std) & (std > 0), std, np.inf)
    return (data - mean) / std


def atlas_orderings(ctx: RunContext, names: Iterable[str]) -> dict[str, Ordering]:
    """Display order of each configured atlas (network column of the lookup table, or names)."""
    out = {}
    wanted = set(names)
    for src in ctx.sources:
        if src.name in wanted:
            regions = src.region_names
            out[src.name] = ordering(regions, lut_network_column(src.lut, regions))
    return out


def _coordinates(ctx: RunContext, atlas: str, regions: list[str]) -> np.ndarray | None:
    for src in ctx.sources:
        if src.name == atlas:
            lut = src.lut
            if not {"name", "x", "y", "z"} <= set(lut.columns):
                return None
            by_name = {str(n): i for i, n in enumerate(lut["name"])}
            if any(r not in by_name for r in regions):
                return None
            xyz = lut[["x", "y", "z"]].to_numpy(dtype=np.float64)[[by_name[r] for r in regions]]
            return xyz if np.isfinite(xyz).any() else None
    return None


def carpet_matrices(record: RunRecord, orderings: Mapping[str, Ordering]):
    """The two carpet images: (before, after, blocks), each (regions, volumes).

    ``before``: every volume of the raw region signals, each region z-scored over the
    steady-state volumes; ``after``: the cleaned signals at the kept volumes (z-scored over
    them), NaN at removed volumes. Regions of every atlas, atlas after atlas, each in its
    display order. ``blocks`` is ``[(atlas, start row, stop row, Ordering)]``.
    """
    n = record.n_volumes
    nss = np.asarray(record.provenance.get("NonSteadyStateVolumes", []), dtype=int)
    steady = np.setdiff1d(np.arange(n), nss)
    kept = np.asarray(record.sample_mask, dtype=int)
    before, after, blocks, row = [], [], [], 0
    for atlas in record.atlases:
        order = orderings[atlas.name] if atlas.name in orderings else ordering(atlas.regions)
        raw = np.asarray(atlas.raw, dtype=np.float64)[:, order.order].T
        before.append(_zscore_rows(raw, steady))
        full = np.full((raw.shape[0], n), np.nan)
        full[:, kept] = _zscore_rows(np.asarray(atlas.cleaned, dtype=np.float64)[:, order.order].T)
        after.append(full)
        blocks.append((atlas.name, row, row + raw.shape[0], order))
        row += raw.shape[0]
    if not blocks:
        return np.empty((0, n)), np.empty((0, n)), []
    return np.vstack(before), np.vstack(after), blocks


def _segments(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of integer indices as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for i in sorted(int(v) for v in indices):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _fd_threshold(record: RunRecord) -> float | None:
    params = record.provenance.get("ConfoundParameters") or {}
    if "scrub" in (params.get("strategy") or []):
        value = params.get("fd_threshold")
        return None if value is None else float(value)
    return None


# --- figures ------------------------------------------------------------------------------


def _pixel_rows(n: int, factor: float) -> np.ndarray:
    """Source row of each pixel row after :func:`_mpl.rescale` by ``factor``."""
    if factor >= 1:
        return np.repeat(np.arange(n), int(factor))
    step = int(round(1 / factor))
    return np.arange(0, n, step)


def _strip(blocks, rows_of_pixels: np.ndarray, width: int) -> np.ndarray:
    """Network colour of each pixel row of the carpet (light grey: no network)."""
    colors = np.zeros((0, 4), dtype=np.uint8)
    for _, _, _, order in blocks:
        n = len(order.order)
        if order.networks is None:
            part = np.tile(np.array(_mpl.hex_rgba("#eeeeee"), dtype=np.uint8), (n, 1))
        else:
            palette = _mpl.network_colors(order.networks)
            part = np.array([_mpl.hex_rgba(palette[x]) for x in order.networks], dtype=np.uint8)
        colors = np.vstack([colors, part])
    return np.repeat(colors[rows_of_pixels][:, None, :], width, axis=1)


def _mark_rows(img: np.ndarray, rows: Iterable[int], color: tuple) -> None:
    for r in rows:
        if 0 <= r < img.shape[0]:
            img[r] = color


CARPET_WIDTH = 880
CARPET_LEFT = 104


def carpet_png(record: RunRecord, orderings: Mapping[str, Ordering]) -> tuple[bytes, dict]:
    """Carpet plot before / after denoising (same colour scale) with FD underneath.

    Each panel has one row per region (atlases one after the other, regions in network
    order, the left strip coloured by network, red lines between atlases) and one column
    per volume; removed volumes are blank in the lower panel.
    """
    before, after, blocks = carpet_matrices(record, orderings)
    n = record.n_volumes
    rows = before.shape[0]
    width_px = CARPET_WIDTH - CARPET_LEFT - 70
    img_b, fy = _mpl.rescale(before, 0, 250)
    img_b, fx = _mpl.rescale(img_b, 1, width_px)
    img_a, _ = _mpl.rescale(after, 0, 250)
    img_a, _ = _mpl.rescale(img_a, 1, width_px)
    pix_rows = _pixel_rows(rows, fy)
    panels = [_mpl.colorize(d, "gray", -Z_LIMIT, Z_LIMIT) for d in (img_b, img_a)]
    for img in panels:
        for _, start, _, order in blocks:
            if start:
                _mark_rows(img, [int(np.floor(start * fy))], _mpl.hex_rgba(_mpl.ACCENT))
            for b0, _, _ in order.blocks[1:]:  # network boundaries: a faint light line
                r = int(np.floor((start + b0) * fy))
                if 0 <= r < img.shape[0]:
                    img[r, :, :3] = (img[r, :, :3] // 2 + 128).astype(np.uint8)
    ph, pw = panels[0].shape[:2]
    if rows == 0:  # an excluded run: no region signal, FD only
        ph, pw = 0, int(n * fx)
    strip = _strip(blocks, pix_rows, 7)
    top, gap, fd_h = 22, 26, 96
    height = top + ph + gap + ph + 16 + fd_h + 34 if rows else 30 + fd_h + 34
    cv = _mpl.Canvas(CARPET_WIDTH, height)
    x0 = CARPET_LEFT
    for k, (title, img) in enumerate(
        []
        if rows == 0
        else (("Before denoising: raw region signals", panels[0]), ("After denoising", panels[1]))
    ):
        y = top + k * (ph + gap)
        cv.text(x0, y - 9, title, size=_mpl.FONT, weight="bold")
        cv.image(img, x0, y)
        cv.image(strip[: img.shape[0]], x0 - 10, y)
        for name, start, stop, _ in blocks:
            centre = y + (start + stop) / 2 * fy
            cv.text(x0 - 14, centre, name, ha="right")
    if rows:
        cv.colorbar(x0 + pw + 12, top, ph, "gray", -Z_LIMIT, Z_LIMIT, "z", fmt="{:+.1f}")
        cv.text(x0 + pw + 12, top + ph + 14, "per region", size=_mpl.FONT - 2)
        y_fd = top + 2 * ph + gap + 16
    else:
        y_fd = 30
        cv.text(
            x0,
            9,
            "No region signal (run excluded): framewise displacement only",
            size=_mpl.FONT,
            weight="bold",
        )
    ax = cv.axes(x0, y_fd, pw, fd_h)
    fd = record.framewise_displacement
    nss = record.provenance.get("NonSteadyStateVolumes", [])
    scrubbed = record.provenance.get("ScrubbedVolumes", [])
    for first, last in _segments(nss):
        ax.axvspan(first - 0.5, last + 0.5, color=_mpl.NSS, linewidth=0)
    for first, last in _segments(scrubbed):
        ax.axvspan(first - 0.5, last + 0.5, color=_mpl.CENSORED, linewidth=0)
    if fd is not None:
        ax.plot(np.arange(len(fd)), fd, color="#222222", linewidth=0.8)
    threshold = _fd_threshold(record)
    finite = fd is not None and np.isfinite(fd).any()
    peak = float(np.nanmax(fd)) if finite else 1.0
    ymax = max(peak, threshold or 0.0) * 1.1 or 1.0
    if threshold is not None:
        ax.axhline(threshold, color=_mpl.ACCENT, linestyle="--", linewidth=0.9)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, ymax)
    xt = np.arange(0, n, _nice_step(n))
    yt = sorted({0.0, _nice_number(ymax * 0.5)} | ({threshold} if threshold is not None else set()))
    ax.set_xticks(xt, [""] * len(xt))
    ax.set_yticks(yt, [""] * len(yt))
    _mpl.style_axes(ax)
    for v in xt:  # tick labels as cached bitmaps (see _mpl.Canvas.text)
        cv.text(x0 + (v + 0.5) / n * pw, y_fd + fd_h + 9, str(int(v)), ha="center")
    for v in yt:
        cv.text(x0 - 5, y_fd + fd_h - v / ymax * fd_h, f"{v:g}", ha="right")
    cv.text(x0 + pw / 2, y_fd + fd_h + 22, f"volume (TR {record.t_r:g} s)", ha="center")
    cv.text(x0 - 34, y_fd + fd_h / 2, "FD (mm)", rotation=90, ha="center")
    legend = [
        (_mpl.NSS, f"non-steady-state: {len(nss)}"),
        (_mpl.CENSORED, f"censored: {len(scrubbed)}"),
    ]
    if threshold is not None:
        legend.append((_mpl.ACCENT, f"FD threshold {threshold:g} mm"))
    xx = x0 + pw
    for color, text in reversed(legend):
        cv.text(xx, y_fd - 7, text, ha="right", size=_mpl.FONT - 1.5, color="#333333")
        xx -= 6 + _mpl.text_bitmap(text, float(_mpl.FONT - 1.5)).shape[1]
        cv.image(np.full((8, 8, 4), _mpl.hex_rgba(color), dtype=np.uint8), xx, y_fd - 11)
        xx -= 10
    info = {
        "rows": int(rows),
        "columns": int(n),
        "pixels_per_row": float(fy),
        "pixels_per_volume": float(fx),
        "panel": [int(x0), int(top), int(pw), int(ph)],
        "fd_panel": [int(x0), int(y_fd), int(pw), int(fd_h)],  # FD axes box, y from 0 to fd_max
        "fd_max": float(ymax),
        "fd_threshold": threshold,
        "non_steady_state": len(nss),
        "censored": len(scrubbed),
    }
    return cv.png(), info


def _nice_number(x: float) -> float:
    """``x`` rounded down to 1, 2 or 5 times a power of ten."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    p = 10 ** np.floor(np.log10(x))
    return float(max(m for m in (1, 2, 5) if m * p <= x) * p)


def _nice_step(n: int) -> int:
    for step in (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if n / step <= 12:
            return step
    return max(1, n // 10)


def regressors_png(record: RunRecord) -> tuple[bytes, dict]:
    """The confound regressors (one row each, volumes across), z-scored over the kept volumes;
    removed volumes are marked in red above."""
    names = list(record.provenance.get("ConfoundRegressors", []))
    data = np.asarray(record.confounds, dtype=np.float64).T
    kept = np.asarray(record.sample_mask, dtype=int)
    z = _zscore_rows(data, kept if kept.size else None)
    n_reg, n = z.shape
    row_px = 7 if n_reg <= 60 else max(2, 420 // n_reg)
    img, fx = _mpl.rescale(z, 1, CARPET_WIDTH - CARPET_LEFT - 70 - 60)
    img = np.repeat(img, row_px, axis=0)
    rgba = _mpl.colorize(img, "RdBu_r", -3, 3)
    removed = np.zeros(n, dtype=bool)
    removed[np.setdiff1d(np.arange(n), kept)] = True
    marks, _ = _mpl.rescale(removed[None, :].astype(float), 1, CARPET_WIDTH - CARPET_LEFT - 130)
    band = np.where(marks > 0, 1.0, np.nan).repeat(5, axis=0)
    band_rgba = _mpl.colorize(band, "Reds", 0, 1, bad="#ffffff")
    left = CARPET_LEFT + 60
    top = 28
    height = top + rgba.shape[0] + 30
    cv = _mpl.Canvas(CARPET_WIDTH, max(height, 110))
    cv.text(
        left,
        9,
        f"{n_reg} confound regressors, z-scored (red band: volumes removed)",
        size=_mpl.FONT,
        weight="bold",
    )
    cv.image(band_rgba, left, top - 8)
    cv.image(rgba, left, top)
    every = 1 if row_px >= 6 else int(np.ceil(7 / row_px))
    for i in range(0, n_reg, every):
        label = names[i] if i < len(names) else str(i)
        cv.text(left - 5, top + (i + 0.5) * row_px, label, ha="right", size=5.2)
    pw = rgba.shape[1]
    step = _nice_step(n)
    for v in range(0, n, step):
        x = left + (v + 0.5) * fx
        cv.text(x, top + rgba.shape[0] + 9, str(v), ha="center", size=_mpl.FONT - 2)
    cv.text(left + pw / 2, top + rgba.shape[0] + 21, "volume", ha="center")
    cv.colorbar(
        left + pw + 12, top, max(40, min(rgba.shape[0], 120)), "RdBu_r", -3, 3, "", fmt="{:+.0f}"
    )
    return cv.png(), {"regressors": int(n_reg), "pixels_per_regressor": int(row_px)}


def _display_matrix(matrix: np.ndarray, measure: str) -> tuple[np.ndarray, float]:
    shown = np.array(matrix, dtype=np.float64, copy=True)
    np.fill_diagonal(shown, np.nan)  # the diagonal (1, or variances) would set the scale
    finite = np.abs(shown[np.isfinite(shown)])
    vmax = float(finite.max()) if finite.size else 1.0
    if measure in ("correlation", "partialcorrelation"):
        vmax = min(vmax, 1.0)
    return shown, vmax if vmax > 0 else 1.0


_MEASURE_NAMES = {"partialcorrelation": "partial correlation"}


def matrix_measure_name(measure: str) -> str:
    return _MEASURE_NAMES.get(measure, measure)


def matrix_scale(n: int) -> float:
    """Pixels per region of a matrix figure (fractions: block-averaged)."""
    if n <= 300:
        return float(min(24, max(1, 300 // max(n, 1))))
    if n <= 640:
        return 1.0
    return 1.0 / -(-n // 640)


def matrix_png(
    matrices: Mapping[tuple[str, str], np.ndarray],
    order: Ordering,
    several_estimators: bool,
    title: str = "",
) -> tuple[bytes, dict]:
    """Connectivity matrices of one atlas side by side: network order, network boundaries
    (black lines), colour scale centred at 0, diagonal blank (grey: n/a)."""
    keys = list(matrices)
    n = len(order.order)
    scale = matrix_scale(n)
    labels_left = 84 if order.blocks and 1 < len(order.blocks) <= 24 else 10
    images, vmaxes = [], []
    for key in keys:
        shown, vmax = _display_matrix(matrices[key], key[0])
        shown = shown[np.ix_(order.order, order.order)]
        if scale >= 1:
            k = int(scale)
            shown = np.repeat(np.repeat(shown, k, axis=0), k, axis=1)
        else:
            shown, _ = _mpl.rescale(shown, 0, int(n * scale))
            shown, _ = _mpl.rescale(shown, 1, int(n * scale))
        rgba = _mpl.colorize(shown, "RdBu_r", -vmax, vmax)
        if len(order.blocks) > 1:
            for b0, _, _ in order.blocks[1:]:  # network boundaries, dark grey
                p = int(np.floor(b0 * scale))
                rgba[p, :, :3] = (rgba[p, :, :3] // 3).astype(np.uint8)
                rgba[:, p, :3] = (rgba[:, p, :3] // 3).astype(np.uint8)
        images.append(rgba)
        vmaxes.append(vmax)
    size = images[0].shape[0] if images else 10
    panel_w = size + 70
    width = labels_left + panel_w * len(keys) + 6
    top = 34 if title else 22
    cv = _mpl.Canvas(width, top + size + 12)
    if title:
        cv.text(8, 9, title, size=_mpl.FONT, weight="bold")
    names = []
    for i, (key, rgba, vmax) in enumerate(zip(keys, images, vmaxes, strict=True)):
        x = labels_left + i * panel_w
        label = _MEASURE_NAMES.get(key[0], key[0]) + (f" ({key[1]})" if several_estimators else "")
        names.append(label)
        cv.text(x + size / 2, top - 10, label, ha="center", size=_mpl.FONT)
        cv.image(rgba, x, top)
        cv.colorbar(
            x + size + 8, top + 10, min(size - 20, 160), "RdBu_r", -vmax, vmax, fmt="{:+.2f}"
        )
    if labels_left > 10:
        for b0, b1, label in order.blocks:
            cv.text(labels_left - 4, top + (b0 + b1) / 2 * scale, label, ha="right", size=5.2)
    return cv.png(), {"measures": names, "pixels_per_region": float(scale)}


def _primary(matrices: Mapping[tuple[str, str], np.ndarray]) -> tuple[str, str] | None:
    for wanted in ("correlation", "partialcorrelation", "covariance", "precision"):
        for key in matrices:
            if key[0] == wanted:
                return key
    return next(iter(matrices), None)


def connectome_png(
    matrix: np.ndarray, coords: np.ndarray, order: Ordering, measure: str
) -> tuple[bytes, dict] | None:
    """Glass-brain plot of the strongest edges (None when fewer than 2 regions have a place)."""
    from . import glass

    usable = np.isfinite(coords).all(axis=1) & np.isfinite(np.diag(matrix))
    if usable.sum() < 2:
        return None
    off = np.array(matrix, dtype=np.float64, copy=True)
    np.fill_diagonal(off, np.nan)
    rows, cols, values = glass.strongest_edges(off, usable)
    node_colors = None
    if order.networks is not None:
        colors = _mpl.network_colors(order.networks)
        by_region = np.empty(len(order.order), dtype=object)
        by_region[order.order] = [colors[n] for n in order.networks]
        node_colors = list(by_region)
    png = glass.connectome_png(coords, rows, cols, values, node_colors, label=measure)
    info = {
        "measure": measure,
        "edges": int(values.size),
        "nodes": int(usable.sum()),
        "threshold": float(np.min(np.abs(values))) if values.size else None,
    }
    return png, info


# --- writers ------------------------------------------------------------------------------


class _Figures:
    """Writes figures of one run or unit, remembers them, survives a failing figure."""

    def __init__(self, output_dir: Path, entities: Mapping[str, str], desc: str, label: str):
        self.output_dir = output_dir
        self.entities = naming.source_entities(entities)
        self.desc = desc
        self.label = label
        self.written: list[Path] = []
        self.timings: dict[str, float] = {}

    def path(self, suffix: str, extension: str, atlas: str | None = None) -> Path:
        return figure_path(
            self.output_dir, self.entities, suffix, extension, atlas=atlas, desc=self.desc
        )

    def make(
        self,
        what: str,
        suffix: str,
        make: Callable[[], tuple[bytes, dict] | None],
        atlas: str | None = None,
    ) -> dict | None:
        t0 = time.perf_counter()
        try:
            made = make()
        except Exception as err:  # a figure never fails the run
            log.warning(
                "%s: report figure %s not made: %s: %s", self.label, what, type(err).__name__, err
            )
            log.debug("%s: report figure %s", self.label, what, exc_info=True)
            made = None
        finally:
            self.timings[what] = self.timings.get(what, 0.0) + time.perf_counter() - t0
        if made is None:
            return None
        data, info = made
        path = self.path(suffix, ".png", atlas)
        self.written.append(write_bytes(path, data))
        return {"File": path.name, **{_camel(k): v for k, v in info.items()}}

    def finish(self, json_suffix: str, owned: tuple[str, ...], data: dict[str, Any]) -> list[Path]:
        path = self.path(json_suffix, ".json")
        self.written.append(write_json(path, data))
        _remove_stale(path.parent, self.entities, self.desc, owned, {p.name for p in self.written})
        return list(self.written)


def _camel(key: str) -> str:
    return "".join(part.capitalize() for part in key.split("_"))


def _remove_stale(
    folder: Path, entities: Mapping[str, str], desc: str, suffixes: Iterable[str], keep: set[str]
) -> None:
    """Figures this run / unit made before and did not make now (an atlas dropped, ...)."""
    key, wanted = naming.owner_key(entities), set(suffixes)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        parsed = naming.try_parse_name(name)
        if name.startswith(".") or name in keep or parsed is None:
            continue
        ents, suffix, _ = parsed
        if suffix in wanted and ents.get("desc") == desc and naming.owner_key(ents) == key:
            (folder / name).unlink(missing_ok=True)


def _atlas_figures(
    figs: _Figures,
    ctx: RunContext,
    name: str,
    regions: list[str],
    matrices: Mapping[tuple[str, str], np.ndarray],
    order: Ordering,
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if not matrices:
        return entry
    several = len(ctx.config.connectivity.estimator) > 1
    matrix = figs.make(
        f"{name} matrix", "relmat", lambda: matrix_png(matrices, order, several), atlas=name
    )
    if matrix:
        entry["Matrix"] = matrix
    coords = _coordinates(ctx, name, regions)
    key = _primary(matrices)
    if coords is not None and key is not None:
        label = key[0] + (f" ({key[1]})" if several else "")
        conn = figs.make(
            f"{name} connectome",
            "connectome",
            lambda: connectome_png(matrices[key], coords, order, label),
            atlas=name,
        )
        if conn:
            entry["Connectome"] = conn
    return entry


def _networks_info(order: Ordering) -> list[list[Any]]:
    return [[label, int(b1 - b0)] for b0, b1, label in order.blocks]


def run_figures(record: RunRecord, ctx: RunContext) -> list[Path]:
    """Write the figures of one run and its ``_figures.json``; returns the files written.

    Call it in the worker right after :func:`bids_app.write.write_run`. Reads from disk
    only the cache folder's glass brain and labels (``ctx.cache_dir``); cost on the
    300-volume benchmark run: see docs/reports.md.
    """
    _mpl.use_cache(ctx.cache_dir)
    label = naming.run_label(record.entities)
    figs = _Figures(Path(ctx.output_dir), record.entities, ctx.desc, label)
    orderings = atlas_orderings(ctx, [a.name for a in record.atlases])
    data: dict[str, Any] = {
        "Format": FORMAT,
        "Kind": "run",
        "Run": label,
        "Desc": ctx.desc,
        "ConfigurationHash": ctx.config_hash,
        "Software": naming.SOFTWARE,
        "FDThreshold": _fd_threshold(record),
    }
    fd = record.framewise_displacement
    if fd is not None and np.isfinite(fd).any():
        data["MaxFramewiseDisplacement"] = float(np.nanmax(fd))
    figures: dict[str, Any] = {}
    if record.atlases or fd is not None:
        carpet = figs.make("carpet", "carpet", lambda: carpet_png(record, orderings))
        if carpet:
            carpet["Atlases"] = [
                {
                    "Name": a.name,
                    "Regions": len(a.regions),
                    "Networks": _networks_info(orderings[a.name]),
                }
                for a in record.atlases
            ]
            figures["Carpet"] = carpet
    if record.confounds is not None and np.asarray(record.confounds).size:
        reg = figs.make("regressors", "regressors", lambda: regressors_png(record))
        if reg:
            figures["Regressors"] = reg
    data["Figures"] = figures
    atlases = []
    per_run = ctx.config.connectivity.aggregate == "run"
    for atlas in record.atlases:
        order = orderings[atlas.name]
        entry: dict[str, Any] = {"Name": atlas.name, "Networks": _networks_info(order)}
        if per_run:
            entry.update(
                _atlas_figures(figs, ctx, atlas.name, atlas.regions, atlas.matrices, order)
            )
        atlases.append(entry)
    data["Atlases"] = atlases
    owned = RUN_SUFFIXES + (MATRIX_SUFFIXES if per_run else ())
    files = figs.finish("figures", owned, data)
    record.timings["report"] = sum(figs.timings.values())
    log.debug(
        "%s: report figures: %s",
        label,
        ", ".join(f"{k} {v:.2f} s" for k, v in figs.timings.items()),
    )
    return files


def unit_figures(record: UnitRecord, ctx: RunContext) -> list[Path]:
    """Matrix and connectome figures of a session / subject connectome
    (``connectivity.aggregate``); call it right after :func:`bids_app.write.write_unit`."""
    _mpl.use_cache(ctx.cache_dir)
    label = naming.run_label(record.entities)
    figs = _Figures(Path(ctx.output_dir), record.entities, ctx.desc, label)
    orderings = atlas_orderings(ctx, list(record.matrices))
    atlases = []
    for src in ctx.sources:
        matrices = record.matrices.get(src.name)
        if not matrices:
            continue
        order = orderings[src.name]
        entry: dict[str, Any] = {
            "Name": src.name,
            "Networks": _networks_info(order),
            "Runs": [m["timeseries"] for m in record.members.get(src.name, [])],
        }
        entry.update(_atlas_figures(figs, ctx, src.name, src.region_names, matrices, order))
        atlases.append(entry)
    data = {
        "Format": FORMAT,
        "Kind": ctx.config.connectivity.aggregate,
        "Unit": label,
        "Desc": ctx.desc,
        "ConfigurationHash": ctx.config_hash,
        "Software": naming.SOFTWARE,
        "ExcludedRuns": record.excluded,
        "Atlases": atlases,
    }
    return figs.finish("unitfigures", UNIT_SUFFIXES, data)


__all__ = [
    "carpet_matrices",
    "carpet_png",
    "figure_path",
    "figures_dir",
    "matrix_png",
    "regressors_png",
    "run_figures",
    "unit_figures",
]

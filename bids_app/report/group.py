"""The group report ``<group folder>/report.html`` (``OUTPUT_DIR/group/report.html``, or
``group/subset-<label>/report.html`` for a selection), from the group files only.

For every denoising label (``desc``) present in the folder: the QC overview
(``task-<T>_space-<S>_desc-<D>_qc.tsv``), QC-FC (``*_qcfc.tsv`` / ``.json``) and the group mean
matrices (``*_relmat.tsv``); when several labels are present, a side-by-side comparison
of their QC-FC benchmarks and the volumes they lose. Figures go to
``<group folder>/figures/`` (SVG plots, PNG matrices) and are rebuilt on every call;
figures there that no label produced any more are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import naming
from ..write import read_tsv, write_if_changed
from . import _mpl, html
from .figures import matrix_measure_name, matrix_png
from .networks import lut_network_column, ordering

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FIGURES = "figures"
CACHE = ".inputs.json"  # figure name -> digest of what it was drawn from
FORMAT = 1


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _scan(folder: Path) -> dict[str, dict[str, list[tuple[dict[str, str], Path]]]]:
    """``{desc: {suffix: [(entities, path of the .tsv)]}}`` of the group folder."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    for name in names:
        parsed = naming.try_parse_name(name)
        if name.startswith(".") or parsed is None or parsed[2] != ".tsv":
            continue
        ents, suffix, _ = parsed
        if "desc" in ents and suffix in ("qc", "qcfc", "relmat"):
            out[ents["desc"]][suffix].append((ents, folder / name))
    return out


def _key_label(ents: dict[str, str], drop: tuple[str, ...] = ("desc",)) -> str:
    return "_".join(f"{k}-{v}" for k, v in ents.items() if k not in drop)


# --- figures ------------------------------------------------------------------------------


def _hist(ax, values: np.ndarray, bins, color: str, label: str | None = None) -> None:
    values = values[np.isfinite(values)]
    if values.size:
        ax.hist(
            values,
            bins=bins,
            color=color,
            alpha=0.85,
            label=label,
            edgecolor="white",
            linewidth=0.3,
        )


def qc_svg(frame, title: str) -> bytes:
    """Distributions of mean FD and of the percentage of volumes kept (excluded runs red)."""
    fig = _mpl.figure(7.2, 2.3)
    excluded = frame["excluded"].astype(str).str.lower().eq("true").to_numpy()
    fd = frame["mean_fd"].to_numpy(dtype=float, na_value=np.nan)
    total = frame["volumes_total"].to_numpy(dtype=float, na_value=np.nan)
    kept = frame["volumes_kept"].to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = 100 * kept / total
    for k, (values, xlabel, bins) in enumerate(
        (
            (fd, "mean framewise displacement (mm)", 20),
            (pct, "volumes kept (%)", np.linspace(0, 100, 21)),
        )
    ):
        ax = fig.add_axes((0.07 + k * 0.5, 0.2, 0.4, 0.68))
        finite = values[np.isfinite(values)]
        b = (
            bins
            if not isinstance(bins, int) or finite.size == 0
            else np.histogram_bin_edges(finite, bins=bins)
        )
        _hist(ax, values[~excluded], b, "#4a78b5", "used")
        _hist(ax, values[excluded], b, _mpl.ACCENT, "excluded")
        ax.set_xlabel(xlabel, fontsize=_mpl.FONT)
        ax.set_ylabel("runs", fontsize=_mpl.FONT)
        ax.yaxis.get_major_locator().set_params(integer=True)
        _mpl.style_axes(ax, grid=True)
        if k == 0 and excluded.any():
            ax.legend(fontsize=_mpl.FONT - 1, frameon=False)
    fig.suptitle(title, fontsize=_mpl.FONT, x=0.07, ha="left", y=0.99)
    return _mpl.svg_bytes(fig)


def qcfc_svg(frame, summary: dict[str, Any], title: str) -> bytes:
    """Histogram of edge-wise QC-FC and, with distances, QC-FC against distance with the
    least-squares line (points rasterized inside the SVG)."""
    qcfc = frame["qcfc"].to_numpy(dtype=float, na_value=np.nan)
    dist = frame["distance"].to_numpy(dtype=float, na_value=np.nan)
    has_dist = np.isfinite(dist).any()
    fig = _mpl.figure(7.2, 2.5)
    ax = fig.add_axes((0.07, 0.19, 0.38 if has_dist else 0.88, 0.66))
    _hist(ax, qcfc, np.linspace(-1, 1, 41), "#4a78b5")
    ax.axvline(0, color="#333333", linewidth=0.8)
    med = summary.get("MedianAbsQCFC")
    ax.set_title(
        f"median |QC-FC| {html.number(med)}, "
        f"{html.number(summary.get('PercentEdgesSignificant'))} % edges p < 0.05",
        fontsize=_mpl.FONT,
    )
    ax.set_xlabel("QC-FC (r between mean FD and edge)", fontsize=_mpl.FONT)
    ax.set_ylabel("edges", fontsize=_mpl.FONT)
    ax.set_xlim(-1, 1)
    _mpl.style_axes(ax, grid=True)
    if has_dist:
        ok = np.isfinite(dist) & np.isfinite(qcfc)
        ax2 = fig.add_axes((0.56, 0.19, 0.41, 0.66))
        # thousands of edges: small translucent dots; a few dozen must still show
        size, alpha = (1.5, 0.35) if ok.sum() > 500 else (9.0, 0.8)
        ax2.scatter(
            dist[ok], qcfc[ok], s=size, color="#4a78b5", alpha=alpha, linewidths=0, rasterized=True
        )
        if ok.sum() >= 2:
            slope, intercept = np.polyfit(dist[ok], qcfc[ok], 1)
            xs = np.array([dist[ok].min(), dist[ok].max()])
            ax2.plot(xs, slope * xs + intercept, color=_mpl.ACCENT, linewidth=1.2)
        ax2.axhline(0, color="#333333", linewidth=0.6)
        ax2.set_title(
            f"distance dependence (Spearman) {html.number(summary.get('DistanceDependence'))}",
            fontsize=_mpl.FONT,
        )
        ax2.set_xlabel("distance between region centres (mm)", fontsize=_mpl.FONT)
        ax2.set_ylabel("QC-FC", fontsize=_mpl.FONT)
        _mpl.style_axes(ax2, grid=True)
    fig.suptitle(title, fontsize=_mpl.FONT - 1, x=0.07, ha="left", y=0.995, color="#555555")
    return _mpl.svg_bytes(fig)


METRICS = (
    ("MedianAbsQCFC", "median |QC-FC|", "lower"),
    ("PercentEdgesSignificant", "% edges p < 0.05", "lower"),
    ("DistanceDependence", "distance dependence", "zero"),
    ("VolumesLost", "% volumes lost", "lower"),
)


def comparison_svg(rows: list[dict[str, Any]], descs: list[str], title: str) -> bytes:
    """One panel per metric: the denoising labels across, one line per atlas x measure."""
    fig = _mpl.figure(7.6, 2.5)
    series: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        series[r["series"]][r["desc"]] = r
    colors = _mpl.network_colors(list(series))
    x = np.arange(len(descs))
    for k, (key, label, _) in enumerate(METRICS):
        ax = fig.add_axes((0.06 + k * 0.245, 0.28, 0.19, 0.58))
        for name, by_desc in series.items():
            y = np.array([by_desc.get(d, {}).get(key, np.nan) for d in descs], dtype=float)
            y = np.where(np.isfinite(y), y, np.nan)
            if key == "VolumesLost":
                ax.plot(x, y, marker="o", markersize=3.5, color="#333333", linewidth=1)
                top = np.nanmax(y) if np.isfinite(y).any() else 1.0
                ax.set_ylim(0, max(top * 1.15, 1.0))
                continue
            ax.plot(
                x,
                y,
                marker="o",
                markersize=3,
                color=colors[name],
                linewidth=0.9,
                label=name if k == 0 else None,
            )
        if key == "DistanceDependence":
            ax.axhline(0, color="#999999", linewidth=0.6)
        ax.set_xticks(x, descs, fontsize=_mpl.FONT - 1, rotation=30 if len(descs) > 3 else 0)
        ax.set_xlim(-0.4, len(descs) - 0.6)
        ax.set_title(label, fontsize=_mpl.FONT)
        _mpl.style_axes(ax, grid=True)
    if series:
        fig.legend(
            loc="lower left",
            fontsize=_mpl.FONT - 2,
            ncol=min(4, len(series)),
            frameon=False,
            bbox_to_anchor=(0.05, -0.01),
        )
    fig.suptitle(title, fontsize=_mpl.FONT, x=0.06, ha="left", y=0.995)
    return _mpl.svg_bytes(fig)


# --- data ---------------------------------------------------------------------------------


def _qc_section(entries, output_dir: Path) -> list[dict[str, Any]]:
    out = []
    for ents, path in sorted(entries, key=lambda e: e[1].name):
        try:
            frame = read_tsv(path)
        except (OSError, ValueError) as err:
            log.warning("group report: cannot read %s: %s", path, err)
            continue
        excluded = frame["excluded"].astype(str).str.lower().eq("true")
        fd = frame["mean_fd"].to_numpy(dtype=float, na_value=np.nan)
        total = frame["volumes_total"].to_numpy(dtype=float, na_value=np.nan)
        kept = frame["volumes_kept"].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            lost = 100 * (1 - kept / total)
        runs = []
        for _, row in frame[excluded].iterrows():
            label = "_".join(
                str(row[c]) for c in ("participant_id", "session_id") if isinstance(row[c], str)
            )
            if isinstance(row.get("run"), str):
                label += f"_run-{row['run']}"
            runs.append({"run": label, "reason": row.get("exclusion_reason")})
        out.append(
            {
                "task": ents.get("task"),
                "entities": ents,
                "frame": frame,
                "file": path.name,
                "n_runs": len(frame),
                "n_participants": int(frame["participant_id"].nunique()),
                "n_excluded": int(excluded.sum()),
                "excluded": runs,
                "fd_median": float(np.nanmedian(fd)) if np.isfinite(fd).any() else None,
                "fd_max": float(np.nanmax(fd)) if np.isfinite(fd).any() else None,
                "kept_median": float(np.nanmedian(kept)) if np.isfinite(kept).any() else None,
                "lost_mean": float(np.nanmean(lost)) if np.isfinite(lost).any() else None,
            }
        )
    return out


def _lut(output_dir: Path, atlas: str, cache: dict):
    if atlas not in cache:
        path = naming.atlas_lut_path(output_dir, atlas)
        try:
            cache[atlas] = read_tsv(path) if path.is_file() else None
        except (OSError, ValueError):
            cache[atlas] = None
    return cache[atlas]


def group_report(
    output_dir: Path, group_folder: Path | None = None, config: Config | None = None
) -> Path:
    """Write ``<group_folder>/report.html`` and its figures; returns the report's path.

    ``group_folder`` is what :func:`bids_app.group.run_group` wrote into
    (``GroupResult.folder``; default ``OUTPUT_DIR/group``). ``config`` is not needed (every
    label present is reported from its files) and is accepted for symmetry.
    """
    output_dir = Path(output_dir)
    folder = Path(group_folder) if group_folder is not None else naming.group_dir(output_dir)
    figdir = folder / FIGURES
    written: list[Path] = []
    found = _scan(folder)
    descs = sorted(found)
    luts: dict[str, Any] = {}
    before = _read_json(figdir / CACHE)
    digests: dict[str, str] = {}

    def save(name: str, inputs: Iterable[Path | str], draw: Callable[[], bytes]) -> dict | None:
        """Draw a figure unless the existing one was drawn from identical inputs."""
        path = figdir / name
        digest = _digest(inputs)
        if before.get(name) != digest or not path.is_file():
            try:
                data = draw()
            except Exception as err:  # a figure never fails the group level
                log.warning(
                    "group report: figure %s not made: %s: %s", name, type(err).__name__, err
                )
                return None
            write_if_changed(path, data)
        digests[name] = digest
        written.append(path)
        size = html.image_size(path) or (None, None)
        return {"src": f"{FIGURES}/{name}", "width": size[0], "height": size[1]}

    sections = []
    comparison_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for desc in descs:
        files = found[desc]
        qc = _qc_section(files.get("qc", []), output_dir)
        lost_by_task = {q["task"]: q["lost_mean"] for q in qc}
        for q in qc:
            name = naming.build_name(q["entities"], "qc", ".svg")
            frame = q.pop("frame")
            title = f"{q['file']}: {q['n_runs']} runs"
            q["figure"] = save(name, [folder / q["file"]], lambda f=frame, t=title: qc_svg(f, t))
        qcfc = []
        for ents, path in sorted(files.get("qcfc", []), key=lambda e: e[1].name):
            meta = _read_json(path.with_suffix(".json"))
            summary = meta.get("Summary") or {}
            fig = save(
                naming.build_name(ents, "qcfc", ".svg"),
                [path, path.with_suffix(".json")],
                lambda p=path, s=summary: qcfc_svg(read_tsv(p), s, p.name),
            )
            entry = {
                "key": _key_label(ents),
                "atlas": ents.get("atlas"),
                "meas": ents.get("meas"),
                "task": ents.get("task"),
                "summary": summary,
                "figure": fig,
                "participants": len(meta.get("Participants") or []),
            }
            qcfc.append(entry)
            row = {
                "desc": desc,
                "series": f"{ents.get('atlas')} {ents.get('meas')}",
                "atlas": ents.get("atlas"),
                "meas": ents.get("meas"),
                "participants": entry["participants"],
                "VolumesLost": lost_by_task.get(ents.get("task")),
                **{k: summary.get(k) for k, _, _ in METRICS[:3]},
                "PercentEdgesSignificantFDR": summary.get("PercentEdgesSignificantFDR"),
            }
            comparison_rows[_key_label(ents, ("desc", "atlas", "meas"))].append(row)
        means: dict[tuple, dict] = defaultdict(dict)
        for ents, path in files.get("relmat", []):
            base = {k: v for k, v in ents.items() if k != "meas"}
            means[tuple(base.items())][ents.get("meas", "")] = path
        matrices = []
        for base_key in sorted(means):
            base = dict(base_key)
            by_meas = means[base_key]
            lut_path = naming.atlas_lut_path(output_dir, base.get("atlas", ""))
            fig = save(
                naming.build_name(base, "relmat", ".png"),
                [by_meas[m] for m in sorted(by_meas)] + [lut_path],
                lambda b=base, files=by_meas: _group_matrix_png(output_dir, b, files, luts),
            )
            info = {"measures": [matrix_measure_name(m) for m in sorted(by_meas)]}
            n_part = _read_json(next(iter(by_meas.values())).with_suffix(".json")).get(
                "NumberOfParticipants"
            )
            matrices.append(
                {
                    "atlas": base.get("atlas"),
                    "key": _key_label(base),
                    "measures": info["measures"],
                    "participants": n_part,
                    "figure": fig,
                }
            )
        sections.append({"desc": desc, "qc": qc, "qcfc": qcfc, "matrices": matrices})
    volumes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for section in sections:
        for q in section["qc"]:
            volumes[str(q["task"])].append({"desc": section["desc"], **q})
    comparisons = []
    if len(descs) > 1:
        for key in sorted(comparison_rows):
            rows = sorted(comparison_rows[key], key=lambda r: (r["series"], descs.index(r["desc"])))
            present = [d for d in descs if any(r["desc"] == d for r in rows)]
            if len(present) < 2:
                continue
            _mark_best(rows)
            ents = naming.parse_name(f"{key}_x.svg")[0] if key else {}
            fig = save(
                naming.build_name(ents, "comparison", ".svg") if ents else "comparison.svg",
                [json.dumps(rows, sort_keys=True, default=str)],
                lambda r=rows, p=present, k=key: comparison_svg(
                    r, p, f"{k}: denoising labels compared"
                ),
            )
            comparisons.append({"key": key, "descs": present, "rows": rows, "figure": fig})
    if digests:
        write_if_changed(figdir / CACHE, json.dumps(digests, indent=1, sort_keys=True) + "\n")
    _remove_stale(figdir, {p.name for p in written} | {CACHE})
    text = html.render(
        "group.html.j2",
        title="Group report" + (f" ({folder.name})" if folder.name != "group" else ""),
        subtitle=f"bids-connectome group report: {folder.relative_to(output_dir).as_posix()}/, "
        f"denoising label{'s' if len(descs) != 1 else ''} {', '.join(descs) or '(none)'}",
        software=naming.SOFTWARE,
        sections=sections,
        comparisons=comparisons,
        volumes=dict(sorted(volumes.items())) if len(descs) > 1 else {},
        metrics=METRICS,
    )
    return write_if_changed(folder / REPORT_NAME, text)


def _group_matrix_png(output_dir: Path, base: dict, by_meas: dict[str, Path], luts: dict) -> bytes:
    mats, regions = {}, []
    for meas in sorted(by_meas):
        frame = read_tsv(by_meas[meas])
        regions = [str(c) for c in frame.columns]
        mats[(meas, "")] = frame.to_numpy(dtype=float, na_value=np.nan)
    lut = _lut(output_dir, base.get("atlas", ""), luts)
    return matrix_png(mats, ordering(regions, lut_network_column(lut, regions)), False)[0]


def _digest(inputs: Iterable[Path | str]) -> str:
    """What a figure depends on: its input files' bytes (or given text) and the software."""
    from .methods import software_versions

    h = hashlib.sha256()
    versions = software_versions()
    h.update(f"{FORMAT} {naming.SOFTWARE} {versions.get('matplotlib')}".encode())
    for item in inputs:
        if isinstance(item, Path):
            try:
                h.update(item.read_bytes())
            except OSError:
                h.update(b"missing:" + item.name.encode())
        else:
            h.update(str(item).encode())
        h.update(b"\0")
    return h.hexdigest()


def _mark_best(rows: list[dict[str, Any]]) -> None:
    """Flag, per series (atlas x measure) and metric, the best denoising label."""
    by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_series[r["series"]].append(r)
    for group in by_series.values():
        for key, _, goal in METRICS:
            values = [(r.get(key), i) for i, r in enumerate(group)]
            values = [(float(v), i) for v, i in values if v is not None and np.isfinite(float(v))]
            if len(values) < 2:
                continue
            score = (lambda v: abs(v)) if goal == "zero" else (lambda v: v)
            best = min(score(v) for v, _ in values)
            for v, i in values:
                if score(v) == best:
                    group[i].setdefault("best", []).append(key)


def _remove_stale(figdir: Path, keep: set[str]) -> None:
    try:
        names = os.listdir(figdir)
    except OSError:
        return
    for name in names:
        if not name.startswith(".") and name not in keep and (figdir / name).is_file():
            (figdir / name).unlink(missing_ok=True)


__all__ = ["REPORT_NAME", "group_report"]

"""The participant report ``OUTPUT_DIR/sub-<L>.html``: built from files on disk only.

Reads, for every denoising label (``desc``) found for the participant, the run sidecars
(``*_qc.json``, ``*_timeseries.json``, ``*_coverage.tsv``), the figures and their
``*_figures.json`` in ``sub-<L>/figures/`` and the recorded configuration
(``code/bids-connectome/desc-<D>_config.json``); never a BOLD image. Figures whose
``ConfigurationHash`` is not the run's (left by another configuration) are not shown.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import naming
from ..write import write_if_changed
from . import html
from .figures import figures_dir
from .methods import build_methods, software_versions

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, csv.Error):
        return []


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def region_names(output_dir: Path, atlas: str) -> list[str]:
    """Region names of an atlas from its lookup table at the dataset root."""
    rows = _read_tsv(naming.atlas_lut_path(output_dir, atlas))
    return [r.get("name", "") for r in rows]


def recorded_configuration(output_dir: Path, desc: str) -> dict[str, Any] | None:
    return _read_json(naming.config_path(output_dir, desc))


def methods_for(
    output_dir: Path, desc: str, config: Config | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """(Methods, recorded configuration record) of one ``desc``; the text comes from the
    recorded configuration, or from ``config`` when nothing was recorded."""
    record = recorded_configuration(output_dir, desc)
    if record and isinstance(record.get("Configuration"), dict):
        configuration = record["Configuration"]
        software = str(record.get("Software") or naming.SOFTWARE)
        files = record.get("Files")
    elif config is not None and config.denoise.name == desc:
        configuration, software = config.model_dump(mode="json"), naming.SOFTWARE
        files = None
    else:
        return None, record
    names = {
        str(a.get("name")): region_names(output_dir, str(a.get("name")))
        for a in configuration.get("atlases") or []
    }
    return build_methods(configuration, software, software_versions(), names, files), record


def methods_markdown_path(output_dir: Path, desc: str) -> Path:
    """``OUTPUT_DIR/logs/desc-<D>_methods.md``."""
    return naming.logs_dir(output_dir) / f"desc-{desc}_methods.md"


# --- runs ---------------------------------------------------------------------------------


# Coverage columns that, at 0, say why a region is n/a: volume runs, then surface runs.
_EMPTY_REASONS = (
    ("n_voxels", "no voxel on the BOLD grid"),
    ("n_voxels_in_mask", "outside the brain mask"),
    ("n_voxels_usable", "no usable voxel (constant or n/a BOLD)"),
    ("n_grayordinates", "no grayordinate in the atlas"),
    ("n_grayordinates_in_data", "no grayordinate in the data"),
    ("n_grayordinates_usable", "no usable grayordinate (constant or n/a data)"),
)


def _coverage(path: Path, missing: list[str]) -> dict[str, Any]:
    """Region counts, n/a regions with the reason, low-coverage regions."""
    rows = _read_tsv(path)
    missing_set = set(missing)
    na, low = [], []
    for r in rows:
        name = r.get("name", "")
        usable = str(r.get("usable", "")).lower() == "true"
        cov = _float(r.get("coverage"))
        if not usable or name in missing_set:
            empty = next((why for col, why in _EMPTY_REASONS if _float(r.get(col)) == 0), None)
            if empty is not None:
                why = empty
            elif not usable:
                why = f"coverage {cov:.0%} below min_coverage" if cov is not None else "unusable"
            else:
                why = "constant signal"
            na.append({"name": name, "why": why, "coverage": cov})
        elif cov is not None and cov < 0.5:
            low.append({"name": name, "coverage": cov})
    unit = "grayordinates" if rows and "n_grayordinates" in rows[0] else "voxels"
    return {"regions": len(rows) or None, "na": na, "low": low, "unit": unit}


def _figure(folder: Path, rel: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A figure entry of a ``_figures.json`` whose file exists: src (relative), size."""
    if not entry or not entry.get("File"):
        return None
    path = folder / entry["File"]
    size = html.image_size(path)
    if size is None:
        return None
    return {**entry, "src": f"{rel}/{entry['File']}", "width": size[0], "height": size[1]}


def _run_entry(
    output_dir: Path, qc_path: Path, entities: dict[str, str], desc: str
) -> dict[str, Any]:
    qc = _read_json(qc_path) or {}
    label = naming.run_label(entities)
    source = naming.source_entities(entities)
    func = qc_path.parent
    series: dict[str, dict[str, Any]] = {}
    key = naming.owner_key(source)
    for path in sorted(func.glob("*_timeseries.json")):
        parsed = naming.try_parse_name(path.name)
        if parsed is None:
            continue
        ents, _, _ = parsed
        if ents.get("desc") == desc and naming.owner_key(ents) == key and "atlas" in ents:
            meta = _read_json(path) or {}
            if meta.get("ConfigurationHash") == qc.get("ConfigurationHash"):
                series[ents["atlas"]] = meta
    fig_folder = figures_dir(output_dir, source["sub"])
    rel = fig_folder.relative_to(output_dir).as_posix()
    figs_json = _read_json(
        fig_folder / naming.build_name({**source, "desc": desc}, "figures", ".json")
    )
    if figs_json and figs_json.get("ConfigurationHash") != qc.get("ConfigurationHash"):
        figs_json = None  # figures of another configuration
    figs_json = figs_json or {}
    figures = figs_json.get("Figures") or {}
    by_atlas = {a.get("Name"): a for a in figs_json.get("Atlases") or []}
    params = next(iter(series.values()), {}).get("ConfoundParameters") or {}
    fd_threshold = figs_json.get("FDThreshold")
    if fd_threshold is None and "scrub" in (params.get("strategy") or []):
        fd_threshold = params.get("fd_threshold")
    atlases = []
    names = list(by_atlas) + [n for n in series if n not in by_atlas]  # configured order
    for name in names:
        meta = series.get(name, {})
        cov = (
            _coverage(func / meta["CoverageFile"], list(meta.get("MissingRegions") or []))
            if meta.get("CoverageFile")
            else {"regions": None, "na": [], "low": [], "unit": "voxels"}
        )
        if cov["regions"] is None and meta.get("Columns"):
            cov["regions"] = len(meta["Columns"])
        fig = by_atlas.get(name, {})
        atlases.append(
            {
                "name": name,
                "kind": meta.get("AtlasKind"),
                "coverage": cov,
                "networks": fig.get("Networks") or [],
                "matrix": _figure(fig_folder, rel, fig.get("Matrix")),
                "connectome": _figure(fig_folder, rel, fig.get("Connectome")),
            }
        )
    total = qc.get("VolumesTotal")
    kept = qc.get("VolumesKept")
    return {
        "label": label,
        "anchor": f"{desc}-{label}",
        "entities": source,
        "qc": qc,
        "volumes_total": total,
        "volumes_kept": kept,
        "volumes_censored": qc.get("VolumesCensored"),
        "non_steady": len(qc.get("NonSteadyStateVolumes") or []),
        "kept_percent": (100.0 * kept / total) if total and kept is not None else None,
        "mean_fd": qc.get("MeanFramewiseDisplacement"),
        "max_fd": figs_json.get("MaxFramewiseDisplacement"),
        "fd_threshold": fd_threshold,
        "regressors": list(qc.get("ConfoundRegressors") or []),
        "excluded": bool(qc.get("Excluded")),
        "reason": qc.get("ExclusionReason"),
        "carpet": _figure(fig_folder, rel, figures.get("Carpet")),
        "regressor_figure": _figure(fig_folder, rel, figures.get("Regressors")),
        "atlases": atlases,
        "has_figures": bool(figs_json),
    }


def _sort_key(entities: dict[str, str]) -> tuple:
    return tuple(html.natural_key(entities.get(k)) for k in naming.SOURCE_ENTITIES)


def _units(output_dir: Path, subject: str, desc: str, hashes: set[str]) -> list[dict[str, Any]]:
    folder = figures_dir(output_dir, subject)
    rel = folder.relative_to(output_dir).as_posix()
    out = []
    for path in sorted(folder.glob(f"*_desc-{desc}_unitfigures.json")):
        data = _read_json(path)
        if not data or data.get("ConfigurationHash") not in hashes:
            continue
        atlases = [
            {
                "name": a.get("Name"),
                "runs": a.get("Runs") or [],
                "matrix": _figure(folder, rel, a.get("Matrix")),
                "connectome": _figure(folder, rel, a.get("Connectome")),
            }
            for a in data.get("Atlases") or []
        ]
        out.append(
            {
                "label": data.get("Unit"),
                "kind": data.get("Kind"),
                "excluded": data.get("ExcludedRuns") or [],
                "atlases": atlases,
            }
        )
    return out


def collect(output_dir: Path, subject: str, config: Config | None = None) -> dict[str, Any]:
    """Everything the participant template shows (plain data)."""
    output_dir = Path(output_dir)
    folder = output_dir / f"sub-{subject}"
    qc_files = sorted(folder.glob("func/*_qc.json")) + sorted(folder.glob("ses-*/func/*_qc.json"))
    by_desc: dict[str, list[tuple[dict[str, str], Path]]] = defaultdict(list)
    for path in qc_files:
        parsed = naming.try_parse_name(path.name)
        if parsed is None or parsed[1] != "qc" or parsed[0].get("sub") != subject:
            continue
        ents = parsed[0]
        if "desc" in ents:
            by_desc[ents["desc"]].append((ents, path))
    sections = []
    for desc in sorted(by_desc):
        runs = [
            _run_entry(output_dir, path, ents, desc)
            for ents, path in sorted(by_desc[desc], key=lambda item: _sort_key(item[0]))
        ]
        methods, record = methods_for(output_dir, desc, config)
        expected = (record or {}).get("ConfigurationHash")
        hashes = {r["qc"].get("ConfigurationHash") for r in runs}
        stale = [
            r["label"] for r in runs if expected and r["qc"].get("ConfigurationHash") != expected
        ]
        configuration = (record or {}).get("Configuration") or (
            config.model_dump(mode="json")
            if config is not None and config.denoise.name == desc
            else {}
        )
        den = configuration.get("denoise") or {}
        sections.append(
            {
                "desc": desc,
                "strategy": den.get("strategy"),
                "runs": runs,
                "units": _units(output_dir, subject, desc, hashes),
                "methods": methods,
                "methods_file": methods_markdown_path(output_dir, desc)
                .relative_to(output_dir)
                .as_posix(),
                "stale": stale,
                "n_excluded": sum(r["excluded"] for r in runs),
            }
        )
    return {"subject": subject, "sections": sections}


def participant_report(output_dir: Path, subject: str, config: Config | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-<L>.html`` and ``logs/desc-<D>_methods.md`` (per ``desc``)."""
    output_dir = Path(output_dir)
    subject = str(subject).removeprefix("sub-")
    data = collect(output_dir, subject, config)
    for section in data["sections"]:
        methods = section["methods"]
        if methods is not None:
            title = f"Methods: bids-connectome, denoising label {section['desc']}"
            write_if_changed(
                methods_markdown_path(output_dir, section["desc"]), methods.markdown(title)
            )
    text = html.render(
        "participant.html.j2",
        title=f"sub-{subject}",
        subtitle="bids-connectome participant report: denoising, region signals and connectomes",
        software=naming.SOFTWARE,
        **data,
    )
    return write_if_changed(output_dir / f"sub-{subject}.html", text)


__all__ = ["collect", "methods_for", "participant_report"]

"""BIDS naming: the one module that builds and parses output file names.

Participant outputs keep the BOLD's own entities, in this order, then add ours::

    sub ses task acq ce rec dir run echo space res | atlas meas desc _suffix.ext

Group outputs drop ``sub``/``ses``/``run`` and live in ``OUTPUT_DIR/group/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "space", "res")
DERIVED_ENTITIES = ("atlas", "meas", "desc")
ENTITY_ORDER = SOURCE_ENTITIES + DERIVED_ENTITIES
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_PART = re.compile(r"^([A-Za-z]+)-([A-Za-z0-9]+)$")


def build_name(entities: Mapping[str, str | int | None], suffix: str, extension: str) -> str:
    """File name from entities (in canonical order; None values are left out)."""
    parts = []
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}")
    for key in ENTITY_ORDER:
        value = entities.get(key)
        if value is None or value == "":
            continue
        value = str(value)
        if not _LABEL.match(value):
            raise ValueError(f"invalid BIDS label for {key}: {value!r} (letters and digits only)")
        parts.append(f"{key}-{value}")
    return "_".join(parts + [suffix]) + extension


def parse_name(name: str) -> tuple[dict[str, str], str, str]:
    """Inverse of :func:`build_name`: (entities, suffix, extension)."""
    base = Path(name).name
    stem, dot, ext = base.partition(".")
    chunks = stem.split("_")
    entities: dict[str, str] = {}
    for chunk in chunks[:-1]:
        m = _PART.match(chunk)
        if m is None:
            raise ValueError(f"not a BIDS file name: {name}")
        entities[m.group(1)] = m.group(2)
    return entities, chunks[-1], dot + ext


def source_entities(entities: Mapping[str, object]) -> dict[str, str]:
    """The BOLD entities kept in output names (pybids long names accepted)."""
    long_to_short = {
        "subject": "sub",
        "session": "ses",
        "acquisition": "acq",
        "ceagent": "ce",
        "reconstruction": "rec",
        "direction": "dir",
        "resolution": "res",
    }
    out: dict[str, str] = {}
    for key, value in entities.items():
        key = long_to_short.get(key, key)
        if key in SOURCE_ENTITIES and value is not None:
            out[key] = str(value)
    return out


def func_dir(output_dir: Path, entities: Mapping[str, str]) -> Path:
    path = output_dir / f"sub-{entities['sub']}"
    if entities.get("ses"):
        path = path / f"ses-{entities['ses']}"
    return path / "func"


def participant_path(
    output_dir: Path,
    entities: Mapping[str, str],
    suffix: str,
    extension: str,
    **extra: str | None,
) -> Path:
    """Path of a participant-level output, e.g. ``suffix='timeseries', atlas='X', desc='simple'``."""
    ents = {**entities, **extra}
    return func_dir(output_dir, ents) / build_name(ents, suffix, extension)


def atlas_lut_path(output_dir: Path, atlas: str) -> Path:
    """Lookup table at the dataset root: ``atlas-<name>_dseg.tsv``."""
    return output_dir / build_name({"atlas": atlas}, "dseg", ".tsv")


def atlas_image_path(output_dir: Path, atlas: str, space: str, suffix: str = "probseg") -> Path:
    """Image of regions we made ourselves (e.g. extracted from a statistical map)."""
    return output_dir / "atlases" / build_name({"space": space, "atlas": atlas}, suffix, ".nii.gz")


def group_path(
    output_dir: Path, entities: Mapping[str, str | None], suffix: str, extension: str
) -> Path:
    ents = {k: v for k, v in entities.items() if k not in ("sub", "ses", "run")}
    return output_dir / "group" / build_name(ents, suffix, extension)


def measure_label(measure: str, estimator: str, several_estimators: bool) -> str:
    """``meas-`` label; the estimator is appended when the config asks for several.

    >>> measure_label("partialcorrelation", "graphical_lasso", True)
    'partialcorrelationGraphicallasso'
    """
    if not several_estimators:
        return measure
    return measure + estimator.replace("_", "").capitalize()

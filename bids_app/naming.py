"""BIDS names and sidecar schemas: the one module that builds and parses output file names
and decides what every JSON sidecar of the participant level holds.

Participant outputs keep the BOLD's own entities, in this order, then add ours::

    sub ses task acq ce rec dir run echo hemi space res den | atlas meas desc _suffix.ext

Group outputs drop ``sub``/``ses``/``run`` and live in ``OUTPUT_DIR/group/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .vocabulary import ESTIMATOR_NAMES, MEASURE_DESCRIPTIONS

SOURCE_ENTITIES = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "hemi",
    "space",
    "res",
    "den",
)
DERIVED_ENTITIES = ("atlas", "meas", "desc")
ENTITY_ORDER = SOURCE_ENTITIES + DERIVED_ENTITIES
# pybids' long entity names -> the short keys of file names
LONG_NAMES = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "direction": "dir",
    "hemisphere": "hemi",
    "resolution": "res",
    "density": "den",
    "description": "desc",
}
SOFTWARE = f"bids-connectome {__version__}"
CODE_URL = "https://github.com/bids-connectome/bids-connectome"
BIDS_VERSION = "1.10.0"
INPUT_DATASET = "fmriprep"  # name of the input dataset in bids:<name>:<path> URIs
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_PART = re.compile(r"^([A-Za-z]+)-([A-Za-z0-9]+)$")


# --- names ------------------------------------------------------------------------------------


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


def try_parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """:func:`parse_name`, or None for a name that is not ``key-value_..._suffix.ext``."""
    try:
        return parse_name(name)
    except ValueError:
        return None


def source_entities(entities: Mapping[str, object]) -> dict[str, str]:
    """The BOLD entities kept in output names, in canonical order (pybids long names accepted)."""
    short = {LONG_NAMES.get(k, k): v for k, v in entities.items()}
    return {k: str(short[k]) for k in SOURCE_ENTITIES if short.get(k) is not None}


def owner_key(entities: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Identity of the run or unit a file belongs to: its source entities."""
    return tuple((k, str(entities[k])) for k in SOURCE_ENTITIES if k in entities)


def run_label(entities: Mapping[str, str]) -> str:
    """``sub-01_ses-1_task-rest_..._space-X`` (the source entities), as logs name a run."""
    return "_".join(f"{k}-{v}" for k, v in owner_key(entities))


def func_dir(output_dir: Path, entities: Mapping[str, str]) -> Path:
    path = Path(output_dir) / f"sub-{entities['sub']}"
    if entities.get("ses"):
        path = path / f"ses-{entities['ses']}"
    return path / "func"


def figures_dir(output_dir: Path, entities: Mapping[str, str]) -> Path:
    """``OUTPUT_DIR/sub-<L>/figures/`` (fMRIPrep's layout for report figures)."""
    return Path(output_dir) / f"sub-{entities['sub']}" / "figures"


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


def manifest_path(output_dir: Path, entities: Mapping[str, str], desc: str, kind: str) -> Path:
    """Hidden record of what a run (``kind="run"``) or an aggregated unit (``"unit"``) wrote."""
    name = build_name({**entities, "desc": desc}, kind, ".json")
    return func_dir(output_dir, entities) / f".{name}"


def unit_entities(entities: Mapping[str, str], aggregate: str) -> dict[str, str]:
    """Source entities of the connectome unit a run belongs to (``aggregate`` run/session/subject)."""
    drop = {"run": (), "session": ("run",), "subject": ("run", "ses")}[aggregate]
    return {k: v for k, v in source_entities(entities).items() if k not in drop}


def atlas_lut_path(output_dir: Path, atlas: str) -> Path:
    """Lookup table at the dataset root: ``atlas-<name>_dseg.tsv``."""
    return Path(output_dir) / build_name({"atlas": atlas}, "dseg", ".tsv")


def atlas_description_path(output_dir: Path, atlas: str) -> Path:
    """``atlas-<A>_description.json`` (BIDS atlases): name, licence, template, source."""
    return Path(output_dir) / build_name({"atlas": atlas}, "description", ".json")


def atlas_lut_sidecar_path(output_dir: Path, atlas: str) -> Path:
    """``atlas-<A>_dseg.json``: the lookup table's columns."""
    return Path(output_dir) / build_name({"atlas": atlas}, "dseg", ".json")


def atlas_image_path(output_dir: Path, atlas: str, space: str, suffix: str = "probseg") -> Path:
    """Image of regions we made ourselves (e.g. extracted from a statistical map), at the
    dataset root beside its lookup table: ``space-<S>_atlas-<A>_probseg.nii.gz``."""
    return Path(output_dir) / build_name({"space": space, "atlas": atlas}, suffix, ".nii.gz")


BIDSIGNORE = """\
# Written by bids-connectome. Suffixes the BIDS specification does not define yet:
# BEP017 connectivity matrices and region time series (tables, and CIFTI-2 files for
# surface runs), and our coverage and QC files.
*_relmat.tsv
*_relmat.json
*_relmat.pconn.nii
*_timeseries.tsv
*_timeseries.json
*_timeseries.ptseries.nii
*_coverage.tsv
*_qc.json
# Not BIDS data, with no place in the specification: the visual reports (pages and
# figures, as fMRIPrep ignores them), and the group level, whose folder the BIDS validator
# reports as an error even when every file in it has one of the suffixes above.
sub-*.html
sub-*/figures
/group
"""

README = """\
# bids-connectome derivatives

Connectomes computed by bids-connectome (https://github.com/bids-connectome/bids-connectome) from
the fMRIPrep derivatives listed in dataset_description.json (SourceDatasets, DatasetLinks).

- `sub-<label>/[ses-<label>/]func/`: per run, the denoised region time series of every atlas
  (`*_timeseries.tsv` + `.json`), region coverage (`*_coverage.tsv`), connectivity matrices
  (`*_relmat.tsv` + `.json`, BEP017) and a denoising QC sidecar (`*_qc.json`).
- `atlas-<label>_dseg.tsv` (+ `_dseg.json`, `_description.json`): one lookup table per atlas,
  region names and centres in world millimetres.
- `group/`: group means, stacked matrices, tangent space, the QC table and QC-FC per denoising
  configuration (`desc-<label>`); `group/subset-<label>/` for a selection of participants.
- `code/bids-connectome/desc-<label>_config.json`: the configuration behind every `desc-<label>`
  output; its hash is the `ConfigurationHash` of every sidecar.
- `logs/`: one log per invocation, with the configuration file as given.
"""


def code_dir(output_dir: Path) -> Path:
    """Our folder of the BIDS ``code/`` folder: the configuration records."""
    return Path(output_dir) / "code" / "bids-connectome"


def config_path(output_dir: Path, desc: str) -> Path:
    """The validated configuration behind every ``desc-<D>`` output (BIDS ``code/`` folder)."""
    return code_dir(output_dir) / f"desc-{desc}_config.json"


def logs_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "logs"


def group_dir(output_dir: Path, subset: str | None = None) -> Path:
    """``group/`` for the whole dataset; ``group/subset-<label>/`` for a selection of it."""
    base = Path(output_dir) / "group"
    return base if subset is None else base / f"subset-{subset}"


def group_path(
    output_dir: Path,
    entities: Mapping[str, str | None],
    suffix: str,
    extension: str,
    subset: str | None = None,
) -> Path:
    ents = {k: v for k, v in entities.items() if k not in ("sub", "ses", "run")}
    return group_dir(output_dir, subset) / build_name(ents, suffix, extension)


def measure_label(measure: str, estimator: str, several_estimators: bool) -> str:
    """``meas-`` label; the estimator is appended when the config asks for several.

    >>> measure_label("partialcorrelation", "graphical_lasso", True)
    'partialcorrelationGraphicallasso'
    """
    if not several_estimators:
        return measure
    return measure + estimator.replace("_", "").capitalize()


def bids_uri(relative: str | Path, dataset: str = "") -> str:
    """``bids:<dataset>:<path>``; an empty dataset name means this dataset (OUTPUT_DIR)."""
    return f"bids:{dataset}:{Path(relative).as_posix()}"


# --- sidecar schemas ----------------------------------------------------------------------------


def dataset_description(source: Mapping[str, Any] | None, input_link: str) -> dict[str, Any]:
    """``dataset_description.json``: the same for every job writing into one OUTPUT_DIR.

    ``source`` is the input's own dataset_description (None if unreadable): its name, DOI,
    generator and authors are carried over; ``input_link`` locates it for ``bids:fmriprep:``
    URIs (relative to OUTPUT_DIR).
    """
    described: dict[str, Any] = {"URL": input_link}
    if source:
        described = {k: source[k] for k in ("Name", "DatasetDOI") if k in source} | described
        generated = source.get("GeneratedBy") or []
        if generated and isinstance(generated[0], dict):
            described["GeneratedBy"] = {
                k: generated[0].get(k) for k in ("Name", "Version") if k in generated[0]
            }
    authors = (source or {}).get("Authors")
    return {
        "Name": "bids-connectome derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        **({"Authors": list(authors)} if isinstance(authors, list) and authors else {}),
        "GeneratedBy": [{"Name": "bids-connectome", "Version": __version__, "CodeURL": CODE_URL}],
        "SourceDatasets": [described],
        "DatasetLinks": {INPUT_DATASET: input_link},
    }


def configuration_record(
    configuration: Mapping[str, Any], config_hash: str, files: Mapping[str, str]
) -> dict[str, Any]:
    """``code/bids-connectome/desc-<D>_config.json``: what made the ``desc-<D>`` outputs
    (the configuration with file contents as digests, and the files by path)."""
    return {
        "ConfigurationHash": config_hash,
        "Configuration": dict(configuration),
        "Files": dict(files),
        "Software": SOFTWARE,
    }


def qc_sidecar(
    *,
    n_volumes: int,
    n_kept: int,
    provenance: Mapping[str, Any],
    t_r: float,
    excluded: str | None,
    sources: list[str],
    config_hash: str,
) -> dict[str, Any]:
    """``<source>_desc-<D>_qc.json``: what denoising kept of the run, and whether it is used."""
    return {
        "VolumesTotal": int(n_volumes),
        "VolumesKept": int(n_kept),
        "NonSteadyStateVolumes": list(provenance.get("NonSteadyStateVolumes", [])),
        "ScrubbedVolumes": list(provenance.get("ScrubbedVolumes", [])),
        "VolumesCensored": len(provenance.get("ScrubbedVolumes", [])),
        "MeanFramewiseDisplacement": provenance.get("MeanFramewiseDisplacement"),
        "RepetitionTime": t_r,
        "ConfoundRegressors": list(provenance.get("ConfoundRegressors", [])),
        "Excluded": excluded is not None,
        "ExclusionReason": excluded,
        "Sources": sources,
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


def timeseries_sidecar(
    *,
    atlas: str,
    kind: str,
    regions: list[str],
    missing: list[str],
    t_r: float,
    sources: list[str],
    coverage_file: str,
    denoise: Mapping[str, Any],
    sample_mask: list[int],
    provenance: Mapping[str, Any],
    config_hash: str,
) -> dict[str, Any]:
    """``..._timeseries.json``: sampling, regions, and how the signals were denoised."""
    return {
        "Atlas": atlas,
        "AtlasKind": kind,
        "NodeFile": build_name({"atlas": atlas}, "dseg", ".tsv"),
        "SamplingFrequency": 1.0 / t_r,
        "RepetitionTime": t_r,
        "Columns": list(regions),
        "MissingRegions": list(missing),
        "Sources": sources,
        "CoverageFile": coverage_file,
        "Denoise": dict(denoise),
        "SampleMask": list(sample_mask),
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
        **provenance,
    }


def relmat_sidecar(
    *,
    measure: str,
    estimator: str,
    atlas: str,
    sources: list[str],
    volumes: int,
    config_hash: str,
    aggregate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``..._relmat.json`` (BEP017): what the matrix is and which time series it comes from."""
    return {
        "RelationshipMeasure": measure,
        "MeasureDescription": MEASURE_DESCRIPTIONS[measure],
        "CovarianceEstimator": ESTIMATOR_NAMES[estimator],
        "Directed": False,
        "Weighted": True,
        "ValidDiagonal": measure in ("covariance", "precision"),
        "StorageFormat": "Full",
        "NodeFiles": [build_name({"atlas": atlas}, "dseg", ".tsv")],
        "Atlas": atlas,
        "Sources": sources,
        "VolumesUsed": int(volumes),
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
        **(dict(aggregate) if aggregate else {}),
    }


# --- group-level sidecar schemas --------------------------------------------------------------

QC_COLUMNS = {
    "participant_id": "Participant label, with the sub- prefix",
    "session_id": "Session label, with the ses- prefix (n/a without sessions)",
    "run": "Run label (n/a without runs)",
    "volumes_total": "Volumes in the BOLD series",
    "non_steady_state_volumes": "Non-steady-state volumes removed at the start",
    "volumes_censored": "Volumes censored by scrubbing (high motion)",
    "volumes_kept": "Volumes used after removal and censoring",
    "mean_fd": "Mean framewise displacement of the run (mm)",
    "excluded": "true when the run was excluded from connectivity",
    "exclusion_reason": "Why the run was excluded (n/a when it was not)",
    "source": "The participant-level QC file, relative to OUTPUT_DIR",
}
QCFC_COLUMNS = {
    "region1": "First region of the edge (row of the matrix)",
    "region2": "Second region of the edge (column of the matrix)",
    "distance": "Euclidean distance between the region centres (mm; n/a if unknown)",
    "qcfc": "Correlation across participants between mean FD and the edge value",
    "p": "Two-sided p-value of qcfc (t distribution, n - 2 degrees of freedom)",
    "n": "Participants with a value for this edge",
}
QCFC_SUMMARY = {
    "MedianAbsQCFC": "Median of |qcfc| over edges (lower is better)",
    "PercentEdgesSignificant": "Percentage of edges with p < Alpha (uncorrected)",
    "PercentEdgesSignificantFDR": "Percentage of edges significant after Benjamini-Hochberg "
    "FDR at Alpha",
    "DistanceDependence": "Spearman correlation between qcfc and distance (null when "
    "coordinates are unknown; closer to 0 is better)",
    "DistanceDependenceAbs": "Spearman correlation between |qcfc| and distance",
}


def qc_table_sidecar(config_hash: str) -> dict[str, Any]:
    return {
        "Description": "Denoising QC, one row per run (from the participant-level *_qc.json files)",
        **{k: {"Description": v} for k, v in QC_COLUMNS.items()},
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


def stack_sidecar(
    *,
    description: str,
    data_file: str,
    index_file: str,
    shape: list[int],
    regions: list[str],
    atlas: str,
    config_hash: str,
) -> dict[str, Any]:
    return {
        "Description": description,
        "DataFile": data_file,
        "IndexFile": index_file,
        "Shape": shape,
        "DataType": "float64",
        "Axes": [
            "matrix: row i of the index table (same order)",
            "region (row of each matrix, in the order of Regions)",
            "region (column of each matrix, in the order of Regions)",
        ],
        "MissingValue": "NaN (regions n/a in a run)",
        "Regions": list(regions),
        "NodeFiles": [build_name({"atlas": atlas}, "dseg", ".tsv")],
        "Load": "numpy.load(DataFile); pandas.read_csv(IndexFile, sep='\\t', na_values='n/a')",
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


def group_relmat_sidecar(
    *,
    measure: str,
    estimator: str | None,
    correlation_like: bool,
    participants: list[str],
    n_matrices: int,
    regions_missing: dict[str, int],
    stack_file: str,
    atlas: str,
    sources: list[str],
    config_hash: str,
) -> dict[str, Any]:
    return {
        "RelationshipMeasure": measure,
        "CovarianceEstimator": estimator,
        "Directed": False,
        "Weighted": True,
        "ValidDiagonal": not correlation_like,
        "StorageFormat": "Full",
        "GroupAverage": (
            "Fisher z: tanh of the mean of arctanh, per participant then across participants"
            if correlation_like
            else "arithmetic mean, per participant then across participants"
        ),
        "NumberOfParticipants": len(participants),
        "NumberOfMatrices": n_matrices,
        "Participants": participants,
        "RegionsMissing": regions_missing,
        "StackFile": stack_file,
        "NodeFiles": [build_name({"atlas": atlas}, "dseg", ".tsv")],
        "Sources": sources,
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


def tangent_sidecar(
    *,
    estimator: str,
    aggregate: str,
    participants: list[str],
    n_matrices: int,
    regions_left_out: list[str],
    stack_file: str,
    atlas: str,
    sources: list[str],
    config_hash: str,
) -> dict[str, Any]:
    return {
        "RelationshipMeasure": "tangent",
        "MeasureDescription": (
            "Group geometric mean of the covariances (the reference point of the tangent "
            "space; max_iter 30, tol 1e-7). The per-unit tangent matrices are in StackFile."
        ),
        "CovarianceEstimator": ESTIMATOR_NAMES[estimator],
        "Directed": False,
        "Weighted": True,
        "ValidDiagonal": True,
        "StorageFormat": "Full",
        "Aggregate": aggregate,
        "NumberOfParticipants": len(participants),
        "NumberOfMatrices": n_matrices,
        "Participants": participants,
        "RegionsLeftOut": regions_left_out,
        "StackFile": stack_file,
        "NodeFiles": [build_name({"atlas": atlas}, "dseg", ".tsv")],
        "Sources": sources,
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


def qcfc_sidecar(
    *, measure: str, participants: list[str], summary: dict[str, Any], config_hash: str
) -> dict[str, Any]:
    return {
        "Description": (
            "QC-FC: for each edge, the Pearson correlation across participants between mean "
            "framewise displacement and connectivity (Ciric et al. 2017; Parkes et al. 2018). "
            "Each participant counts once: their matrices are averaged (Fisher z for "
            "correlations) and their runs' mean FD averaged."
        ),
        "RelationshipMeasure": measure,
        "Participants": participants,
        "Columns": QCFC_COLUMNS,
        "Summary": summary,
        "SummaryDescription": QCFC_SUMMARY,
        "ConfigurationHash": config_hash,
        "Software": SOFTWARE,
    }


# --- atlas sidecars ----------------------------------------------------------------------------

UNKNOWN_LICENSE = "unknown: not stated by the atlas source (set metadata: {License: ...})"


def description_sidecar(resolved: Any, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``atlas-<A>_description.json`` (BIDS 1.11, "Atlas identification and metadata").

    ``AtlasName`` and ``License`` (REQUIRED), what the source says (``Description``,
    ``Authors``, ``ReferencesAndLinks``, ``Species``, ``AtlasSampleSize``...), the
    ``SpatialReference`` and ``Template`` when known, and ``Source``: the TemplateFlow
    query, the dataset or the file, with digests. ``metadata`` (the entry's
    ``metadata:``) adds or replaces fields.
    """
    prov = dict(resolved.provenance)
    out: dict[str, Any] = {"AtlasName": prov.pop("AtlasName", resolved.name)}
    out["License"] = prov.pop("License", UNKNOWN_LICENSE)
    source = prov.pop("Source", None)
    out.update(prov)
    out.update(dict(metadata or {}))
    if source is not None:
        out["Source"] = source
    return out


_CENTRE = {
    "labels": "centroid (mean voxel position) of the label's voxels in the atlas image",
    "maps": "centre of mass of the absolute map weights",
    "regions": "centre of mass of the absolute weights of the extracted region",
    "spheres": "the sphere's seed, from the coordinates table",
}
_INDEX = {
    "labels": "Label value of the region in the atlas image",
    "maps": "Volume of the region in the 4D maps image (1 = the first volume)",
    "regions": "Region number (1 = the first volume of the written probseg image)",
    "spheres": "Index of the seed in the coordinates table",
}
_OTHER_COLUMNS = {
    "radius": {"Description": "Sphere radius (n/a: the seed voxel only)", "Units": "mm"},
    "parent_map": {
        "Description": "Volume of the statistical map the region was extracted from (1 = the first)"
    },
    "network": {"Description": "Network the seed belongs to, from the coordinates table"},
    "color": {"Description": "Display colour of the region, from the atlas source"},
}


def lut_sidecar(
    kind: str,
    columns: Iterable[str],
    template: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``atlas-<A>_dseg.json``: every column of ``atlas-<A>_dseg.tsv`` described.

    ``columns`` are the lookup table's (``AtlasSource.lut.columns``); a column we do not
    know is described as coming from the atlas's table. ``metadata`` (for instance
    ``AtlasName`` and ``SpatialReference`` of :func:`description_sidecar`) comes first.
    """
    space = f"in {template} world coordinates" if template else "in the atlas's world coordinates"
    out: dict[str, Any] = dict(metadata or {})
    for col in columns:
        if col == "index":
            out[col] = {
                "LongName": "Region index",
                "Description": _INDEX.get(kind, "Region index"),
                "Format": "integer",
            }
        elif col == "name":
            out[col] = {
                "LongName": "Region name",
                "Description": "Name of the region: the column of the time series and the "
                "row/column of the connectivity matrices",
            }
        elif col in ("x", "y", "z"):
            out[col] = {
                "LongName": f"{col} coordinate of the region centre",
                "Description": f"{col} (mm, {space}) of the {_CENTRE.get(kind, 'region centre')}",
                "Units": "mm",
            }
        elif col in _OTHER_COLUMNS:
            out[col] = dict(_OTHER_COLUMNS[col])
        else:
            out[col] = {"Description": f"Column {col} of the atlas's lookup table"}
    return out


def lut_header(atlas: str, kind: str, reference: str | None) -> dict[str, Any]:
    """The top of ``atlas-<A>_dseg.json``: what the table is, and its template."""
    return {
        "Description": f"Regions of atlas {atlas} ({kind}): index, name and centre (world mm) "
        "of each, in the column order of every output",
        **({"SpatialReference": reference} if reference else {}),
    }


def region_maps_sidecar(atlas: str, reference: str | None) -> dict[str, Any]:
    """``space-<S>_atlas-<A>_probseg.json``: the regions we extracted from a statistical map."""
    lut = build_name({"atlas": atlas}, "dseg", ".tsv")
    return {
        "Description": f"Regions of atlas {atlas}, one map per region, in the order of {lut}",
        **({"SpatialReference": reference} if reference else {}),
        "Sources": [bids_uri(lut)],
    }

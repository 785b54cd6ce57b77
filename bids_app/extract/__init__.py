"""Region signal extraction: labels, probabilistic maps, spheres and regions from
statistical maps, all atlases of a config in one streaming pass over each BOLD run.

Usage (what ``participant`` does)::

    sources = [load_atlas(cfg) for cfg in config.atlases]      # once, atlas space
    shape, affine, zooms = read_header(bold)                    # no data read
    ops = prepare(sources, shape[:3], affine, brain_mask)       # once per grid
    run = extract_run(bold, ops, smoothing_fwhm=None)           # one pass over the file
    run.signals["Schaefer400"]                                  # (T, regions) float64
    run.coverage["Schaefer400"]                                 # per-region coverage table
"""

from .atlas import AtlasSource, load_atlas, read_coordinates, read_label_table
from .operators import AtlasOperator, Operators, prepare
from .regions import connected_regions, threshold_maps
from .run import RunSignals, extract_run
from .stream import VolumeReader, read_header

__all__ = [
    "AtlasOperator",
    "AtlasSource",
    "Operators",
    "RunSignals",
    "VolumeReader",
    "connected_regions",
    "extract_run",
    "load_atlas",
    "prepare",
    "read_coordinates",
    "read_header",
    "read_label_table",
    "threshold_maps",
]

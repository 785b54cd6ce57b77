"""Region signal extraction: labels, probabilistic maps, spheres and regions from
statistical maps, all atlases of a config in one streaming pass over each BOLD run.

Usage (what ``participant`` does)::

    sources = [load_atlas(cfg) for cfg in config.atlases]      # once, atlas space
    sources[0].digest                                           # content digest (SHA-256 hex)
    shape, affine, zooms = read_header(bold)                    # no data read
    ops = prepare(sources, shape[:3], affine, brain_mask,       # per run (brain mask)
                  cache_dir=cache_dir)                          # optional on-disk cache
    run = extract_run(bold, ops, smoothing_fwhm=None)           # one pass over the file
    run.signals["Schaefer400"]                                  # (T, regions) float64
    run.coverage["Schaefer400"]                                 # per-region coverage table

``prepare`` is ``apply_mask(prepare_grid(sources, shape, affine, cache_dir), mask)``:
the grid-level part (resampled atlases; expensive, cacheable) can be kept and
reused for every run on the same grid, the mask-level part is cheap::

    grid = prepare_grid(sources, shape[:3], affine, cache_dir=cache_dir)  # once per grid
    ops = apply_mask(grid, brain_mask)                                    # once per run
"""

from .atlas import AtlasSource, load_atlas, read_coordinates, read_label_table
from .operators import (
    AtlasOperator,
    GridOperators,
    Operators,
    apply_mask,
    prepare,
    prepare_grid,
)
from .regions import connected_regions, threshold_maps
from .run import RunSignals, extract_run
from .stream import VolumeReader, read_header

__all__ = [
    "AtlasOperator",
    "AtlasSource",
    "GridOperators",
    "Operators",
    "RunSignals",
    "VolumeReader",
    "apply_mask",
    "connected_regions",
    "extract_run",
    "load_atlas",
    "prepare",
    "prepare_grid",
    "read_coordinates",
    "read_header",
    "read_label_table",
    "threshold_maps",
]

"""The words of the configuration contract, defined once (config, extraction, connectivity,
naming and the group level all read them from here)."""

from __future__ import annotations

# Region kinds of an atlas entry (``atlases[].kind``).
ATLAS_KINDS = ("labels", "maps", "spheres", "regions")

# Coordinate sets shipped in ``bids_app/data/coords/`` (``kind: spheres, coordinates: <name>``).
BUILTIN_COORDINATES = ("power2011", "dosenbach2010", "seitzman2018")

# Connectivity measures (``connectivity.measures``); tangent needs every participant: group level.
PARTICIPANT_MEASURES = ("correlation", "partialcorrelation", "covariance", "precision")
GROUP_MEASURES = ("tangent",)
MEASURES = PARTICIPANT_MEASURES + GROUP_MEASURES
CORRELATION_LIKE = ("correlation", "partialcorrelation")
INVERSE_MEASURES = ("partialcorrelation", "precision")  # need the covariance inverted
MEASURE_DESCRIPTIONS = {
    "correlation": "Pearson correlation of the cleaned region signals",
    "partialcorrelation": "Partial correlation (from the inverse covariance)",
    "covariance": "Covariance",
    "precision": "Precision (inverse covariance)",
    "tangent": "Tangent-space embedding around the group geometric mean (Varoquaux et al. 2010)",
}

# Covariance estimators (``connectivity.estimator``), with what sidecars call them.
ESTIMATORS = ("ledoit_wolf", "empirical", "graphical_lasso")
ESTIMATOR_NAMES = {
    "ledoit_wolf": "LedoitWolf (scikit-learn)",
    "empirical": "EmpiricalCovariance (scikit-learn)",
    "graphical_lasso": "GraphicalLassoCV (scikit-learn)",
}

# Denoising strategies (``denoise.strategy``): nilearn's presets, plus "none".
STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma", "none")

# Run-to-connectome aggregation (``connectivity.aggregate``).
AGGREGATES = ("run", "session", "subject")


def normalize_measure(measure: str) -> str:
    """``"partial correlation"`` / ``"partial_correlation"`` -> ``"partialcorrelation"``."""
    return str(measure).replace(" ", "").replace("_", "").lower()


# Surface spaces of fMRIPrep outputs: fsLR runs are CIFTI-2 dense time series
# (``*_space-fsLR_den-91k_bold.dtseries.nii``), fsaverage / fsnative runs pairs of GIFTI
# hemisphere files (``*_hemi-L_space-fsaverage5_bold.func.gii`` + ``hemi-R``).
CIFTI_SPACES = ("fsLR",)


def grid_of_space(space: str) -> str:
    """``"cifti"``, ``"gifti"`` or ``"volume"``: what kind of runs a BOLD space has."""
    if space in CIFTI_SPACES:
        return "cifti"
    if space.startswith("fsaverage") or space == "fsnative":
        return "gifti"
    return "volume"

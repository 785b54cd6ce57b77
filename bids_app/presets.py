"""nilearn 0.14.1's confound strategy presets (``load_confounds_strategy``) and the
overrides a configuration may set on top of them.

Kept apart from :mod:`bids_app.confounds` so the configuration loader can check
overrides without importing the confound reader (and vice versa).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import DenoiseConfig

# nilearn 0.14.1 presets (load_confounds_strategy); "none" is ours: no regressor
# (unless global_signal or custom columns are asked for), non-steady-state
# volumes still removed.
PRESETS: dict[str, dict[str, Any]] = {
    "simple": {
        "strategy": ("high_pass", "motion", "wm_csf"),
        "motion": "full",
        "wm_csf": "basic",
        "demean": True,
    },
    "scrubbing": {
        "strategy": ("high_pass", "motion", "wm_csf", "scrub"),
        "motion": "full",
        "wm_csf": "full",
        "scrub": 5,
        "fd_threshold": 0.5,
        "std_dvars_threshold": 1.5,
        "demean": True,
    },
    "compcor": {
        "strategy": ("high_pass", "motion", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": "all",
        "demean": True,
    },
    "ica_aroma": {
        "strategy": ("high_pass", "wm_csf", "ica_aroma"),
        "wm_csf": "basic",
        "ica_aroma": "full",
        "demean": True,
    },
    "none": {"strategy": (), "demean": True},
}
OVERRIDES = (
    "motion",
    "wm_csf",
    "global_signal",
    "scrub",
    "fd_threshold",
    "std_dvars_threshold",
    "compcor",
    "n_compcor",
    "ica_aroma",
    "demean",
)


def unused_overrides(denoise: DenoiseConfig) -> list[str]:
    """Overrides set in ``denoise`` that its strategy does not use (``global_signal`` fits all)."""
    preset = PRESETS[denoise.strategy]
    return [
        key
        for key in OVERRIDES
        if getattr(denoise, key, None) is not None and key != "global_signal" and key not in preset
    ]


def effective_parameters(denoise: DenoiseConfig) -> dict[str, Any]:
    """The ``load_confounds`` parameters of a config: preset values updated by the overrides.

    An override that the preset does not use is ignored, as nilearn's
    ``load_confounds_strategy`` does (the configuration loader warns about it).
    ``global_signal`` may be set for any preset and adds the global signal
    component. For ``ica_aroma`` the ``ica_aroma`` override is honoured
    (``load_confounds`` meaning; ``load_confounds_strategy`` ignores it).
    """
    unused = set(unused_overrides(denoise))
    params = dict(PRESETS[denoise.strategy])
    params["strategy"] = tuple(params["strategy"])
    for key in OVERRIDES:
        value = getattr(denoise, key, None)
        if value is None or key in unused:
            continue
        if key == "global_signal":
            params["strategy"] += ("global_signal",)
        params[key] = value
    return params


__all__ = ["PRESETS", "OVERRIDES", "effective_parameters", "unused_overrides"]

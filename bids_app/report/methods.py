"""A methods paragraph generated from a configuration, with the references it cites.

The text depends only on the configuration recorded by the participant level
(``code/bids-connectome/desc-<D>_config.json``), the atlases' region names and the
software versions, so every participant's report of one ``desc`` carries the same text,
also written to ``OUTPUT_DIR/logs/desc-<D>_methods.md``.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

REFERENCES: dict[str, tuple[str, str]] = {
    # key: (in-text citation, full reference)
    "fmriprep": (
        "Esteban et al. 2019",
        "Esteban O, Markiewicz CJ, Blair RW, et al. fMRIPrep: a robust preprocessing pipeline "
        "for functional MRI. Nature Methods 16:111-116, 2019. doi:10.1038/s41592-018-0235-4",
    ),
    "nilearn": (
        "Abraham et al. 2014",
        "Abraham A, Pedregosa F, Eickenberg M, et al. Machine learning for neuroimaging with "
        "scikit-learn. Frontiers in Neuroinformatics 8:14, 2014. doi:10.3389/fninf.2014.00014",
    ),
    "wang2024": (
        "Wang et al. 2024",
        "Wang HT, Meisler SL, Sharmarke H, et al. Continuous evaluation of denoising strategies "
        "in resting-state fMRI connectivity using fMRIPrep and Nilearn. PLOS Computational "
        "Biology 20(3):e1011942, 2024. doi:10.1371/journal.pcbi.1011942",
    ),
    "ciric2017": (
        "Ciric et al. 2017",
        "Ciric R, Wolf DH, Power JD, et al. Benchmarking of participant-level confound "
        "regression strategies for the control of motion artifact in studies of functional "
        "connectivity. NeuroImage 154:174-187, 2017. doi:10.1016/j.neuroimage.2017.03.020",
    ),
    "parkes2018": (
        "Parkes et al. 2018",
        "Parkes L, Fulcher B, Yücel M, Fornito A. An evaluation of the efficacy, reliability, "
        "and sensitivity of motion correction strategies for resting-state functional MRI. "
        "NeuroImage 171:415-436, 2018. doi:10.1016/j.neuroimage.2017.12.073",
    ),
    "friston1996": (
        "Friston et al. 1996",
        "Friston KJ, Williams S, Howard R, Frackowiak RS, Turner R. Movement-related effects in "
        "fMRI time-series. Magnetic Resonance in Medicine 35(3):346-355, 1996. "
        "doi:10.1002/mrm.1910350312",
    ),
    "satterthwaite2013": (
        "Satterthwaite et al. 2013",
        "Satterthwaite TD, Elliott MA, Gerraty RT, et al. An improved framework for confound "
        "regression and filtering for control of motion artifact in the preprocessing of "
        "resting-state functional connectivity data. NeuroImage 64:240-256, 2013. "
        "doi:10.1016/j.neuroimage.2012.08.052",
    ),
    "power2014": (
        "Power et al. 2014",
        "Power JD, Mitra A, Laumann TO, et al. Methods to detect, characterize, and remove "
        "motion artifact in resting state fMRI. NeuroImage 84:320-341, 2014. "
        "doi:10.1016/j.neuroimage.2013.08.048",
    ),
    "behzadi2007": (
        "Behzadi et al. 2007",
        "Behzadi Y, Restom K, Liau J, Liu TT. A component based noise correction method "
        "(CompCor) for BOLD and perfusion based fMRI. NeuroImage 37(1):90-101, 2007. "
        "doi:10.1016/j.neuroimage.2007.04.042",
    ),
    "pruim2015": (
        "Pruim et al. 2015",
        "Pruim RHR, Mennes M, van Rooij D, et al. ICA-AROMA: a robust ICA-based strategy for "
        "removing motion artifacts from fMRI data. NeuroImage 112:267-277, 2015. "
        "doi:10.1016/j.neuroimage.2015.02.064",
    ),
    "ledoitwolf2004": (
        "Ledoit and Wolf 2004",
        "Ledoit O, Wolf M. A well-conditioned estimator for large-dimensional covariance "
        "matrices. Journal of Multivariate Analysis 88(2):365-411, 2004. "
        "doi:10.1016/S0047-259X(03)00096-4",
    ),
    "friedman2008": (
        "Friedman et al. 2008",
        "Friedman J, Hastie T, Tibshirani R. Sparse inverse covariance estimation with the "
        "graphical lasso. Biostatistics 9(3):432-441, 2008. doi:10.1093/biostatistics/kxm045",
    ),
    "varoquaux2010": (
        "Varoquaux et al. 2010",
        "Varoquaux G, Baronnet F, Kleinschmidt A, Fillard P, Thirion B. Detection of brain "
        "functional-connectivity difference in post-stroke patients using group-level "
        "covariance modeling. MICCAI 2010, LNCS 6361:200-208. doi:10.1007/978-3-642-15705-9_25",
    ),
    "sklearn": (
        "Pedregosa et al. 2011",
        "Pedregosa F, Varoquaux G, Gramfort A, et al. Scikit-learn: machine learning in Python. "
        "Journal of Machine Learning Research 12:2825-2830, 2011.",
    ),
    "schaefer2018": (
        "Schaefer et al. 2018",
        "Schaefer A, Kong R, Gordon EM, et al. Local-global parcellation of the human cerebral "
        "cortex from intrinsic functional connectivity MRI. Cerebral Cortex 28(9):3095-3114, "
        "2018. doi:10.1093/cercor/bhx179",
    ),
    "yeo2011": (
        "Yeo et al. 2011",
        "Yeo BTT, Krienen FM, Sepulcre J, et al. The organization of the human cerebral cortex "
        "estimated by intrinsic functional connectivity. Journal of Neurophysiology "
        "106(3):1125-1165, 2011. doi:10.1152/jn.00338.2011",
    ),
    "power2011": (
        "Power et al. 2011",
        "Power JD, Cohen AL, Nelson SM, et al. Functional network organization of the human "
        "brain. Neuron 72(4):665-678, 2011. doi:10.1016/j.neuron.2011.09.006",
    ),
    "dosenbach2010": (
        "Dosenbach et al. 2010",
        "Dosenbach NUF, Nardos B, Cohen AL, et al. Prediction of individual brain maturity "
        "using fMRI. Science 329(5997):1358-1361, 2010. doi:10.1126/science.1194144",
    ),
    "seitzman2020": (
        "Seitzman et al. 2020",
        "Seitzman BA, Gratton C, Marek S, et al. A set of functionally-defined brain regions "
        "with improved representation of the subcortex and cerebellum. NeuroImage 206:116290, "
        "2020. doi:10.1016/j.neuroimage.2019.116290",
    ),
    "aal": (
        "Tzourio-Mazoyer et al. 2002",
        "Tzourio-Mazoyer N, Landeau B, Papathanassiou D, et al. Automated anatomical labeling "
        "of activations in SPM using a macroscopic anatomical parcellation of the MNI MRI "
        "single-subject brain. NeuroImage 15(1):273-289, 2002. doi:10.1006/nimg.2001.0978",
    ),
    "desikan2006": (
        "Desikan et al. 2006",
        "Desikan RS, Ségonne F, Fischl B, et al. An automated labeling system for subdividing "
        "the human cerebral cortex on MRI scans into gyral based regions of interest. "
        "NeuroImage 31(3):968-980, 2006. doi:10.1016/j.neuroimage.2006.01.021",
    ),
    "makris2006": (
        "Makris et al. 2006",
        "Makris N, Goldstein JM, Kennedy D, et al. Decreased volume of left and total anterior "
        "insular lobule in schizophrenia. Schizophrenia Research 83(2-3):155-171, 2006. "
        "doi:10.1016/j.schres.2005.11.020",
    ),
    "frazier2005": (
        "Frazier et al. 2005",
        "Frazier JA, Chiu S, Breeze JL, et al. Structural brain magnetic resonance imaging of "
        "limbic and thalamic volumes in pediatric bipolar disorder. American Journal of "
        "Psychiatry 162(7):1256-1265, 2005. doi:10.1176/appi.ajp.162.7.1256",
    ),
    "goldstein2007": (
        "Goldstein et al. 2007",
        "Goldstein JM, Seidman LJ, Makris N, et al. Hypothalamic abnormalities in "
        "schizophrenia: sex effects and genetic vulnerability. Biological Psychiatry "
        "61(8):935-945, 2007. doi:10.1016/j.biopsych.2006.06.027",
    ),
    "difumo": (
        "Dadi et al. 2020",
        "Dadi K, Varoquaux G, Machlouzarides-Shalit A, et al. Fine-grain atlases of functional "
        "modes for fMRI analysis. NeuroImage 221:117126, 2020. "
        "doi:10.1016/j.neuroimage.2020.117126",
    ),
    "msdl": (
        "Varoquaux et al. 2011",
        "Varoquaux G, Gramfort A, Pedregosa F, Michel V, Thirion B. Multi-subject dictionary "
        "learning to segment an atlas of brain spontaneous activity. IPMI 2011, LNCS "
        "6801:562-573. doi:10.1007/978-3-642-22092-0_46",
    ),
}

# Atlas recognition: (pattern on the atlas name, or the built-in coordinates) -> references
_ATLASES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"schaefer", re.I), ("schaefer2018", "yeo2011")),
    (re.compile(r"^yeo", re.I), ("yeo2011",)),
    (re.compile(r"power", re.I), ("power2011",)),
    (re.compile(r"dosenbach", re.I), ("dosenbach2010",)),
    (re.compile(r"seitzman", re.I), ("seitzman2020",)),
    (
        re.compile(r"harvard|^ho(cort|sub)?$", re.I),
        ("makris2006", "frazier2005", "desikan2006", "goldstein2007"),
    ),
    (re.compile(r"^aal", re.I), ("aal",)),
    (re.compile(r"desikan|aparc", re.I), ("desikan2006",)),
    (re.compile(r"difumo", re.I), ("difumo",)),
    (re.compile(r"msdl", re.I), ("msdl",)),
)
_BUILTIN = {
    "power2011": "power2011",
    "dosenbach2010": "dosenbach2010",
    "seitzman2018": "seitzman2020",
}
_SCHAEFER_NAMES = re.compile(r"^\d+Networks_(LH|RH)_")

LIBRARIES = ("numpy", "scipy", "scikit-learn", "nibabel", "pandas", "nilearn", "matplotlib")


def software_versions() -> dict[str, str]:
    """Python and the libraries the numbers and figures depend on (installed versions)."""
    out = {"Python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def _applicable_atlases(
    configuration: Mapping[str, Any], files: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The configured atlases used for runs of the configured space (a volume atlas is
    skipped for surface runs, and the reverse) and the kind of grid of those runs.

    ``files`` (path -> digest, as recorded) gives back the file names of atlases recorded
    by digest: the kind of grid of an atlas follows from its file name.
    """
    from ..config import Config

    atlases = list(configuration.get("atlases") or [])
    paths = {digest: path for path, digest in (files or {}).items()}
    named = [
        {k: paths.get(v, v) if isinstance(v, str) else v for k, v in a.items()} for a in atlases
    ]
    try:
        config = Config.model_validate({**configuration, "atlases": named})
    except ValueError:  # recorded by another version: every atlas
        return atlases, "volume"
    used = {a.name for a in config.applicable_atlases}
    return [a for a in atlases if a.get("name") in used], config.grid


def atlas_references(
    name: str, coordinates: str | None = None, region_names: Sequence[str] = ()
) -> list[str]:
    """Reference keys of a known atlas (by name, built-in coordinates or Schaefer names)."""
    keys: list[str] = []
    if coordinates in _BUILTIN:
        keys.append(_BUILTIN[coordinates])
    for pattern, refs in _ATLASES:
        if pattern.search(name):
            keys += [r for r in refs if r not in keys]
    if (
        not keys
        and region_names
        and sum(bool(_SCHAEFER_NAMES.match(str(n))) for n in region_names) * 2 > len(region_names)
    ):
        keys += ["schaefer2018", "yeo2011"]
    return keys


@dataclass
class Methods:
    """Paragraphs with ``{cite:key1,key2}`` markers, rendered as text by :meth:`markdown`."""

    paragraphs: list[str] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)

    def cite(self, *keys: str) -> str:
        for k in keys:
            if k not in self.cited:
                self.cited.append(k)
        return "(" + "; ".join(REFERENCES[k][0] for k in keys) + ")"

    def references(self) -> list[str]:
        """Full references of everything cited, alphabetically."""
        return sorted(REFERENCES[k][1] for k in self.cited)

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", ""]
        for p in self.paragraphs:
            lines += [p, ""]
        lines += ["## References", ""]
        lines += [f"{i}. {ref}" for i, ref in enumerate(self.references(), 1)]
        return "\n".join(lines) + "\n"


def _model(value: str | None, base: str, n_base: int, cite: str = "") -> str:
    counts = {"basic": 1, "derivatives": 2, "power2": 2, "full": 4}
    what = {
        "basic": f"{base}",
        "derivatives": f"{base} and their temporal derivatives",
        "power2": f"{base} and their squares",
        "full": f"{base}, their temporal derivatives and the squares of both",
    }
    value = value or "basic"
    n = n_base * counts[value]
    return f"{what[value]} ({n} regressor{'s' if n > 1 else ''}{'; ' + cite if cite else ''})"


def _join(items: Sequence[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_methods(
    configuration: Mapping[str, Any],
    software: str,
    versions: Mapping[str, str],
    region_names: Mapping[str, Sequence[str]] | None = None,
    files: Mapping[str, str] | None = None,
) -> Methods:
    """The methods of one ``desc``.

    Parameters
    ----------
    configuration
        The configuration as recorded (``Configuration`` of ``desc-<D>_config.json``) or
        ``Config.model_dump(mode="json")``.
    software
        ``bids-connectome <version>`` as recorded.
    versions
        :func:`software_versions`.
    region_names
        Region names per atlas (to recognise Schaefer parcellations by their names).
    files
        The recorded ``Files`` (path -> digest) of a configuration whose atlas files are
        recorded by digest.
    """
    from ..config import DenoiseConfig
    from ..presets import effective_parameters

    m = Methods()
    den = DenoiseConfig.model_validate(configuration.get("denoise") or {})
    params = effective_parameters(den)
    comps = list(params["strategy"])
    space = configuration.get("space", "MNI152NLin2009cAsym")
    res = configuration.get("res")
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("nilearn", "matplotlib"))
    m.paragraphs.append(
        f"Region signals and functional connectivity were computed with {software} ({libs}) "
        f"from the BOLD runs preprocessed by fMRIPrep {m.cite('fmriprep')} in the "
        f"{space} space{f' (resolution {res})' if res else ''}, denoising label `{den.name}`."
    )
    # confounds
    parts = []
    if "high_pass" in comps:
        parts.append(
            "the discrete cosine basis regressors computed by fMRIPrep (`cosineNN`; "
            "high-pass filtering)"
        )
    if "motion" in comps:
        full = params.get("motion") == "full"
        cite = m.cite("friston1996", "satterthwaite2013")[1:-1] if full else ""
        parts.append(_model(params.get("motion"), "the six rigid-body motion parameters", 6, cite))
    if "wm_csf" in comps:
        parts.append(_model(params.get("wm_csf"), "the mean white-matter and CSF signals", 2))
    if "global_signal" in comps:
        parts.append(_model(params.get("global_signal"), "the global signal", 1))
    if "compcor" in comps:
        kind = str(params.get("compcor"))
        n = params.get("n_compcor")
        count = "all" if n == "all" else f"the first {n}"
        source = {
            "anat_combined": "anatomical CompCor components of the combined white-matter and "
            "CSF mask",
            "anat_separated": "anatomical CompCor components of the white-matter and CSF masks "
            "(separately)",
            "temporal": "temporal CompCor components",
            "temporal_anat_combined": "temporal and anatomical (combined mask) CompCor components",
            "temporal_anat_separated": "temporal and anatomical (separate masks) CompCor "
            "components",
        }.get(kind, f"CompCor components ({kind})")
        parts.append(f"{count} {source} listed by fMRIPrep {m.cite('behzadi2007')}")
    if "ica_aroma" in comps and params.get("ica_aroma") == "basic":
        parts.append(f"the ICA-AROMA noise components (`aroma_motion_*`) {m.cite('pruim2015')}")
    if den.confounds:
        parts.append("the additional columns " + ", ".join(f"`{c}`" for c in den.confounds))
    strategy = den.strategy
    if parts:
        text = (
            f"Confound regressors were selected from fMRIPrep's confounds table with the "
            f"`{strategy}` strategy of nilearn's `load_confounds_strategy` "
            f"{m.cite('nilearn', 'wang2024')}: {_join(parts)}"
            f"{', demeaned over the kept volumes' if params.get('demean', True) else ''}."
        )
    else:
        text = (
            f"No confound was regressed (strategy `{strategy}`, as nilearn's "
            f"`load_confounds_strategy` {m.cite('nilearn', 'wang2024')})."
        )
    if "ica_aroma" in comps and params.get("ica_aroma") != "basic":
        text += (
            " The BOLD series denoised non-aggressively with ICA-AROMA by fMRIPrep "
            f"(`desc-smoothAROMAnonaggr`) were used {m.cite('pruim2015')}."
        )
    text += " Non-steady-state volumes flagged by fMRIPrep were removed."
    if "scrub" in comps:
        scrub = int(params.get("scrub") or 0)
        text += (
            f" Volumes with a framewise displacement above {_num(params.get('fd_threshold'))} mm "
            f"or a standardized DVARS above {_num(params.get('std_dvars_threshold'))} were "
            f"censored {m.cite('power2014')}"
            + (
                f", together with any segment of fewer than {scrub} contiguous kept volumes."
                if scrub
                else "."
            )
        )
    m.paragraphs.append(text)
    # atlases
    atlases, grid = _applicable_atlases(configuration, files)
    unit = "voxels" if grid == "volume" else "grayordinates"
    items = []
    for atlas in atlases:
        name, kind = str(atlas.get("name")), atlas.get("kind")
        if kind == "labels":
            how = f"a labels atlas, {atlas.get('strategy', 'mean')} of each region's {unit}"
        elif kind == "maps":
            how = "probabilistic maps, least-squares fit of the maps to each volume"
        elif kind == "spheres":
            coords = atlas.get("coordinates")
            radius = atlas.get("radius")
            where = f"the {coords} coordinates" if coords in _BUILTIN else "coordinates"
            size = f"{_num(radius)} mm spheres" if radius else "single voxels"
            how = f"mean signal of {size} around {where}"
        else:
            how = (
                f"regions extracted from a statistical map with threshold "
                f"{atlas.get('threshold')}, {str(atlas.get('extract_type', '')).replace('_', ' ')} "
                f"and regions larger than {_num(atlas.get('min_region_size'))} mm³, fitted as maps"
            )
        refs = atlas_references(name, atlas.get("coordinates"), (region_names or {}).get(name, ()))
        cover = atlas.get("min_coverage")
        extra = f"; regions covering less than {cover:.0%} of their extent are n/a" if cover else ""
        items.append(f"{name} ({how}{extra}){' ' + m.cite(*refs) if refs else ''}")
    smooth = den.smoothing_fwhm
    m.paragraphs.append(
        f"Region signals were extracted from {len(atlases)} atlas{'es' if len(atlases) != 1 else ''}"
        f"{f' after spatial smoothing ({_num(smooth)} mm FWHM)' if smooth else ''}: "
        f"{'; '.join(items)}. Regions without usable "
        f"{'voxels inside the brain mask' if grid == 'volume' else 'grayordinates in the data'} "
        "were n/a."
    )
    # cleaning
    steps = []
    if den.detrend:
        steps.append("linear detrending")
    if den.filter == "butterworth" and (den.low_pass or den.high_pass):
        if den.low_pass and den.high_pass:
            band = f"band-pass filtering ({_num(den.high_pass)}-{_num(den.low_pass)} Hz"
        elif den.high_pass:
            band = f"high-pass filtering ({_num(den.high_pass)} Hz"
        else:
            band = f"low-pass filtering ({_num(den.low_pass)} Hz"
        steps.append(
            band + ", zero-phase Butterworth of order 5; censored volumes interpolated "
            "by cubic splines for the filter and removed afterwards)"
        )
    elif den.filter == "cosine" and den.high_pass:
        steps.append(
            f"high-pass filtering with discrete cosine regressors ({_num(den.high_pass)} Hz)"
        )
    steps.append(
        "regression of the "
        + ("standardized " if den.standardize_confounds else "")
        + "confounds by orthogonal projection"
    )
    steps.append(
        {
            "zscore_sample": "z-scoring of each region's signal",
            "psc": "conversion to percent signal change",
        }.get(str(den.standardize), "no standardization")
    )
    minimum = (
        f"fewer than {den.min_volumes} volumes"
        if den.min_volumes is not None
        else f"fewer volumes than the number of confound regressors plus {den.min_dof}"
    )
    seconds = f" or less than {_num(den.min_seconds)} s of data" if den.min_seconds else ""
    m.paragraphs.append(
        "The region signals were then cleaned as by nilearn's `signal.clean` "
        f"{m.cite('nilearn')}: {_join(steps)}. Runs keeping {minimum}{seconds} "
        "were excluded."
    )
    # connectivity
    conn = configuration.get("connectivity") or {}
    measures = list(conn.get("measures") or ["correlation"])
    estimators = list(conn.get("estimator") or ["ledoit_wolf"])
    est_text = {
        "ledoit_wolf": f"the Ledoit-Wolf shrinkage estimator {m.cite('ledoitwolf2004')}",
        "empirical": "the empirical (maximum-likelihood) estimator",
        "graphical_lasso": f"the cross-validated graphical lasso {m.cite('friedman2008')}",
    }
    names = {"partialcorrelation": "partial correlation"}
    aggregate = conn.get("aggregate", "run")
    unit = {
        "run": "per run",
        "session": "per session (runs cleaned separately, then concatenated)",
        "subject": "per participant (runs cleaned separately, then concatenated)",
    }.get(aggregate, aggregate)
    shown = [names.get(x, x) for x in measures if x != "tangent"]
    text = (
        f"Connectivity matrices were computed {unit} as {_join(shown)}, the covariance being "
        f"estimated with {_join([est_text.get(e, e) for e in estimators])} as implemented in "
        f"scikit-learn {m.cite('sklearn')}."
    )
    if "tangent" in measures:
        text += (
            " Tangent-space connectivity was computed at the group level around the geometric "
            f"mean of the covariances {m.cite('varoquaux2010')}."
        )
    text += (
        " Group means of correlations were taken through Fisher's z, each participant counting "
        "once. Residual motion was assessed by QC-FC, the correlation across participants "
        f"between mean framewise displacement and each edge {m.cite('ciric2017', 'parkes2018')}."
    )
    m.paragraphs.append(text)
    figs = [f"{k} {versions[k]}" for k in ("matplotlib", "nilearn") if k in versions]
    if figs:
        m.paragraphs.append(
            f"Report figures were drawn with {_join(figs)} (glass brain outlines of "
            "nilearn.plotting)."
        )
    return m


__all__ = ["REFERENCES", "Methods", "atlas_references", "build_methods", "software_versions"]

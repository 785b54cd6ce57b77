"""Configuration: validation, presets, path resolution, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bids_app.config import Config, list_presets, load_config, packaged_config, parse_config
from bids_app.errors import ConfigError

LABELS = {"name": "Schaefer", "kind": "labels", "image": "atlas.nii.gz"}


def write_yaml(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "atlas.nii.gz").write_bytes(b"")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_preset_is_valid_and_named():
    presets = list_presets()
    assert {"default", "scrubbing", "compcor"} <= set(presets)
    names = set()
    for name in presets:
        cfg = load_config(packaged_config(name))
        assert cfg.atlases, name
        names.add(cfg.denoise.name)
    assert len(names) == len(presets), "each preset needs its own desc- label"


def test_issue_contract_keys_are_accepted(tmp_path):
    for f in ("labels.tsv", "maps.nii.gz", "coords.tsv", "stat.nii.gz"):
        (tmp_path / f).write_bytes(b"")
    data = {
        "space": "MNI152NLin6Asym",
        "denoise": {
            "name": "simple",
            "strategy": "scrubbing",
            "motion": "full",
            "wm_csf": "basic",
            "global_signal": "basic",
            "scrub": 5,
            "fd_threshold": 0.5,
            "std_dvars_threshold": 1.5,
            "compcor": "anat_combined",
            "n_compcor": "all",
            "ica_aroma": "full",
            "demean": True,
            "detrend": True,
            "standardize": "zscore_sample",
            "low_pass": None,
            "high_pass": None,
            "smoothing_fwhm": None,
        },
        "atlases": [
            {
                "name": "Schaefer2018",
                "kind": "labels",
                "image": "atlas.nii.gz",
                "labels": "labels.tsv",
            },
            {"name": "HarvardOxford", "kind": "maps", "image": "maps.nii.gz"},
            {"name": "Power2011", "kind": "spheres", "coordinates": "coords.tsv", "radius": 5},
            {
                "name": "Motor",
                "kind": "regions",
                "image": "stat.nii.gz",
                "threshold": 3.0,
                "extract_type": "connected_components",
                "min_region_size": 1350,
                "smoothing_fwhm": 6,
            },
        ],
        "connectivity": {
            "measures": [
                "correlation",
                "partial correlation",
                "covariance",
                "precision",
                "tangent",
            ],
            "estimator": "ledoit_wolf",
        },
    }
    cfg = load_config(write_yaml(tmp_path, data))
    assert cfg.space == "MNI152NLin6Asym"
    assert [a.kind for a in cfg.atlases] == ["labels", "maps", "spheres", "regions"]
    assert cfg.atlases[0].image == tmp_path / "atlas.nii.gz"  # relative to the YAML file
    assert cfg.connectivity.measures == [
        "correlation",
        "partialcorrelation",
        "covariance",
        "precision",
        "tangent",
    ]
    assert cfg.connectivity.estimator == ["ledoit_wolf"]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"denoise": {"strategy": "fancy"}}, "denoise.strategy"),
        ({"denoise": {"stratgy": "simple"}}, "denoise.stratgy: unknown key"),
        ({"denoise": {"name": "scrub.5+gsr"}}, "denoise.name"),
        ({"denoise": {"low_pass": 0.01, "high_pass": 0.1}}, "high_pass"),
        ({"denoise": {"fd_threshold": -1}}, "denoise.fd_threshold"),
        ({"connectivity": {"measures": ["coherence"]}}, "unknown measure 'coherence'"),
        ({"connectivity": {"estimator": "oas"}}, "connectivity.estimator"),
        ({"atlases": []}, "atlases"),
        ({"atlases": [dict(LABELS, kind="mesh")]}, "atlases.Schaefer: kind must be one of"),
        ({"atlases": [LABELS, LABELS]}, "repeated: Schaefer"),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_bad_config_names_the_key(tmp_path, patch, expected):
    data = {"atlases": [LABELS]} | patch
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path, data))
    assert expected in str(err.value)
    assert "cfg.yaml" in str(err.value)


def test_missing_atlas_file_and_bad_yaml(tmp_path):
    path = write_yaml(tmp_path, {"atlases": [dict(LABELS, image="nope.nii.gz")]})
    with pytest.raises(
        ConfigError, match=r"atlases\.Schaefer\.image: file not found: .*nope\.nii\.gz"
    ):
        load_config(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("atlases: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_space_override_and_builtin_coordinates(tmp_path):
    cfg = load_config(packaged_config("default"), space="T1w")
    assert cfg.space == "T1w"
    assert cfg.atlases[0].coordinates == "power2011"


def test_digest_is_stable_sensitive_and_independent_of_folders(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "atlas.nii.gz").write_bytes(b"same bytes")
    a = parse_config({"atlases": [LABELS]}, tmp_path / "x")
    b = parse_config({"atlases": [LABELS]}, tmp_path / "y")  # same file content elsewhere
    c = parse_config({"atlases": [LABELS], "denoise": {"high_pass": 0.01}}, tmp_path / "x")
    assert isinstance(a, Config)
    assert a.digest() == b.digest() != c.digest()
    (tmp_path / "y" / "atlas.nii.gz").write_bytes(b"other bytes")
    assert parse_config({"atlases": [LABELS]}, tmp_path / "y").digest() != a.digest()
    # tangent is a group-level measure: not part of the participant-level hash
    t = parse_config(
        {"atlases": [LABELS], "connectivity": {"measures": ["correlation", "tangent"]}},
        tmp_path / "x",
    )
    assert t.digest(participant_only=True) == a.digest(participant_only=True)
    assert t.digest() != a.digest()


def test_override_the_strategy_does_not_use_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text(
        "denoise: {strategy: simple, scrub: 3}\n"
        "atlases: [{name: P, kind: spheres, coordinates: power2011}]\n"
    )
    with caplog.at_level("WARNING"):
        cfg = load_config(path)
    assert cfg.denoise.scrub == 3
    assert "denoise.scrub ignored: not used by strategy 'simple'" in caplog.text

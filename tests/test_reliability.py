"""Bad inputs: each gives a clear error or warning naming the file (or key), the documented exit
code, no traceback, no partial output; one bad run never stops the others."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from bids_app.cli import main
from bids_app.demo import DemoSpec, build_demo
from bids_app.write import read_tsv, write_tsv

pytestmark = pytest.mark.slow
STEM = "task-rest_space-MNI152NLin2009cAsym_res-2"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    dest = tmp_path_factory.mktemp("rel")
    config = build_demo(dest, DemoSpec(n_subjects=3, n_sessions=1, n_runs=1, n_volumes=50, seed=7))
    data = yaml.safe_load(config.read_text())
    data["atlases"] = data["atlases"][:3]  # labels, maps, spheres: fast
    small = config.with_name("small.yaml")
    small.write_text(yaml.safe_dump(data))
    return dest / "fmriprep", small


@pytest.fixture
def bids(demo, tmp_path) -> Path:
    return Path(shutil.copytree(demo[0], tmp_path / "fmriprep"))


def run(capsys, *args) -> tuple[int, str]:
    extra = ["--no-reports"] if len(args) > 2 and args[2] in ("participant", "group") else []
    code = main([str(a) for a in args] + extra)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def variant(config: Path, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(config.read_text())
    edit(data)
    for atlas in data["atlases"]:  # absolute paths: the variant lives elsewhere
        for key in ("image", "labels", "coordinates"):
            if key in atlas and not str(atlas[key]).startswith("/") and "/" in str(atlas[key]):
                atlas[key] = str(config.parent / atlas[key])
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def outputs_of(out: Path, sub: str) -> list[str]:
    return sorted(p.name for p in out.glob(f"sub-{sub}/func/*") if not p.name.startswith("."))


# --- silent wrong results -------------------------------------------------------------------------


def test_ica_aroma_full_denoises_the_aroma_series(demo, bids, tmp_path, capsys):
    func = bids / "sub-01" / "func"
    preproc = func / f"sub-01_{STEM}_desc-preproc_bold.nii.gz"
    import nibabel as nib

    img = nib.load(preproc)
    data = np.asanyarray(img.dataobj)
    rng = np.random.default_rng(0)
    aroma = np.round(data + 20 * rng.standard_normal(data.shape).astype(np.float32) * (data > 0))
    nib.save(
        nib.Nifti1Image(aroma.astype(np.float32), img.affine, img.header),
        func / f"sub-01_{STEM}_desc-smoothAROMAnonaggr_bold.nii.gz",
    )
    shutil.copy(
        func / f"sub-01_{STEM}_desc-preproc_bold.json",
        func / f"sub-01_{STEM}_desc-smoothAROMAnonaggr_bold.json",
    )
    config = variant(
        demo[1], tmp_path, lambda d: d.update(denoise={"name": "aroma", "strategy": "ica_aroma"})
    )
    out = tmp_path / "out"
    code, err = run(
        capsys, bids, out, "participant", "--config", config, "--participant-label", "01"
    )
    assert code == 0, err
    side = json.loads(
        next(out.glob("sub-01/func/*DemoGrid_desc-aroma_timeseries.json")).read_text()
    )
    assert any("desc-smoothAROMAnonaggr_bold" in s for s in side["Sources"])
    assert not any("desc-preproc_bold" in s for s in side["Sources"])
    # the same command with the 'basic' AROMA variant uses the preproc series
    basic = variant(
        demo[1],
        tmp_path,
        lambda d: d.update(
            denoise={
                "name": "aroma",
                "strategy": "ica_aroma",
                "ica_aroma": "basic",
                "confounds": [],
            }
        ),
    )
    table = read_tsv(next(func.glob("*_desc-confounds_timeseries.tsv")))
    table["aroma_motion_01"] = rng.standard_normal(len(table))
    write_tsv(next(func.glob("*_desc-confounds_timeseries.tsv")), table)
    code, err = run(
        capsys,
        bids,
        tmp_path / "out2",
        "participant",
        "--config",
        basic,
        "--participant-label",
        "01",
    )
    assert code == 0, err
    side = json.loads(
        next(
            (tmp_path / "out2").glob("sub-01/func/*DemoGrid_desc-aroma_timeseries.json")
        ).read_text()
    )
    assert any("desc-preproc_bold" in s for s in side["Sources"])


@pytest.mark.parametrize("value", [-2, 0, "2s", None, True, "nan"])
def test_bad_repetition_time_fails_its_run_naming_the_sidecar(demo, bids, tmp_path, capsys, value):
    side = bids / "sub-02" / "func" / f"sub-02_{STEM}_desc-preproc_bold.json"
    meta = json.loads(side.read_text())
    meta["RepetitionTime"] = float("nan") if value == "nan" else value
    side.write_text(json.dumps(meta) if value != "nan" else json.dumps(meta).replace("NaN", "NaN"))
    out = tmp_path / "out"
    code, err = run(capsys, bids, out, "participant", "--config", demo[1])
    assert code == 65
    assert side.name in err and "RepetitionTime" in err
    assert outputs_of(out, "01") and outputs_of(out, "03") and not outputs_of(out, "02")


def test_low_pass_above_nyquist_warns(demo, bids, tmp_path, capsys):
    config = variant(demo[1], tmp_path, lambda d: d["denoise"].update(low_pass=0.3, high_pass=0.01))
    code, err = run(
        capsys,
        bids,
        tmp_path / "out",
        "participant",
        "--config",
        config,
        "--participant-label",
        "01",
    )
    assert code == 0
    assert "denoise.low_pass 0.3 Hz is at or above the Nyquist frequency 0.25 Hz" in err
    assert "RepetitionTime 2 s" in err
    config = variant(demo[1], tmp_path, lambda d: d["denoise"].update(high_pass=0.3))
    code, err = run(
        capsys,
        bids,
        tmp_path / "out2",
        "participant",
        "--config",
        config,
        "--participant-label",
        "01",
    )
    assert code == 65 and "denoise.high_pass 0.3 Hz" in err


@pytest.mark.parametrize(
    ("threshold", "two_sided", "message"),
    [
        ("97", True, "the string '97' is not a percentile"),
        ("150%", True, "the percentile '150%' must be between 0% and 100%"),
        (-2, True, "-2 is negative, but with two_sided: true the threshold applies to absolute"),
        (float("inf"), False, "must be a finite number, got inf"),
    ],
)
def test_regions_threshold_is_checked_with_the_configuration(
    demo, tmp_path, capsys, threshold, two_sided, message
):
    config = _tmap_variant(demo[1], tmp_path, threshold, two_sided)
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", config)
    assert code == 64
    assert f"atlases.Tmap.threshold: {message}" in err
    assert not (tmp_path / "out").exists()


def test_regions_negative_one_sided_threshold_is_accepted(demo, tmp_path):
    from bids_app.config import load_config

    config = _tmap_variant(demo[1], tmp_path, -2, False)
    assert load_config(config).atlases[-1].threshold == -2.0


def _tmap_variant(config: Path, tmp_path: Path, threshold, two_sided: bool) -> Path:
    """The demo configuration with a regions atlas from the demo's statistical map."""
    entry = {
        "name": "Tmap",
        "kind": "regions",
        "image": "atlas/demo_tmap.nii.gz",
        "threshold": threshold,
        "two_sided": two_sided,
    }
    return variant(config, tmp_path, lambda d: d["atlases"].append(entry))


def _group_with_broken_qc(demo, out: Path, capsys, damage) -> tuple[int, str, Path]:
    """Participant level, ``damage(path)`` on sub-02's ``_qc.json``, group level."""
    assert run(capsys, demo[0], out, "participant", "--config", demo[1])[0] == 0
    qc = next(out.glob("sub-02/func/*_qc.json"))
    damage(qc)
    code, err = run(capsys, demo[0], out, "group", "--config", demo[1])
    table = read_tsv(out / "group" / "task-rest_space-MNI152NLin2009cAsym_desc-simple_qc.tsv")
    assert table["participant_id"].tolist() == ["sub-01", "sub-03"]
    return code, err, qc


def test_missing_qc_sidecar_is_named_at_group_level(demo, tmp_path, capsys):
    code, err, _ = _group_with_broken_qc(demo, tmp_path / "out", capsys, Path.unlink)
    assert code == 0
    assert "no usable *_qc.json" in err and "sub-02" in err


@pytest.mark.parametrize(
    "key, value",
    [("VolumesTotal", "many"), ("MeanFramewiseDisplacement", [0.1]), ("Excluded", "no")],
)
def test_qc_sidecar_with_a_bad_value_is_left_out_of_the_group(demo, tmp_path, capsys, key, value):
    def damage(qc: Path) -> None:
        qc.write_text(json.dumps(json.loads(qc.read_text()) | {key: value}))

    code, err, qc = _group_with_broken_qc(demo, tmp_path / "out", capsys, damage)
    assert code == 1
    assert f"{qc.name}: {key} is not" in err


# --- tracebacks ---------------------------------------------------------------------------------


def test_unknown_filter_entity_exit_64_with_close_match(demo, tmp_path, capsys):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"acquisiton": "mb"}}))
    code, err = run(
        capsys,
        demo[0],
        tmp_path / "out",
        "participant",
        "--config",
        demo[1],
        "--bids-filter-file",
        filt,
    )
    assert code == 64
    assert "unknown entity 'acquisiton'; did you mean 'acquisition'?" in err


def test_all_zero_bold_and_constant_regions(demo, bids, tmp_path, capsys):
    import nibabel as nib

    bold = bids / "sub-01" / "func" / f"sub-01_{STEM}_desc-preproc_bold.nii.gz"
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header), bold)
    config = variant(
        demo[1],
        tmp_path,
        lambda d: d["connectivity"].update(
            measures=["correlation", "partialcorrelation"], estimator="empirical"
        ),
    )
    out = tmp_path / "out"
    code, err = run(capsys, bids, out, "participant", "--config", config)
    assert code == 65
    assert bold.name in err and "no region of any atlas has signal" in err
    assert not outputs_of(out, "01") and outputs_of(out, "02")
    # one region constant: n/a with a warning, the partial correlation is computed
    bold = bids / "sub-02" / "func" / f"sub-02_{STEM}_desc-preproc_bold.nii.gz"
    img = nib.load(bold)
    data = np.asanyarray(img.dataobj).copy()
    labels = np.asanyarray(
        nib.load(demo[1].parent / "atlas" / "atlas-DemoGrid_dseg.nii.gz").dataobj
    )
    data[labels == 1] = 700.0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    config = variant(
        demo[1],
        tmp_path,
        lambda d: d["connectivity"].update(
            measures=["correlation", "partialcorrelation"], estimator=["ledoit_wolf", "empirical"]
        ),
    )
    code, err = run(
        capsys,
        bids,
        tmp_path / "out2",
        "participant",
        "--config",
        config,
        "--participant-label",
        "02",
    )
    assert code == 0
    assert "atlas DemoGrid: 1 region(s) have a constant signal" in err
    # fewer volumes than regions: the empirical covariance is singular, no partial correlation
    assert "partialcorrelation with estimator empirical skipped" in err
    assert not list(
        (tmp_path / "out2").glob("sub-02/func/*DemoGrid_meas-partialcorrelationEmpirical*")
    )
    rel = read_tsv(
        next(
            (tmp_path / "out2").glob(
                "sub-02/func/*DemoGrid_meas-partialcorrelationLedoitwolf*_relmat.tsv"
            )
        )
    )
    assert rel.iloc[:, 0].isna().all() and rel.iloc[1:, 1:].notna().all().all()


def test_invalid_regex_is_a_configuration_error_before_any_work(demo, tmp_path, capsys):
    config = variant(demo[1], tmp_path, lambda d: d["denoise"].update(confounds=["csf_(wm"]))
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", config)
    assert code == 64
    assert (
        "denoise.confounds: 'csf_(wm' is neither a column name nor a valid regular expression"
        in err
    )
    assert not (tmp_path / "out").exists()


# --- one bad file must not stop the others ------------------------------------------------------


def test_missing_confounds_fails_only_its_run(demo, bids, tmp_path, capsys):
    next(bids.glob("sub-02/func/*_desc-confounds_timeseries.tsv")).unlink()
    out = tmp_path / "out"
    code, err = run(capsys, bids, out, "participant", "--config", demo[1])
    assert code == 65
    assert "no confounds file found" in err and f"sub-02_{STEM}_desc-preproc_bold.nii.gz" in err
    assert outputs_of(out, "01") and outputs_of(out, "03") and not outputs_of(out, "02")


@pytest.mark.parametrize("which", ["bold", "confounds"])
def test_corrupt_json_sidecar_fails_only_its_run(demo, bids, tmp_path, capsys, which):
    pattern = (
        f"*{STEM}_desc-preproc_bold.json" if which == "bold" else "*_desc-confounds_timeseries.json"
    )
    side = next(bids.glob(f"sub-03/func/{pattern}"))
    side.write_text('{"RepetitionTime": 2,')  # truncated
    out = tmp_path / "out"
    code, err = run(capsys, bids, out, "participant", "--config", demo[1])
    assert code == 65
    assert side.name in err
    assert outputs_of(out, "01") and outputs_of(out, "02") and not outputs_of(out, "03")


@pytest.fixture(scope="module")
def participant_outputs(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grp") / "out"
    assert (
        main([str(demo[0]), str(out), "participant", "--config", str(demo[1]), "--no-reports"]) == 0
    )
    return out


def _break(path: Path, how: str) -> None:
    text = path.read_text()
    lines = text.splitlines()
    if how == "truncated":
        path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    elif how == "text-in-a-cell":
        cells = lines[3].split("\t")
        cells[2] = "oops"
        lines[3] = "\t".join(cells)
        path.write_text("\n".join(lines) + "\n")
    elif how == "other-size":
        path.write_text("\n".join("\t".join(ln.split("\t")[:-1]) for ln in lines[:-1]) + "\n")
    elif how == "corrupt-sidecar":
        path.with_suffix(".json").write_text("{")


@pytest.mark.parametrize("sub", ["01", "02"])  # the first participant's file, or another's
@pytest.mark.parametrize("how", ["truncated", "text-in-a-cell", "other-size", "corrupt-sidecar"])
def test_bad_participant_file_is_left_out_of_the_group(
    participant_outputs, demo, tmp_path, capsys, caplog, how, sub
):
    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    bad = next(out.glob(f"sub-{sub}/func/*DemoGrid_meas-correlation_desc-simple_relmat.tsv"))
    _break(bad, how)
    code, err = run(capsys, demo[0], out, "group", "--config", demo[1])
    assert code == 1
    assert bad.name in err and "left out" in err
    index = read_tsv(next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmats.tsv")))
    assert index["participant_id"].tolist() == [f"sub-{s}" for s in ("01", "02", "03") if s != sub]
    others = read_tsv(
        next(out.glob("group/*DemoGrid_meas-partialcorrelation_desc-simple_relmats.tsv"))
    )
    assert len(others) == 3
    assert not [p for p in out.rglob("*") if ".staging-" in p.name or p.name.endswith(".tmp")]


def test_group_regions_without_lookup_table_are_the_majority(
    participant_outputs, demo, tmp_path, capsys, caplog
):
    """Without atlas-<A>_dseg.tsv the regions most participants have are the reference,
    not the first participant's (a consistent but smaller matrix here)."""
    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    (out / "atlas-DemoGrid_dseg.tsv").unlink()
    bad = next(out.glob("sub-01/func/*DemoGrid_meas-correlation_desc-simple_relmat.tsv"))
    _break(bad, "other-size")
    code, err = run(capsys, demo[0], out, "group", "--config", demo[1])
    assert code == 1 and f"left out: {bad}: regions differ" in err
    index = read_tsv(next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmats.tsv")))
    assert index["participant_id"].tolist() == ["sub-02", "sub-03"]
    mean = read_tsv(next(out.glob("group/*DemoGrid_meas-correlation_desc-simple_relmat.tsv")))
    assert mean.shape[1] == read_tsv(bad).shape[1] + 1


@pytest.mark.parametrize("subset", [False, True])
def test_aborted_group_run_leaves_no_group_folder(
    participant_outputs, demo, tmp_path, capsys, monkeypatch, subset
):
    """Interrupted while writing: no empty group/ (or group/subset-<label>/) is left, and the
    files of an earlier group run stay as they were."""
    import bids_app.group

    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    shutil.rmtree(out / "group", ignore_errors=True)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    select = ["--participant-label", "01", "02"] if subset else []
    monkeypatch.setattr(bids_app.group, "write_npy", interrupted)
    code, err = run(capsys, demo[0], out, "group", "--config", demo[1], *select)
    assert code == 1 and "interrupted" in err
    assert not (out / "group").exists()
    monkeypatch.undo()
    assert run(capsys, demo[0], out, "group", "--config", demo[1])[0] == 0
    before = sorted(p.relative_to(out) for p in (out / "group").rglob("*"))
    monkeypatch.setattr(bids_app.group, "write_npy", interrupted)
    assert run(capsys, demo[0], out, "group", "--config", demo[1], *select)[0] == 1
    assert sorted(p.relative_to(out) for p in (out / "group").rglob("*")) == before


def _with_tangent(config: Path, tmp_path: Path) -> Path:
    measures = ["correlation", "partialcorrelation", "tangent"]
    return variant(config, tmp_path, lambda d: d["connectivity"].update(measures=measures))


@pytest.mark.parametrize("how", ["text-in-a-cell", "other-size"])
def test_bad_time_series_is_left_out_of_the_tangent_space(
    participant_outputs, demo, tmp_path, capsys, how
):
    """The bad file is the first participant's: the regions come from the lookup table."""
    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    config = _with_tangent(demo[1], tmp_path)
    ts = next(out.glob("sub-01/func/*DemoGrid_desc-simple_timeseries.tsv"))
    _break(ts, how)
    code, err = run(capsys, demo[0], out, "group", "--config", config)
    # the tangent measure is group-only: the participant outputs stay usable
    assert "another configuration" not in err
    assert code == 1 and ts.name in err
    index = read_tsv(next(out.glob("group/*DemoGrid_meas-tangent_desc-simple_relmats.tsv")))
    assert index["participant_id"].tolist() == ["sub-02", "sub-03"]


def test_sources_are_bids_uris_at_both_levels(participant_outputs, demo, tmp_path, capsys):
    """One URI style in every ``Sources`` (participant and group, tangent included), each
    resolving to an existing file; a run's sources are its BOLD, brain mask and confounds."""
    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    config = _with_tangent(demo[1], tmp_path)
    assert run(capsys, demo[0], out, "group", "--config", config)[0] == 0
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    roots = {"": out, **{name: (out / link).resolve() for name, link in links.items()}}
    seen = {"participant": 0, "group": 0}
    for side in sorted(out.rglob("*.json")):
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict) or "Sources" not in meta:
            continue
        seen["group" if "group" in side.relative_to(out).parts else "participant"] += 1
        for uri in meta["Sources"]:
            scheme, dataset, path = uri.split(":", 2)
            assert scheme == "bids" and dataset in roots, f"{side.name}: {uri}"
            assert (roots[dataset] / path).is_file(), f"{side.name}: {uri}"
        if side.name.endswith(("_qc.json", "_timeseries.json")) and "group" not in side.parts:
            sources = [Path(uri.split(":", 2)[2]).name for uri in meta["Sources"]]
            assert [s.rsplit("_", 1)[-1] for s in sources] == [
                "bold.nii.gz",
                "mask.nii.gz",
                "timeseries.tsv",
            ], side.name
            assert "desc-preproc_bold" in sources[0] and "desc-brain_mask" in sources[1]
            assert "desc-confounds_timeseries" in sources[2]
    tangent = json.loads(
        next(out.glob("group/*DemoGrid_meas-tangent_desc-simple_relmat.json")).read_text()
    )
    assert len(tangent["Sources"]) == 3 and all(
        s.startswith("bids::sub-") and s.endswith("_timeseries.tsv") for s in tangent["Sources"]
    )
    assert seen["participant"] > 9 and seen["group"] >= 9


# --- formats users bring ------------------------------------------------------------------------


def test_legacy_confound_names_in_custom_confounds(tmp_path):
    """A user's X / RotX columns of an fMRIPrep 1.0/1.1 file (renamed trans_x / rot_x on
    reading) are accepted in denoise.confounds, as names and in regular expressions."""
    from bids_app.config import DenoiseConfig
    from bids_app.confounds import read_confounds, select_confounds

    rng = np.random.default_rng(0)
    legacy = ["X", "Y", "Z", "RotX", "RotY", "RotZ", "CSF", "WhiteMatter", "FramewiseDisplacement"]
    tsv = tmp_path / "sub-01_task-rest_bold_confounds.tsv"
    frame = __import__("pandas").DataFrame(rng.standard_normal((20, len(legacy))), columns=legacy)
    frame.to_csv(tsv, sep="\t", index=False)
    table, meta = read_confounds(tsv)
    assert "X" in table.attrs["renamed"] and "trans_x" in table.columns
    den = DenoiseConfig(strategy="none", confounds=["X", "Rot[XY]"])
    sel = select_confounds(table, meta, den, n_volumes=20, source=str(tsv))
    assert sel.provenance["ConfoundRegressors"] == ["rot_x", "rot_y", "trans_x"]


# --- CLI details ----------------------------------------------------------------------------------


def test_configuration_messages_are_plain(demo, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "denoise: {name: bad.name, low_pas: 0.1}\n"
        "atlases:\n  - {name: Seeds, kind: spheres, coordinates: power2011, radius: -1}\n"
        "  - {name: Other, kind: sphere, coordinates: power2011}\n"
        "connectivity: {measures: [corelation]}\n"
    )
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", bad)
    assert code == 64
    assert "denoise.name: must be letters and digits only" in err
    assert "denoise.low_pas: unknown key; did you mean 'low_pass'?" in err
    assert "atlases.Seeds.radius: must be greater than 0" in err
    assert "atlases.Other: kind must be one of labels, maps, spheres, regions" in err
    assert "did you mean 'correlation'?" in err
    assert "Value error" not in err and "String should match" not in err
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", "scrubing")
    assert code == 64 and "did you mean the preset 'scrubbing'?" in err and "simple_gsr" in err
    # wrong types, misspelt values, a missing kind: the file and key named, plain words
    bad.write_text(
        "space: 3\n"
        "denoise: {strategy: scrubing, confounds: [csf, 3]}\n"
        "atlases:\n  - {name: Seeds, coordinates: power2011}\n"
        "  - {name: Grid, kind: labels, templateflow: 7}\n"
        "  - 5\n"
        "connectivity: {measures: 5, estimator: ledoitwolf}\n"
    )
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", bad)
    assert code == 64, err
    assert f"invalid configuration {bad}:" in err
    assert "space: must be text, got 3" in err
    assert "denoise.strategy: got 'scrubing'; did you mean 'scrubbing'?" in err
    assert "denoise.confounds.#2: must be text, got 3" in err
    assert "atlases.Seeds.kind: required key missing (one of labels, maps, spheres, regions)" in err
    assert "power2011" not in err  # not the whole atlas entry
    assert "atlases.Grid.templateflow: must be a mapping" in err
    assert "atlases.#3: must be a mapping" in err
    assert "connectivity.measures: must be a list" in err and "got 5" in err
    assert "connectivity.estimator: got 'ledoitwolf'; did you mean 'ledoit_wolf'?" in err
    assert "Input should" not in err and "instance of" not in err
    bad.write_text("atlases: [{name: Other, kind: sphere, coordinates: power2011}]\n")
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", bad)
    assert code == 64 and "(got 'sphere'); did you mean 'spheres'?" in err
    bad.write_text("denoise: {confounds: 3}\natlases: {name: x}\n")
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", bad)
    assert code == 64 and "denoise.confounds: must be a list" in err
    assert "atlases: must be a list" in err and "Input should" not in err
    bad.write_bytes("atlases: [{name: R\xe9gions, kind: labels}]\n".encode("latin-1"))
    code, err = run(capsys, demo[0], tmp_path / "out", "participant", "--config", bad)
    assert code == 64 and f"configuration file {bad} is not UTF-8 text" in err
    assert not (tmp_path / "out").exists()


def test_group_output_dir_missing_or_empty_same_code(demo, tmp_path, capsys):
    assert run(capsys, demo[0], tmp_path / "missing", "group", "--config", demo[1])[0] == 66
    (tmp_path / "empty").mkdir()
    assert run(capsys, demo[0], tmp_path / "empty", "group", "--config", demo[1])[0] == 66


def test_group_level_does_not_need_the_atlas_files(participant_outputs, demo, tmp_path, capsys):
    out = Path(shutil.copytree(participant_outputs, tmp_path / "out"))
    atlas_dir = Path(shutil.copytree(demo[1].parent, tmp_path / "cfg"))
    config = atlas_dir / demo[1].name
    assert run(capsys, demo[0], out, "group", "--config", config)[0] == 0  # same contents elsewhere
    shutil.rmtree(atlas_dir / "atlas")
    code, err = run(capsys, demo[0], out, "group", "--config", config)
    assert code == 0, err


def test_help_lists_every_option_once_with_a_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "--n-jobs" in text
    from bids_app.cli import build_parser

    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help text"
        assert action.help.count("(default") <= 1, f"doubled default in {action.help!r}"


def test_truncated_gzip_bold_names_the_file(demo, bids, tmp_path, capsys):
    bold = bids / "sub-01" / "func" / f"sub-01_{STEM}_desc-preproc_bold.nii.gz"
    raw = gzip.decompress(bold.read_bytes())
    bold.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    code, err = run(capsys, bids, tmp_path / "out", "participant", "--config", demo[1])
    assert code == 65 and bold.name in err and "truncated" in err


def test_coordinate_files_as_atlas_authors_distribute_them(tmp_path):
    """Whitespace-delimited with a header (Seitzman's ROI list), case-insensitive columns,
    and a per-seed radius column on request."""
    from bids_app.config import parse_config
    from bids_app.extract import load_atlas, prepare

    rois = tmp_path / "ROIs_300inVol_MNI.txt"
    rois.write_text(
        "X   Y   Z   radius(mm)  netWorkbenchLabel  netName\n"
        "-24 -98 -12 4 1 Visual\n"
        "27  -97 -13 4 1 Visual\n"
        "24  32  -18 5 2 Default\n"
        "-56 -45 -24 6 3 unassigned\n"
    )
    grid = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1.0]])
    sizes = {}
    for radius in (5, "table"):
        cfg = parse_config(
            {
                "atlases": [
                    {"name": "Seitz", "kind": "spheres", "coordinates": str(rois), "radius": radius}
                ]
            },
            tmp_path,
        ).atlases[0]
        src = load_atlas(cfg)
        assert src.lut[["x", "y", "z"]].to_numpy().tolist()[2] == [24, 32, -18]
        assert src.lut["network"].tolist() == ["Visual", "Visual", "Default", "unassigned"]
        sizes[radius] = prepare([src], (91, 109, 91), grid).atlases[0].n_voxels
    assert src.lut["radius"].tolist() == [4, 4, 5, 6]
    uniform, own = sizes[5], sizes["table"]
    assert (own[:2] < uniform[:2]).all() and own[2] == uniform[2] and own[3] > uniform[3]

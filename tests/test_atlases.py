"""Atlases by name: TemplateFlow queries, BIDS-Atlas datasets, the space check, the fetch
command. TemplateFlow homes and atlas datasets are laid out in tmp from ../shared/data,
with TemplateFlow's and BIDS's own file names; nothing here uses the network."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from bids_app import atlases, extract, fetch
from bids_app.atlases import (
    check_space,
    resolve_atlas,
    source_error,
    template_from_name,
)
from bids_app.cli import main
from bids_app.config import load_config, parse_config
from bids_app.demo import DemoSpec, build_demo
from bids_app.errors import ConfigError
from bids_app.naming import description_sidecar, lut_sidecar

TPL_C = "MNI152NLin2009cAsym"
TPL_6 = "MNI152NLin6Asym"
S200_1MM = f"tpl-{TPL_C}_res-01_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.nii.gz"
XCP = "tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-{n}Parcels17Networks_dseg.nii.gz"
XCP_TSV = "atlas-Schaefer2018v0143_desc-{n}Parcels17Networks_dseg.tsv"
S200 = {"atlas": "Schaefer2018", "desc": "200Parcels7Networks"}


def tf_table(n: int, prefix: str) -> pd.DataFrame:
    """A lookup table as TemplateFlow writes them: index, name, color."""
    index = np.arange(1, n + 1)
    return pd.DataFrame(
        {"index": index, "name": [f"{prefix}_{i}" for i in index], "color": "#781180"}
    )


def write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path


def xcp_as_tf_table(shared: Path, n: int) -> pd.DataFrame:
    table = pd.read_csv(shared / "atlases/labels" / XCP_TSV.format(n=n), sep="\t")
    return pd.DataFrame({"index": table["index"], "name": table["label"], "color": "#781180"})


@pytest.fixture(scope="module")
def tf_home(shared_data, tmp_path_factory) -> Path:
    """A TemplateFlow home: real atlases of ../shared/data under TemplateFlow's names,
    a table per atlas, and an empty placeholder (as the client's skeleton leaves them)."""
    home = tmp_path_factory.mktemp("templateflow")
    c, six = home / f"tpl-{TPL_C}", home / f"tpl-{TPL_6}"
    c.mkdir()
    six.mkdir()
    shutil.copy(shared_data / "atlases/labels" / S200_1MM, c / S200_1MM)
    write_tsv(
        tf_table(200, "7Networks"),
        c / f"tpl-{TPL_C}_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.tsv",
    )
    (c / f"tpl-{TPL_C}_res-02_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.nii.gz").touch()
    shutil.copy(
        shared_data / "atlases/labels" / XCP.format(n=100),
        six / f"tpl-{TPL_6}_res-02_atlas-Schaefer2018_desc-100Parcels17Networks_dseg.nii.gz",
    )
    write_tsv(
        xcp_as_tf_table(shared_data, 100),
        six / f"tpl-{TPL_6}_atlas-Schaefer2018_desc-100Parcels17Networks_dseg.tsv",
    )
    shutil.copy(
        shared_data / "atlases/maps/canica_resting_state_20comp.nii.gz",
        c / f"tpl-{TPL_C}_res-04_atlas-CanICA_desc-20components_probseg.nii.gz",
    )
    write_tsv(
        tf_table(20, "IC")[["index", "name"]],
        c / f"tpl-{TPL_C}_atlas-CanICA_desc-20components_probseg.tsv",
    )
    (c / f"tpl-{TPL_C}_atlas-CanICA_probseg.json").write_text(
        json.dumps({"Name": "CanICA resting-state components", "License": "BSD-3-Clause"})
    )
    (c / "template_description.json").write_text(json.dumps({"Identifier": TPL_C}))
    return home


def entry(**kwargs):
    return {"name": "A", "kind": "labels", **kwargs}


# --- TemplateFlow -----------------------------------------------------------------------------


@pytest.mark.shared
def test_query_gives_templateflow_files_and_provenance(tf_home):
    r = resolve_atlas(
        entry(name="S200", templateflow={**S200, "resolution": 1}),
        bold_space=TPL_C,
        templateflow_home=tf_home,
    )
    assert r.image == tf_home / f"tpl-{TPL_C}" / S200_1MM
    assert r.labels.name == f"tpl-{TPL_C}_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.tsv"
    assert (r.template, r.template_from, r.source) == (TPL_C, "templateflow", "templateflow")
    assert check_space(r, TPL_C) is None
    src = r.provenance["Source"]
    assert src["Type"] == "TemplateFlow"
    assert src["Query"] == {**S200, "resolution": "1", "template": TPL_C, "suffix": "dseg"}
    assert src["URL"] == f"{atlases.S3_ROOT}/tpl-{TPL_C}/{S200_1MM}"
    assert src["Digests"]["image"] == atlases.sha256(r.image)
    desc = description_sidecar(r, {"AtlasSampleSize": 1489})
    assert desc["AtlasName"] == "S200" and desc["License"].startswith("unknown")
    assert desc["SpatialReference"] == f"https://github.com/templateflow/tpl-{TPL_C}"
    assert desc["Template"] == TPL_C and desc["AtlasSampleSize"] == 1489


@pytest.mark.shared
def test_template_defaults_to_the_bold_space(tf_home):
    q = {"atlas": "Schaefer2018", "desc": "100Parcels17Networks", "resolution": 2}
    r = resolve_atlas(entry(templateflow=q), bold_space=TPL_6, templateflow_home=tf_home)
    assert r.image.parent.name == f"tpl-{TPL_6}" and "_res-02_" in r.image.name
    with pytest.raises(ConfigError, match=f"tpl-{TPL_C}"):  # same query, other BOLD space
        resolve_atlas(entry(templateflow=q), bold_space=TPL_C, templateflow_home=tf_home)
    # an explicit template wins; the space check then names both
    r = resolve_atlas(
        entry(templateflow={**q, "template": TPL_6}), bold_space=TPL_C, templateflow_home=tf_home
    )
    with pytest.raises(ConfigError, match=f"{TPL_6}.*{TPL_C}"):
        check_space(r, TPL_C)


@pytest.mark.shared
def test_maps_query_reads_probseg_and_its_sidecar(tf_home):
    r = resolve_atlas(
        {
            "name": "ICA",
            "kind": "maps",
            "templateflow": {"atlas": "CanICA", "desc": "20components"},
        },
        bold_space=TPL_C,
        templateflow_home=tf_home,
    )
    assert r.image.name.endswith("_probseg.nii.gz") and r.labels.name.endswith("_probseg.tsv")
    desc = description_sidecar(r)
    assert desc["AtlasName"] == "CanICA resting-state components"
    assert desc["License"] == "BSD-3-Clause"


@pytest.mark.shared
def test_missing_query_names_query_folder_and_fetch_command(tf_home):
    q = {"atlas": "Schaefer2018", "desc": "400Parcels7Networks", "resolution": 2}
    with pytest.raises(ConfigError) as err:
        resolve_atlas(
            entry(name="S400", templateflow=q),
            bold_space=TPL_C,
            templateflow_home=tf_home,
            config_path="my.yaml",
        )
    text = str(err.value)
    assert err.value.exit_code == 64
    assert text.startswith("atlases.S400.templateflow: ")
    assert "atlas: Schaefer2018" in text and "desc: 400Parcels7Networks" in text
    assert f"searched: {tf_home / f'tpl-{TPL_C}'}" in text
    assert f"bids-connectome-atlases fetch my.yaml --to {tf_home}" in text
    assert "desc-200Parcels7Networks" in text  # what is there instead
    with pytest.raises(ConfigError) as err:  # without the config path: the --query form
        resolve_atlas(entry(templateflow=q), bold_space=TPL_C, templateflow_home=tf_home)
    stem = f"tpl-{TPL_C}_atlas-Schaefer2018_desc-400Parcels7Networks_res-2_dseg"
    assert f"fetch --query {stem} --to {tf_home}" in str(err.value)
    assert atlases.parse_request(stem).stem() == stem


@pytest.mark.shared
def test_placeholder_and_ambiguous_queries(tf_home):
    with pytest.raises(ConfigError, match="(?s)empty placeholder.*_res-02_.*fetch --query"):
        resolve_atlas(
            entry(templateflow={**S200, "resolution": 2}),
            bold_space=TPL_C,
            templateflow_home=tf_home,
        )
    with pytest.raises(ConfigError) as err:
        resolve_atlas(entry(templateflow=S200), bold_space=TPL_C, templateflow_home=tf_home)
    assert "2 files" in str(err.value) and "choose one with resolution: 1 | 2" in str(err.value)
    r = resolve_atlas(  # the BOLD's res decides when the query does not
        entry(templateflow=S200), bold_space=TPL_C, templateflow_home=tf_home, bold_res="1"
    )
    assert "_res-01_" in r.image.name


@pytest.mark.shared
def test_resolution_is_offline_read_only_and_without_templateflow(tf_home, tmp_path):
    """A fresh interpreter with sockets disabled, TEMPLATEFLOW_HOME from the environment:
    the query resolves, ``templateflow`` is never imported, the home is not touched."""

    def snapshot():
        return sorted((str(p), p.stat().st_mtime_ns) for p in tf_home.rglob("*"))

    before = snapshot()
    code = textwrap.dedent(
        f"""
        import socket, sys
        def refuse(*a, **k):
            raise RuntimeError("network used")
        socket.socket = socket.create_connection = refuse
        from bids_app.atlases import resolve_atlas
        r = resolve_atlas({{"name": "S", "kind": "labels", "templateflow": {dict(S200, resolution=1)!r}}},
                          bold_space={TPL_C!r})
        assert r.image.is_file(), r
        assert "templateflow" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(tf_home)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert snapshot() == before


def test_default_home_follows_templateflow_home(tmp_path):
    assert atlases.default_templateflow_home({"TEMPLATEFLOW_HOME": str(tmp_path)}) == tmp_path
    home = atlases.default_templateflow_home({"HOME": str(tmp_path)})
    assert home == tmp_path / ".cache" / "templateflow"


# --- the same atlas by query and by path -------------------------------------------------------


def _cfg(**atlas):
    return parse_config({"atlases": [atlas]}, Path("/")).atlases[0]


def _bold(tmp_path: Path) -> tuple[Path, tuple, np.ndarray]:
    """A small BOLD on TemplateFlow's MNI152NLin2009cAsym 4 mm grid."""
    shape = (49, 58, 49)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-97.5, -133.5, -79.5)
    rng = np.random.default_rng(3)
    data = (100 + 10 * rng.standard_normal(shape + (12,))).astype(np.float32)
    path = tmp_path / f"sub-01_task-rest_space-{TPL_C}_desc-preproc_bold.nii.gz"
    nib.Nifti1Image(data, affine).to_filename(path)
    return path, shape, affine


@pytest.mark.shared
def test_query_and_path_give_the_same_atlas_and_signals(tf_home, shared_data, tmp_path):
    """What the configuration will do: a resolved query becomes image/labels paths."""
    own = write_tsv(tf_table(200, "7Networks"), tmp_path / "elsewhere" / "names.tsv")
    by_path = _cfg(
        name="S200",
        kind="labels",
        image=str(shared_data / "atlases/labels" / S200_1MM),
        labels=str(own),
    )
    r = resolve_atlas(
        entry(name="S200", templateflow={**S200, "resolution": 1}),
        bold_space=TPL_C,
        templateflow_home=tf_home,
    )
    by_query = _cfg(name="S200", kind="labels", image=str(r.image), labels=str(r.labels))
    a, b = extract.load_atlas(by_path), extract.load_atlas(by_query)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.label_ids, b.label_ids)
    np.testing.assert_array_equal(a.affine, b.affine)
    pd.testing.assert_frame_equal(a.lut, b.lut)
    assert a.digest == b.digest  # same bytes, same options: same cache key

    maps_q = resolve_atlas(
        {
            "name": "ICA",
            "kind": "maps",
            "templateflow": {"atlas": "CanICA", "desc": "20components"},
        },
        bold_space=TPL_C,
        templateflow_home=tf_home,
    )
    m_path = _cfg(
        name="ICA",
        kind="maps",
        image=str(shared_data / "atlases/maps/canica_resting_state_20comp.nii.gz"),
        labels=str(maps_q.labels),
    )
    m_query = _cfg(name="ICA", kind="maps", image=str(maps_q.image), labels=str(maps_q.labels))
    ma, mb = extract.load_atlas(m_path), extract.load_atlas(m_query)
    assert (ma.maps != mb.maps).nnz == 0
    pd.testing.assert_frame_equal(ma.lut, mb.lut)

    bold, shape, affine = _bold(tmp_path)
    runs = []
    for sources in ([a, ma], [b, mb]):
        ops = extract.prepare(sources, shape, affine)
        runs.append(extract.extract_run(bold, ops))
    for name in ("S200", "ICA"):
        np.testing.assert_array_equal(runs[0].signals[name], runs[1].signals[name])
    assert runs[0].signals["S200"].shape[1] == 200
    sidecar = lut_sidecar("labels", list(a.lut.columns), r.template)
    assert list(sidecar) == list(a.lut.columns)
    assert sidecar["x"]["Units"] == "mm" and TPL_C in sidecar["x"]["Description"]


# --- BIDS-Atlas datasets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlas_dataset(shared_data, tmp_path_factory) -> Path:
    """A BIDS 1.11 atlas dataset (``tpl-<T>/anat/``), plus an XCP-D-style ``atlas-<A>/``."""
    root = tmp_path_factory.mktemp("atlas_dataset")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "Test atlases", "BIDSVersion": "1.11.0", "DatasetType": "derivative"})
    )
    (root / "atlas-Schaefer2018_description.json").write_text(
        json.dumps(
            {
                "AtlasName": "Schaefer 2018 local-global parcellation",
                "License": "MIT",
                "AtlasSampleSize": 1489,
                "ReferencesAndLinks": ["https://doi.org/10.1093/cercor/bhx179"],
            }
        )
    )
    labels = shared_data / "atlases/labels"
    six = root / f"tpl-{TPL_6}" / "anat"
    six.mkdir(parents=True)
    for n in (100, 200):
        stem = f"tpl-{TPL_6}_atlas-Schaefer2018_seg-17n_scale-{n}"
        os.symlink(labels / XCP.format(n=n), six / f"{stem}_res-2_dseg.nii.gz")
        write_tsv(xcp_as_tf_table(shared_data, n), six / f"{stem}_dseg.tsv")
    (six / f"tpl-{TPL_6}_atlas-Schaefer2018_dseg.json").write_text(json.dumps({"Name": "x"}))
    c = root / f"tpl-{TPL_C}" / "anat"
    c.mkdir(parents=True)
    stem = f"tpl-{TPL_C}_atlas-Schaefer2018_seg-7n_scale-200"
    os.symlink(labels / S200_1MM, c / f"{stem}_res-1_dseg.nii.gz")
    write_tsv(tf_table(200, "7Networks"), c / f"{stem}_dseg.tsv")
    legacy = root / "atlas-AAL"
    legacy.mkdir()
    os.symlink(
        labels / "AAL_space-MNI152NLin6_res-2x2x2.nii.gz",
        legacy / f"atlas-AAL_space-{TPL_6}_res-2_dseg.nii.gz",
    )
    shutil.copy(labels / "neuroparc_labels/AAL.csv", legacy / "atlas-AAL_dseg.tsv")
    return root


def ds_entry(root, **kwargs):
    return {"name": "D", "kind": "labels", "dataset": str(root), "atlas": "Schaefer2018", **kwargs}


@pytest.mark.shared
def test_dataset_entry_reads_the_bids_atlas_layout(atlas_dataset):
    r = resolve_atlas(ds_entry(atlas_dataset, seg="17n", scale=100, space=TPL_6), bold_space=TPL_6)
    assert r.image.name == f"tpl-{TPL_6}_atlas-Schaefer2018_seg-17n_scale-100_res-2_dseg.nii.gz"
    assert r.labels.name == f"tpl-{TPL_6}_atlas-Schaefer2018_seg-17n_scale-100_dseg.tsv"
    assert (r.template, r.template_from, r.source) == (TPL_6, "dataset", "dataset")
    desc = description_sidecar(r)
    assert desc["AtlasName"] == "Schaefer 2018 local-global parcellation"
    assert (desc["License"], desc["AtlasSampleSize"]) == ("MIT", 1489)
    assert desc["Source"]["Type"] == "BIDS-Atlas dataset"
    assert desc["Source"]["Dataset"] == "Test atlases"
    assert desc["Source"]["Entities"] == {"tpl": TPL_6, "seg": "17n", "scale": "100", "res": "2"}
    assert desc["Source"]["Description"] == "atlas-Schaefer2018_description.json"
    # the BOLD space is preferred; relative paths are taken from base_dir
    r = resolve_atlas(
        ds_entry(atlas_dataset.name, seg="7n"), bold_space=TPL_C, base_dir=atlas_dataset.parent
    )
    assert r.template == TPL_C and r.labels.name.endswith("seg-7n_scale-200_dseg.tsv")
    # XCP-D / BEP038 layout: atlas-<A>/ with a space- entity
    r = resolve_atlas(ds_entry(atlas_dataset, atlas="AAL"), bold_space=TPL_6)
    assert r.template == TPL_6 and r.labels.name == "atlas-AAL_dseg.tsv"


@pytest.mark.shared
def test_dataset_flat_xcpd_layout(shared_data, tmp_path):
    """XCP-D's atlas folder keeps images and tables side by side at the root, under the
    names ../shared/data has them (``tpl-..._atlas-Schaefer2018v0143_..._dseg.nii.gz``)."""
    labels = shared_data / "atlases/labels"
    for n in (100, 400):
        os.symlink(labels / XCP.format(n=n), tmp_path / XCP.format(n=n))
        os.symlink(labels / XCP_TSV.format(n=n), tmp_path / XCP_TSV.format(n=n))
    (tmp_path / "atlas-Schaefer2018v0143_description.json").write_text(
        json.dumps({"Name": "Schaefer 2018 (v0.14.3)", "License": "MIT"})
    )
    e = ds_entry(tmp_path, atlas="Schaefer2018v0143", desc="400Parcels17Networks")
    r = resolve_atlas(e, bold_space=TPL_6)
    assert (r.image.name, r.labels.name) == (XCP.format(n=400), XCP_TSV.format(n=400))
    assert r.template == TPL_6 and description_sidecar(r)["License"] == "MIT"
    src = extract.load_atlas(
        _cfg(name="D", kind="labels", image=str(r.image), labels=str(r.labels))
    )
    assert src.n_regions == 400 and src.region_names[0] == "17Networks_LH_VisCent_ExStr_1"


@pytest.mark.shared
def test_dataset_errors_name_what_exists(atlas_dataset, tmp_path):
    with pytest.raises(
        ConfigError, match=r"atlases\.D\.atlas: no atlas-Gordon .*AAL, Schaefer2018"
    ):
        resolve_atlas(ds_entry(atlas_dataset, atlas="Gordon"), bold_space=TPL_6)
    with pytest.raises(ConfigError, match="choose one with scale: 100 \\| 200"):
        resolve_atlas(ds_entry(atlas_dataset, seg="17n", space=TPL_6), bold_space=TPL_6)
    with pytest.raises(ConfigError, match=r"atlases\.D\.dataset: not a folder"):
        resolve_atlas(ds_entry(tmp_path / "nope"), bold_space=TPL_6)
    with pytest.raises(ConfigError, match="dataset: needs atlas:"):
        resolve_atlas(ds_entry(atlas_dataset, atlas=None), bold_space=TPL_6)
    with pytest.raises(ConfigError, match="no atlas-Schaefer2018 dseg image matches"):
        resolve_atlas(ds_entry(atlas_dataset, seg="kong17n"), bold_space=TPL_6)


@pytest.mark.shared
def test_dataset_atlas_only_in_another_template_fails_the_space_check(atlas_dataset):
    r = resolve_atlas(ds_entry(atlas_dataset, seg="17n", scale=200), bold_space=TPL_C)
    assert r.template == TPL_6
    with pytest.raises(
        ConfigError, match=f"in {TPL_6} \\(from its atlas dataset\\), but the BOLD is in {TPL_C}"
    ):
        check_space(r, TPL_C)
    assert "applied anyway" in check_space(r, TPL_C, allow_mismatch=True)


# --- through the command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_demo(tmp_path_factory) -> Path:
    """The demo's fMRIPrep folder (MNI152NLin2009cAsym, 2 mm): one participant, one run."""
    dest = tmp_path_factory.mktemp("atlas_cli")
    build_demo(dest, DemoSpec(n_subjects=1, n_sessions=1, n_volumes=60, seed=2))
    return dest / "fmriprep"


def _participant(bids: Path, folder: Path, atlas_entry: dict, *options: str) -> tuple[int, Path]:
    """The participant level through the CLI with one atlas; (exit code, OUTPUT_DIR)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "space": TPL_C,
                "denoise": {"name": "simple", "strategy": "simple", "high_pass": 0.01},
                "atlases": [atlas_entry],
                "connectivity": {"measures": ["correlation", "partialcorrelation"]},
            }
        )
    )
    out = folder / "out"
    args = [str(bids), str(out), "participant", "--config", str(cfg), "--no-reports"]
    code = main(args + ["--atlas-cache", str(folder / "cache"), *options])
    return code, out


def _outputs(out: Path) -> dict[str, bytes]:
    """The bytes of the run's tables and the atlas's lookup table, by file name."""
    files = [*out.glob("sub-01/func/*.tsv"), out / "atlas-S200_dseg.tsv"]
    return {p.name: p.read_bytes() for p in sorted(files)}


def _same_outputs(made: dict[str, bytes], reference: dict[str, bytes]) -> None:
    """Time series, coverage and lookup table: the same bytes; matrices: the same to 1e-9
    (a precision matrix inverted twice in one process can differ in the last bits)."""
    assert sorted(made) == sorted(reference)
    for name, data in made.items():
        if name.endswith("_relmat.tsv"):
            a, b = (np.loadtxt(io.BytesIO(d), skiprows=1) for d in (data, reference[name]))
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg=name)
        else:
            assert data == reference[name], name


@pytest.fixture(scope="module")
def by_path(cli_demo, tf_home, shared_data, tmp_path_factory) -> dict[str, bytes]:
    """Outputs of the Schaefer-200 atlas given by path (image and table)."""
    folder = tmp_path_factory.mktemp("by_path")
    table = f"tpl-{TPL_C}_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.tsv"
    labels = shutil.copy(tf_home / f"tpl-{TPL_C}" / table, folder / "names.tsv")
    image = shared_data / "atlases/labels" / S200_1MM
    entry_ = {"name": "S200", "kind": "labels", "image": str(image), "labels": str(labels)}
    code, out = _participant(cli_demo, folder, entry_)
    assert code == 0
    made = _outputs(out)
    ts = "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_atlas-S200_desc-simple_timeseries.tsv"
    assert ts in made and len(made[ts].split(b"\n")[0].split(b"\t")) == 200
    assert len(made) == 5  # time series, coverage, 2 matrices, lookup table
    return made


@pytest.mark.shared
@pytest.mark.slow
def test_cli_templateflow_entry_gives_the_same_outputs_as_the_path(
    cli_demo, tf_home, by_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tf_home))
    query = {**S200, "resolution": 1}
    code, out = _participant(cli_demo, tmp_path, entry(name="S200", templateflow=query))
    assert code == 0
    _same_outputs(_outputs(out), by_path)
    source = json.loads((out / "atlas-S200_description.json").read_text())["Source"]
    assert source["Type"] == "TemplateFlow"
    assert source["Files"]["image"] == f"tpl-{TPL_C}/{S200_1MM}"


@pytest.mark.shared
@pytest.mark.slow
def test_cli_dataset_entry_gives_the_same_outputs_as_the_path(
    cli_demo, atlas_dataset, by_path, tmp_path
):
    code, out = _participant(cli_demo, tmp_path, ds_entry(atlas_dataset, name="S200", seg="7n"))
    assert code == 0
    _same_outputs(_outputs(out), by_path)
    source = json.loads((out / "atlas-S200_description.json").read_text())["Source"]
    assert source["Type"] == "BIDS-Atlas dataset"
    assert source["Entities"] == {"tpl": TPL_C, "seg": "7n", "scale": "200", "res": "1"}


@pytest.mark.shared
@pytest.mark.slow
def test_cli_missing_query_exits_64_with_query_folder_and_fetch_command(
    cli_demo, tf_home, tmp_path, capsys
):
    query = {"atlas": "Schaefer2018", "desc": "400Parcels7Networks", "resolution": 2}
    home = tf_home  # the home exists, without this atlas; given by the flag, not the variable
    code, out = _participant(
        cli_demo, tmp_path, entry(name="S400", templateflow=query), "--templateflow-home", str(home)
    )
    assert code == 64
    err = capsys.readouterr().err
    assert f"invalid configuration {tmp_path / 'cfg.yaml'}" in err
    assert "atlases.S400.templateflow: " in err
    assert "atlas: Schaefer2018" in err and "desc: 400Parcels7Networks" in err
    assert "resolution: 2" in err
    assert f"searched: {home / f'tpl-{TPL_C}'}" in err
    assert f"bids-connectome-atlases fetch {tmp_path / 'cfg.yaml'} --to {home}" in err
    assert not out.exists()


# --- files and the space check ----------------------------------------------------------------


def test_template_from_file_names():
    assert template_from_name(S200_1MM) == (TPL_C, f"tpl-{TPL_C}")
    assert template_from_name(XCP.format(n=400)) == (TPL_6, f"tpl-{TPL_6}")
    # neuroparc's FSL MNI152 is MNI152NLin6Asym
    assert template_from_name("AAL_space-MNI152NLin6_res-2x2x2.nii.gz") == (
        TPL_6,
        "space-MNI152NLin6",
    )
    assert template_from_name("x_space-MNI152NLin6Sym_dseg.nii.gz")[0] == "MNI152NLin6Sym"
    assert template_from_name("x_space-fsLR_den-32k_dseg.dlabel.nii")[0] == "fsLR"
    assert template_from_name("x_space-MNI_dseg.nii.gz") == (None, "space-MNI")
    assert template_from_name("atlas_harvard_oxford_prob4d.nii.gz") == (None, None)


@pytest.mark.shared
def test_benchmark_old_configuration_fails_the_space_check(shared_data, tmp_path, capsys):
    """benchmarks/bench_extraction.py before the fix: MNI152NLin6Asym Schaefer-400 on
    MNI152NLin2009cAsym BOLD, the HO maps of unknown template, Power-264 spheres. Through
    load_config and the command line: exit 64 naming both templates, nothing written."""
    labels = shared_data / "atlases/labels"
    old = {
        "space": TPL_C,
        "atlases": [
            {
                "name": "Schaefer400",
                "kind": "labels",
                "image": str(labels / XCP.format(n=400)),
                "labels": str(labels / XCP_TSV.format(n=400)),
            },
            {
                "name": "HOprob",
                "kind": "maps",
                "image": str(shared_data / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz"),
                "labels": str(shared_data / "atlases/maps/labels_harvard_oxford.csv"),
            },
            {"name": "Power264", "kind": "spheres", "coordinates": "power2011", "radius": 5},
        ],
    }
    path = tmp_path / "bench_old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError) as err:  # what every entry point reads a config with
        load_config(path)
    assert err.value.exit_code == 64
    text = str(err.value)
    assert text.startswith(f"invalid configuration {path}")
    assert (
        f"atlases.Schaefer400: the atlas is in {TPL_6} (from tpl-{TPL_6} in its file name)" in text
    )
    assert f"the BOLD is in {TPL_C}" in text and "allow_space_mismatch" in text
    assert "HOprob" not in text and "Power264" not in text  # the others are fine
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    assert main([str(bids), str(out), "participant", "--config", str(path)]) == 64
    err_text = capsys.readouterr().err
    assert f"the atlas is in {TPL_6}" in err_text and f"the BOLD is in {TPL_C}" in err_text
    assert not out.exists()
    s400, ho, power = (resolve_atlas(e, bold_space=old["space"]) for e in old["atlases"])
    assert "unknown" in check_space(ho, TPL_C) and "space: <template>" in check_space(ho, TPL_C)
    assert check_space(power, TPL_C) is None
    # the fix: the space-correct file (or allow_space_mismatch: true)
    fixed = resolve_atlas(entry(image=str(labels / S200_1MM)), bold_space=TPL_C)
    assert check_space(fixed, TPL_C) is None
    assert check_space(s400, TPL_C, allow_mismatch=True).startswith("atlases.Schaefer400")


def test_space_key_declares_and_must_agree_with_the_name(tmp_path):
    img = tmp_path / "atlas.nii.gz"
    img.write_bytes(b"x")
    r = resolve_atlas(entry(image=str(img), space="MNI152NLin6"), bold_space=TPL_6)
    assert (r.template, r.template_from) == (TPL_6, "space key")
    assert check_space(r, TPL_6) is None
    r = resolve_atlas(entry(image=str(img), space="MNI152NLin6Sym"), bold_space=TPL_6)
    with pytest.raises(ConfigError, match="MNI152NLin6Sym .*MNI152NLin6Asym"):
        check_space(r, TPL_6)  # taken literally: Sym is not Asym
    named = tmp_path / f"tpl-{TPL_C}_atlas-X_dseg.nii.gz"
    named.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"atlases.A.space: {TPL_6}, but the file name says tpl-"):
        resolve_atlas(entry(image=str(named), space=TPL_6), bold_space=TPL_C)
    r = resolve_atlas(entry(image=str(img)), bold_space="T1w")
    assert "unknown" in check_space(r, "T1w")
    assert description_sidecar(r)["Source"] == {
        "Type": "file",
        "Files": {"image": "atlas.nii.gz"},
        "Digests": {"image": atlases.sha256(img)},
    }


def test_source_keys_must_fit_together():
    assert "exactly one" in source_error(entry(image="a", templateflow={"atlas": "X"}))
    assert "give the atlas as" in source_error(entry())
    assert "only go inside templateflow" in source_error(
        entry(templateflow={"atlas": "X"}, desc="a")
    )
    assert "only go with dataset" in source_error(entry(image="a", atlas="X"))
    assert source_error({"name": "P", "kind": "spheres", "coordinates": "power2011"}) is None
    with pytest.raises(ConfigError, match=r"^atlases\.A: give exactly one"):
        resolve_atlas(entry(image="a", dataset="b", atlas="X"), bold_space=TPL_C)


def test_lut_sidecar_describes_every_column():
    cols = ["index", "name", "x", "y", "z", "radius", "network", "lobe"]
    sidecar = lut_sidecar("spheres", cols)
    assert list(sidecar) == cols
    assert "seed" in sidecar["x"]["Description"] and sidecar["radius"]["Units"] == "mm"
    assert sidecar["lobe"] == {"Description": "Column lobe of the atlas's lookup table"}
    with_meta = lut_sidecar("labels", ["index"], metadata={"AtlasName": "A"})
    assert list(with_meta) == ["AtlasName", "index"]


# --- bids-connectome-atlases fetch / list -----------------------------------------------------


@pytest.fixture
def fake_remote(tf_home, monkeypatch):
    """TemplateFlow's index and S3 replaced by the fixture home (``tf_home`` as the remote)."""
    fetched = []

    def remote_index(template, update=False):
        return atlases.templateflow_index(tf_home, template)

    def download(url, dest, timeout=60.0):
        rel = url.removeprefix(atlases.S3_ROOT + "/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tf_home / rel, dest)
        fetched.append(rel)
        return dest.stat().st_size

    monkeypatch.setattr(fetch, "remote_index", remote_index)
    monkeypatch.setattr(fetch, "download", download)
    return fetched


def write_config(tmp_path: Path, *atlas_entries, space=TPL_C) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"space": space, "atlases": list(atlas_entries)}))
    return path


@pytest.mark.shared
def test_fetch_downloads_what_the_config_needs(fake_remote, tmp_path, capsys):
    cfg = write_config(
        tmp_path,
        entry(name="S200", templateflow={**S200, "resolution": 1}),
        {
            "name": "ICA",
            "kind": "maps",
            "templateflow": {"atlas": "CanICA", "desc": "20components"},
        },
        {"name": "P", "kind": "spheres", "coordinates": "power2011"},
    )
    dest = tmp_path / "tf"
    assert fetch.main(["fetch", str(cfg), "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"fetched  tpl-{TPL_C}/{S200_1MM}" in out and f"TEMPLATEFLOW_HOME={dest}" in out
    assert sorted(fake_remote) == sorted(
        f"tpl-{TPL_C}/{n}"
        for n in (
            S200_1MM,
            f"tpl-{TPL_C}_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.tsv",
            f"tpl-{TPL_C}_res-04_atlas-CanICA_desc-20components_probseg.nii.gz",
            f"tpl-{TPL_C}_atlas-CanICA_desc-20components_probseg.tsv",
            f"tpl-{TPL_C}_atlas-CanICA_probseg.json",
        )
    )
    assert fetch.main(["fetch", str(cfg), "--to", str(dest)]) == 0  # again: nothing new
    assert "present  " in capsys.readouterr().out and len(fake_remote) == 5
    # the fetched home is a TemplateFlow home the app reads offline
    assert fetch.main(["list", str(cfg), "--templateflow-home", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"S200: present [templateflow, {TPL_C}] {dest}" in out and "P: present" in out


@pytest.mark.shared
def test_fetch_query_form_and_errors(fake_remote, tmp_path, capsys):
    dest = tmp_path / "tf"
    q = f"tpl-{TPL_6}_atlas-Schaefer2018_desc-100Parcels17Networks_res-2_dseg"
    assert fetch.main(["fetch", "--query", q, "--to", str(dest)]) == 0
    assert (
        dest
        / f"tpl-{TPL_6}"
        / f"tpl-{TPL_6}_res-02_atlas-Schaefer2018_desc-100Parcels17Networks_dseg.nii.gz"
    ).is_file()
    capsys.readouterr()
    missing = f"tpl-{TPL_6}_atlas-Schaefer2018_desc-400Parcels17Networks_dseg"
    assert fetch.main(["fetch", "--query", missing, "--to", str(dest)]) == 64
    err = capsys.readouterr().err
    assert "no atlas-Schaefer2018 dseg image matches" in err and "--update-index" in err
    assert fetch.main(["fetch", "--query", "atlas-X_dseg", "--to", str(dest)]) == 64
    with pytest.raises(SystemExit) as done:  # usage errors exit 64, as the app's
        fetch.main(["fetch", "--to", str(dest), "--bogus"])
    assert done.value.code == 64


@pytest.mark.shared
def test_list_reports_missing_atlases_and_space_errors(tf_home, shared_data, tmp_path, capsys):
    cfg = write_config(
        tmp_path,
        entry(name="S400", templateflow={"atlas": "Schaefer2018", "desc": "400Parcels7Networks"}),
        entry(name="Old", image=str(shared_data / "atlases/labels" / XCP.format(n=400))),
    )
    empty = tmp_path / "empty_home"
    assert fetch.main(["list", str(cfg), "--templateflow-home", str(empty)]) == 64
    out = capsys.readouterr().out
    assert "S400: MISSING" in out and f"fetch {cfg} --to {empty}" in out
    assert (
        f"Old: present [file, {TPL_6}]" in out
        and f"space: ERROR atlases.Old: the atlas is in {TPL_6}" in out
    )


@pytest.mark.shared
def test_allow_network_fetches_a_missing_query(fake_remote, tmp_path):
    home = tmp_path / "home"
    r = resolve_atlas(
        entry(templateflow={**S200, "resolution": 1}),
        bold_space=TPL_C,
        templateflow_home=home,
        allow_network=True,
    )
    assert r.image == home / f"tpl-{TPL_C}" / S200_1MM and r.image.is_file()
    assert len(fake_remote) == 2


def test_real_templateflow_index_is_read_offline(tmp_path, monkeypatch):
    """The templateflow client's own file list, unpacked without network and without
    touching the user's TemplateFlow home."""
    import importlib.util

    if importlib.util.find_spec("templateflow") is None:  # not importorskip: importing it
        pytest.skip("templateflow is not installed")  # would write into the default home
    monkeypatch.setattr(fetch, "_INDEX_HOME", None)
    user_home = tmp_path / "user_home"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(user_home))
    files = fetch.remote_index(TPL_C)
    request = atlases.parse_request(
        f"tpl-{TPL_C}_atlas-Schaefer2018_desc-400Parcels7Networks_res-2_dseg"
    )
    image, table, _ = atlases.find_templateflow(request, files, "index")
    assert (
        image.rel.name
        == f"tpl-{TPL_C}_res-02_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"
    )
    assert table.rel.name == f"tpl-{TPL_C}_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv"
    assert not user_home.exists() or not any(user_home.iterdir())
    assert os.environ["TEMPLATEFLOW_HOME"] == str(user_home)


# --- what the configuration does with it --------------------------------------------------------


def _proposed_model():
    """The labels entry of the schema as proposed for config.py (the lead's integration)."""
    from typing import Any

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    from bids_app.atlases import Label, TemplateFlowQuery

    class LabelsAtlas(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        name: Label
        kind: str = "labels"
        image: Path | None = None
        labels: Path | None = None
        templateflow: TemplateFlowQuery | None = None
        dataset: Path | None = None
        atlas: Label | None = None
        desc: Label | None = None
        seg: Label | None = None
        scale: int | Label | None = None
        res: int | Label | None = None
        space: Label | None = None
        allow_space_mismatch: bool = False
        metadata: dict[str, Any] = Field(default_factory=dict)

        @model_validator(mode="after")
        def _one_source(self):
            error = source_error(self)
            if error:
                raise ValueError(error)
            return self

    return LabelsAtlas


@pytest.mark.shared
def test_resolve_entries_gives_file_entries_and_all_errors(tf_home, shared_data):
    model = _proposed_model()
    query = model(name="S200", templateflow={**S200, "resolution": 1})
    by_path = model(name="S200", image=str(shared_data / "atlases/labels" / S200_1MM))
    done, warnings = atlases.resolve_entries(
        [query, by_path], bold_space=TPL_C, templateflow_home=tf_home
    )
    (q_entry, q_res), (p_entry, _) = done
    assert isinstance(q_entry, model) and q_entry.templateflow is None
    assert (q_entry.image, q_entry.labels) == (q_res.image, q_res.labels)
    assert q_entry.space is None and q_res.template == TPL_C  # the template found is kept aside
    model.model_validate(q_entry.model_dump())  # still a valid entry
    assert p_entry.space is None and warnings == []
    # given the same files by path, the entry is the same but for where the image lives
    ((same, _),) = atlases.resolve_entries(
        [by_path.model_copy(update={"labels": q_res.labels})], bold_space=TPL_C
    )[0]
    assert same.model_dump() | {"image": None} == q_entry.model_dump() | {"image": None}
    # a mapping works too; the unknown template is a warning
    ho = {
        "name": "HO",
        "kind": "maps",
        "image": str(shared_data / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz"),
    }
    ((d_entry, _),) = atlases.resolve_entries([ho], bold_space=TPL_C)[0]
    assert d_entry == ho
    assert "unknown" in atlases.resolve_entries([ho], bold_space=TPL_C)[1][0]
    # every problem at once, with the configuration file named
    bad = [
        model(name="S400", templateflow={"atlas": "Schaefer2018", "desc": "400Parcels7Networks"}),
        model(name="Old", image=str(shared_data / "atlases/labels" / XCP.format(n=400))),
    ]
    with pytest.raises(ConfigError) as err:
        atlases.resolve_entries(
            bad, bold_space=TPL_C, templateflow_home=tf_home, config_path="c.yaml"
        )
    text = str(err.value)
    assert text.startswith("invalid configuration c.yaml:")
    assert "atlases.S400.templateflow:" in text and "atlases.Old: the atlas is in" in text
    allowed = model(name="Old", image=bad[1].image, allow_space_mismatch=True)
    assert "applied anyway" in atlases.resolve_entries([allowed], bold_space=TPL_C)[1][0]
    with pytest.raises(ValueError, match="exactly one"):
        model(name="X", image="a.nii.gz", templateflow={"atlas": "A"})


@pytest.mark.shared
def test_download_is_atomic_and_reports_failures(tf_home, tmp_path):
    """The real downloader against a loopback HTTP server serving the fixture home."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tf_home))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        dest = tmp_path / "home" / f"tpl-{TPL_C}" / S200_1MM
        n = fetch.download(f"{base}/tpl-{TPL_C}/{S200_1MM}", dest, timeout=10)
        assert n == dest.stat().st_size == (tf_home / f"tpl-{TPL_C}" / S200_1MM).stat().st_size
        assert [p.name for p in dest.parent.iterdir()] == [S200_1MM]  # no .part left
        with pytest.raises(fetch.DownloadError, match="cannot download .*nothing.nii.gz") as err:
            fetch.download(f"{base}/nothing.nii.gz", tmp_path / "x.nii.gz", timeout=10)
        assert err.value.exit_code == 1 and not (tmp_path / "x.nii.gz").exists()
    finally:
        server.shutdown()
        server.server_close()

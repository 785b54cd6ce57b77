"""Speed and memory of bids-connectome against the equivalent nilearn 0.14.1 script.

Builds (once, kept in --work) a one-run fMRIPrep-like dataset with a
(97, 115, 97, 300) float32 ``.nii.gz`` BOLD on the MNI152NLin2009cAsym 2 mm
grid (the demo generator, with full-precision noise so that it compresses
like real data), and three atlases:

* labels: Schaefer-400 (17 networks, 2 mm, ../shared/data), or with
  ``--schaefer 200`` the 1 mm MNI152NLin2009cAsym Schaefer-200 (7 networks).
  NOTE: the Schaefer-400 file is in MNI152NLin6Asym while the BOLD is in
  MNI152NLin2009cAsym; both apps just resample it to the BOLD grid. It is the
  default because it is the workload the performance issue was measured on
  (timing and memory do not depend on the template); the printout says so, and
  the entry gets ``allow_space_mismatch: true`` when the config knows that
  option (the app checks atlas spaces). ``--schaefer 200`` is the space-correct
  choice;
* maps: the Harvard-Oxford probabilistic atlas, 113 maps at **1 mm** as stored
  (``atlas_harvard_oxford_prob4d.nii.gz``, uint8), given directly to both apps,
  which resample it to the BOLD grid (default, ``--maps ho1mm``); or with
  ``--maps ho64`` the first 64 maps resampled once to the 2 mm grid (the earlier
  workload, no resampling inside the apps);
* Power-264 spheres, radius 5 mm.

Each side runs in its own fresh process (wall time of the whole process and its
peak RSS), then the outputs are compared:

* default (full): ``bids-connectome participant`` (simple denoising,
  correlation + partial correlation) versus nilearn's ``load_confounds_strategy``
  + the three maskers + ``ConnectivityMeasure``, and the floor: decompressing
  the BOLD alone with ISA-L (``isal.igzip_threaded``, as our reader does);
* ``--engine-only``: ``extract.load_atlas/prepare/extract_run`` versus the three
  nilearn maskers without denoising (+ the floor, + ``prepare`` with an empty
  and then a filled on-disk operator cache).

``--volumes 1200`` (any N other than 300) also runs the 300-volume case and
prints both sizes side by side, so that the growth of time and memory with the
run length can be read. The longer BOLD repeats the 300 volumes (streamed; the
dataset is never in memory). nilearn holds the whole 4D image in memory, so
it only runs at 300 volumes unless ``--nilearn-all-sizes``.

In the default mode it also prints, three times each, the imports the job needs
before its first volume (the modules loaded when it asks for it, imported again in
a bare interpreter) and the cold 1 mm maps atlas (``load_atlas`` + its operator on
the BOLD grid, no cache).

The short sides (ours, ours-reports, floor) run ``--repeat`` times (3) and the
median is reported: the speed of a shared machine drifts within minutes.

Usage: ``python benchmarks/bench_extraction.py [--engine-only] [--volumes 1200]
[--maps ho1mm|ho64] [--schaefer 400|200] [--repeat N] [--work DIR]``.
Needs nilearn (the test extra) and ../shared/data. Run it on a quiet machine
(``uptime``): both sides are CPU bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LABELS = SHARED / "atlases/labels"
SCHAEFER = {
    "400": (
        LABELS
        / "tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-400Parcels17Networks_dseg.nii.gz",
        LABELS / "atlas-Schaefer2018v0143_desc-400Parcels17Networks_dseg.tsv",
        "MNI152NLin6Asym",
    ),
    "200": (
        LABELS
        / "tpl-MNI152NLin2009cAsym_res-01_atlas-Schaefer2018_desc-200Parcels7Networks_dseg.nii.gz",
        None,
        "MNI152NLin2009cAsym",
    ),
}
HO = SHARED / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz"
HO_NAMES = SHARED / "atlases/maps/labels_harvard_oxford.csv"
POWER = SHARED / "atlases/coords/power_2011.csv"
DENOISE = {"strategy": "simple", "detrend": True, "standardize": "zscore_sample", "high_pass": 0.01}
BASE_VOLUMES = 300
SPACE = "MNI152NLin2009cAsym"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- setup -------------------------------------------------------------------------------------


def _write_gz_volumes(dest: Path, header, volumes) -> None:
    """A .nii.gz from a header and an iterable of volumes (gzip level 1, as nibabel writes)."""
    import gzip

    tmp = dest.with_name("tmp_" + dest.name)
    offset = int(header.get_data_offset()) or 352
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        raw = header.binaryblock
        fh.write(raw + b"\0" * (offset - len(raw)))
        for vol in volumes:
            fh.write(np.asarray(vol, dtype="<f4").tobytes())
    tmp.replace(dest)


def roughen(bold: Path, mask_path: Path) -> None:
    """Add full-precision noise inside the brain: the demo's whole numbers compress ~11x,
    real fMRIPrep BOLD ~2x, and decompression time is what matters here. Streamed,
    volume by volume."""
    import nibabel as nib

    from bids_app.extract.stream import VolumeReader

    img = nib.load(bold)
    mask = (np.asanyarray(nib.load(mask_path).dataobj) != 0).reshape(-1, order="F")
    rng = np.random.default_rng(0)
    header = img.header.copy()
    header.set_data_dtype(np.float32)

    def noisy():
        for vol in VolumeReader(bold):
            out = vol.astype(np.float32)
            out[mask] += rng.standard_normal(int(mask.sum()), dtype=np.float32)
            yield out

    _write_gz_volumes(bold, header, noisy())


def _build_base(work: Path) -> dict:
    from bids_app.demo import DemoSpec, build_demo

    root = work / "demo"
    print(f"building the {BASE_VOLUMES}-volume dataset in {root} (once) ...", flush=True)
    build_demo(root, DemoSpec(n_subjects=1, n_sessions=1, n_volumes=BASE_VOLUMES, seed=7))
    func = root / "fmriprep" / "sub-01" / "func"
    roughen(
        next(func.glob("*_desc-preproc_bold.nii.gz")), next(func.glob("*_desc-brain_mask.nii.gz"))
    )
    return _dataset_info(root / "fmriprep")


def _dataset_info(bids: Path) -> dict:
    func = bids / "sub-01" / "func"
    return {
        "bids": str(bids),
        "bold": str(next(func.glob("*_desc-preproc_bold.nii.gz"))),
        "mask": str(next(func.glob("*_desc-brain_mask.nii.gz"))),
        "confounds": str(next(func.glob("*_desc-confounds_timeseries.tsv"))),
    }


def _build_longer(work: Path, base: dict, n_volumes: int) -> dict:
    """The base dataset with a BOLD of ``n_volumes``: its volumes repeated (streamed), the
    confounds rows repeated (row 0's n/a and the non-steady-state volumes only once)."""
    import shutil

    import nibabel as nib
    import pandas as pd

    from bids_app.extract.stream import VolumeReader

    src = Path(base["bids"])
    dest = work / f"demo-{n_volumes}" / "fmriprep"
    print(f"building the {n_volumes}-volume dataset in {dest} (once) ...", flush=True)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*_desc-preproc_bold.nii.gz"))
    info = {k: str(dest / Path(v).relative_to(src)) for k, v in base.items() if k != "bids"}
    info["bids"] = str(dest)
    header = nib.load(base["bold"]).header.copy()
    header.set_data_shape(header.get_data_shape()[:3] + (n_volumes,))

    def volumes():
        done = 0
        while done < n_volumes:
            for vol in VolumeReader(base["bold"]):
                if done == n_volumes:
                    return
                yield vol
                done += 1

    _write_gz_volumes(Path(info["bold"]), header, volumes())
    table = pd.read_csv(base["confounds"], sep="\t", keep_default_na=False, dtype=str)
    n0 = len(table)
    # row t of the longer run: row t % n0 of the table, but never row 0 again (its n/a values)
    rows = [t % n0 if t < n0 or t % n0 else 1 for t in range(n_volumes)]
    longer = table.iloc[rows].reset_index(drop=True)
    for col in longer.columns:
        if col.startswith("non_steady_state") or col.startswith("motion_outlier"):
            longer.loc[n0:, col] = "0"
    longer.to_csv(info["confounds"], sep="\t", index=False)
    return info


def build(work: Path, n_volumes: int) -> dict:
    """The dataset of ``n_volumes`` (built once; the base one first if needed)."""
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / f"built-{n_volumes}.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    if n_volumes == BASE_VOLUMES:
        info = _build_base(work)
    else:
        info = _build_longer(work, build(work, BASE_VOLUMES), n_volumes)
    stamp.write_text(json.dumps(info))
    return info


def _ho64(work: Path) -> Path:
    """The first 64 Harvard-Oxford maps resampled once to the BOLD grid (``--maps ho64``)."""
    import nibabel as nib

    from bids_app.demo import GRID_AFFINE, GRID_SHAPE
    from bids_app.extract.atlas import resample

    path = work / "ho64_2mm.nii.gz"
    if not path.is_file():
        img = nib.load(HO)
        maps = np.zeros(GRID_SHAPE + (64,), dtype=np.float32)
        for k in range(64):
            vol = np.asarray(img.dataobj[..., k], dtype=np.float32)
            maps[..., k] = resample(vol, img.affine, GRID_SHAPE, GRID_AFFINE, order=1)
        nib.Nifti1Image(maps, GRID_AFFINE).to_filename(path)
    return path


def _config_accepts(entry: dict) -> bool:
    """Whether this version of the config knows every option of an atlas entry."""
    from bids_app.config import parse_config
    from bids_app.errors import ConfigError

    try:
        parse_config({"atlases": [entry]}, Path("/"))
    except ConfigError:
        return False
    return True


def write_config(work: Path, maps: str, schaefer: str) -> dict:
    """The config file of one workload and what the nilearn side needs."""
    import yaml

    labels_img, labels_tsv, _ = SCHAEFER[schaefer]
    labels_name = f"Schaefer{schaefer}"
    if maps == "ho1mm":
        maps_name, maps_img = "HOprob", HO
    else:
        maps_name, maps_img = "HO64", _ho64(work)
    labels_atlas = {"name": labels_name, "kind": "labels", "image": str(labels_img)}
    if labels_tsv is not None:
        labels_atlas["labels"] = str(labels_tsv)
    if SCHAEFER[schaefer][2] != SPACE and _config_accepts(
        dict(labels_atlas, allow_space_mismatch=True)
    ):
        labels_atlas["allow_space_mismatch"] = True  # the app checks atlas spaces
    # FSL's Harvard-Oxford maps are in MNI152NLin6Asym (FSL's MNI152): said, and allowed
    maps_atlas = {"name": maps_name, "kind": "maps", "image": str(maps_img)}
    if _config_accepts(dict(maps_atlas, space="MNI152NLin6Asym", allow_space_mismatch=True)):
        maps_atlas.update(space="MNI152NLin6Asym", allow_space_mismatch=True)
    if maps == "ho1mm":
        maps_atlas["labels"] = str(HO_NAMES)
    config = {
        "space": SPACE,
        "denoise": {"name": "simple", **DENOISE},
        "atlases": [
            labels_atlas,
            maps_atlas,
            {"name": "Power264", "kind": "spheres", "coordinates": "power2011", "radius": 5},
        ],
        "connectivity": {
            "measures": ["correlation", "partialcorrelation"],
            "estimator": "ledoit_wolf",
        },
    }
    path = work / f"bench-{maps}-schaefer{schaefer}.yaml"
    path.write_text(yaml.safe_dump(config))
    return {
        "config": str(path),
        "labels": [labels_name, str(labels_img)],
        "maps": [maps_name, str(maps_img)],
    }


# --- children ----------------------------------------------------------------------------------


def child_ours_engine(info: dict, out: Path) -> dict:
    import nibabel as nib

    from bids_app import extract
    from bids_app.config import load_config

    t0 = time.perf_counter()
    cfg = load_config(info["config"])
    sources = [extract.load_atlas(a) for a in cfg.atlases]
    t1 = time.perf_counter()
    shape, affine, _ = extract.read_header(info["bold"])
    mask = np.asanyarray(nib.load(info["mask"]).dataobj) != 0
    ops = extract.prepare(sources, shape[:3], affine, mask)
    t2 = time.perf_counter()
    run = extract.extract_run(info["bold"], ops)
    t3 = time.perf_counter()
    np.savez(out, **run.signals)
    return {"load_atlas": t1 - t0, "prepare": t2 - t1, "extract_run": t3 - t2}


def child_ours_cache(info: dict, out: Path) -> dict:
    """``prepare`` with an empty on-disk cache, then again from the cache (engine mode)."""
    import shutil
    import tempfile

    import nibabel as nib

    from bids_app import extract
    from bids_app.config import load_config

    cfg = load_config(info["config"])
    sources = [extract.load_atlas(a) for a in cfg.atlases]
    shape, affine, _ = extract.read_header(info["bold"])
    mask = np.asanyarray(nib.load(info["mask"]).dataobj) != 0
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        t0 = time.perf_counter()
        extract.prepare(sources, shape[:3], affine, mask, cache_dir=cache_dir)
        t1 = time.perf_counter()
        extract.prepare(sources, shape[:3], affine, mask, cache_dir=cache_dir)
        t2 = time.perf_counter()
        grid = extract.prepare_grid(sources, shape[:3], affine, cache_dir=cache_dir)
        t3 = time.perf_counter()
        extract.apply_mask(grid, mask)
        t4 = time.perf_counter()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "prepare_cache_miss": t1 - t0,
        "prepare_cache_hit": t2 - t1,
        "of_which_grid": t3 - t2,
        "of_which_mask": t4 - t3,
    }


def _nilearn_maskers(info: dict, **common):
    import nibabel as nib
    import pandas as pd
    from nilearn.maskers import NiftiLabelsMasker, NiftiMapsMasker, NiftiSpheresMasker

    from bids_app.extract.spheres import sphere_members

    seeds = pd.read_csv(POWER)[["X", "Y", "Z"]].to_numpy()
    # nilearn refuses spheres without a voxel in the mask (we keep them as n/a columns)
    mask_img = nib.load(info["mask"])
    mask = np.asanyarray(mask_img.dataobj) != 0
    members = sphere_members(seeds, 5.0, mask.shape, mask_img.affine, mask)
    seeds = seeds[[len(m) > 0 for m in members]].tolist()
    (labels_name, labels_img), (maps_name, maps_img) = info["labels"], info["maps"]
    return {
        labels_name: NiftiLabelsMasker(labels_img, mask_img=info["mask"], **common),
        maps_name: NiftiMapsMasker(maps_img, mask_img=info["mask"], **common),
        "Power264": NiftiSpheresMasker(seeds, radius=5, mask_img=info["mask"], **common),
    }


def child_nilearn_engine(info: dict, out: Path) -> dict:
    signals = {}
    for name, masker in _nilearn_maskers(info).items():
        signals[name] = masker.fit_transform(info["bold"])
    np.savez(out, **signals)
    return {}


def _ours_cli(info: dict, out: Path, cache: Path, *extra: str) -> NoReturn:
    """The console script's entry point, which ends the process (its exit code is the
    child's; the report line is printed by an exit handler, see ``main``)."""
    from bids_app.cli import run

    args = [info["bids"], str(out), "participant", "--config", info["config"]]
    run(args + ["--atlas-cache", str(cache), *extra])


def child_ours_cli(info: dict, out: Path) -> dict:
    """The job as a cohort runs it: atlases already prepared for this grid (cache), no reports."""
    return _ours_cli(info, out, Path(info["work"]) / "atlas-cache", "--no-reports")


def child_ours_cli_cold(info: dict, out: Path) -> dict:
    """The first job of a cohort: an empty atlas cache (it fills the cache), no reports."""
    import shutil

    cache = Path(info["work"]) / "atlas-cache"
    shutil.rmtree(cache, ignore_errors=True)
    return _ours_cli(info, out, cache, "--no-reports")


def child_ours_cli_reports(info: dict, out: Path) -> dict:
    """The default run (with the HTML report and its figures) of a participant of a cohort
    whose first job ran: the atlas cache holds the operators and the rendered glass brain."""
    return _ours_cli(info, out, Path(info["work"]) / "atlas-cache")


def child_ours_cli_reports_first(info: dict, out: Path) -> dict:
    """The first job of a cohort with reports: renders the glass brain into the cache."""
    return _ours_cli(info, out, Path(info["work"]) / "atlas-cache")


STARTUP = """
import json, sys, threading
seen = {}
start = threading.Thread.start
def noting_start(self):
    target = getattr(self, "_target", None)
    if "modules" not in seen and "_decompress" in getattr(target, "__qualname__", ""):
        seen["modules"] = list(sys.modules)
    start(self)
threading.Thread.start = noting_start
from bids_app.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump(seen.get("modules", []), fh)
sys.exit(code)
"""


def child_ours_startup(info: dict, out: Path) -> dict:
    """The warm job (as ``ours``) in a bare interpreter, noting the modules loaded when the
    BOLD's first volume is requested (ISA-L's decompression thread starts);
    :func:`child_imports` times them."""
    args = [info["bids"], str(out), "participant", "--config", info["config"]]
    args += ["--atlas-cache", str(Path(info["work"]) / "atlas-cache"), "--no-reports"]
    modules = out.with_suffix(".modules.json")
    subprocess.run([sys.executable, "-c", STARTUP, str(modules), *args], check=True)
    return {}


REPLAY = """
import importlib, json, sys, time
wanted = json.loads(sys.argv[1])
t0 = time.perf_counter()
for name in wanted:
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except Exception:  # a private module only its parent imports
            pass
print(time.perf_counter() - t0)
"""


def child_imports(info: dict, out: Path) -> dict:
    """Wall time of importing, in a bare interpreter (``python -c``), the modules the job had
    loaded when it asked for its first volume (:func:`child_ours_startup`), in their order;
    the interpreter's own start-up modules are not counted."""
    wanted = out.with_suffix(".modules.json").read_text()
    proc = subprocess.run(
        [sys.executable, "-c", REPLAY, wanted], capture_output=True, text=True, check=True
    )
    return {"imports": float(proc.stdout.strip())}


def child_maps_atlas(info: dict, out: Path) -> dict:
    """The 1 mm maps atlas of a cold job: read and described (``load_atlas``), then its
    operator for the BOLD grid (``prepare_grid``), no cache."""
    from bids_app import extract
    from bids_app.config import load_config

    cfg = load_config(info["config"])
    maps_cfg = next(a for a in cfg.atlases if a.kind == "maps")
    shape, affine, _ = extract.read_header(info["bold"])
    t0 = time.perf_counter()
    source = extract.load_atlas(maps_cfg)
    t1 = time.perf_counter()
    extract.prepare_grid([source], shape[:3], affine)
    t2 = time.perf_counter()
    return {"load": t1 - t0, "prepare": t2 - t1, "maps_atlas": t2 - t0}


def child_nilearn_cli(info: dict, out: Path) -> dict:
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    confounds, sample_mask = load_confounds_strategy(info["bold"], denoise_strategy="simple")
    common = {
        "detrend": True,
        "standardize": "zscore_sample",
        "high_pass": DENOISE["high_pass"],
        "t_r": 2.0,
    }
    result = {}
    for name, masker in _nilearn_maskers(info, **common).items():
        ts = masker.fit_transform(info["bold"], confounds=confounds, sample_mask=sample_mask)
        result[f"{name}_timeseries"] = ts
        for kind, label in (
            ("correlation", "correlation"),
            ("partial correlation", "partialcorrelation"),
        ):
            result[f"{name}_{label}"] = ConnectivityMeasure(kind=kind).fit_transform([ts])[0]
    np.savez(out, **result)
    return {}


def child_floor(info: dict, out: Path) -> dict:
    """Decompress the BOLD file with ISA-L into a reused 16 MiB buffer, nothing else."""
    from isal import igzip_threaded

    buf = bytearray(1 << 24)
    total = 0
    t0 = time.perf_counter()
    with igzip_threaded.open(info["bold"], "rb", threads=1) as fh:
        while n := fh.readinto(buf):
            total += n
    return {"decompress": time.perf_counter() - t0, "GiB": total / 2**30}


CHILDREN = {
    "ours-engine": child_ours_engine,
    "nilearn-engine": child_nilearn_engine,
    "ours-cli": child_ours_cli,
    "ours-cold-cli": child_ours_cli_cold,
    "ours-reports-cli": child_ours_cli_reports,
    "ours-reports-first-cli": child_ours_cli_reports_first,
    "nilearn-cli": child_nilearn_cli,
    "ours-startup-cli": child_ours_startup,
    "imports": child_imports,
    "maps-atlas": child_maps_atlas,
    "floor": child_floor,
    "ours-cache": child_ours_cache,
}


TIME = Path("/usr/bin/time")


def run_child(kind: str, info_path: Path, out: Path) -> dict:
    """Run one side in a fresh process; wall time and its peak RSS.

    With GNU time the peak is measured from outside (``%M``); otherwise the child
    reports its own ``ru_maxrss``. This parent stays small: Linux carries the
    high-water mark of a forking parent into the child's ``ru_maxrss``.
    """
    import shutil

    if out.is_dir():  # a fresh output folder: a rerun would skip the finished run
        shutil.rmtree(out)
    cmd = [sys.executable, __file__, "--child", kind, "--info", str(info_path), "--out", str(out)]
    if TIME.is_file():
        cmd = [str(TIME), "-f", "TIME_MAXRSS_KB=%M"] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["wall_s"] = wall
    for line in proc.stderr.splitlines():
        if line.startswith("TIME_MAXRSS_KB="):
            report["peak_rss_mib"] = int(line.split("=")[1]) / 1024.0
    return report


def compare_engine(ours: Path, ref: Path) -> dict[str, tuple[float, float]]:
    a, b = np.load(ours), np.load(ref)
    diffs = {}
    for name in b.files:
        got = a[name]
        keep = ~np.isnan(got).all(axis=0)  # nilearn drops regions outside the mask
        ref = b[name]
        diff = float(np.max(np.abs(got[:, keep] - ref)))
        diffs[name] = (diff, diff / float(np.max(np.abs(ref))))
    return diffs


def compare_cli(out: Path, ref: Path) -> dict[str, tuple[float, float]]:
    from bids_app.write import read_tsv

    b = np.load(ref)
    diffs = {}
    for key in b.files:
        atlas, what = key.split("_", 1)
        if what == "timeseries":
            pattern = f"*atlas-{atlas}_*timeseries.tsv"
        else:
            pattern = f"*atlas-{atlas}_*meas-{what}_*relmat.tsv"
        found = sorted(out.rglob(pattern))
        if not found:
            diffs[key] = (float("nan"), float("nan"))
            continue
        got = read_tsv(found[0]).to_numpy(dtype=float)
        ref = b[key]
        # Regions without signal: n/a columns here; nilearn drops them (spheres outside the
        # image) or keeps them as zeros (labels outside the mask): compare the others.
        keep = ~np.isnan(got).all(axis=0)
        ref_ts = b[f"{atlas}_timeseries"]
        ref_keep = np.abs(ref_ts).max(axis=0) > 0
        if what == "timeseries":
            got, ref = got[:, keep], ref[:, ref_keep]
        else:
            got, ref = got[np.ix_(keep, keep)], ref[np.ix_(ref_keep, ref_keep)]
        diff = float(np.nanmax(np.abs(got - ref)))
        diffs[key] = (diff, diff / float(np.nanmax(np.abs(ref))))
    return diffs


def _prepare_info(args, n_volumes: int) -> Path:
    """Dataset (built in a child process: keeps this parent small) + config, as a JSON file."""
    stamp = args.work / f"built-{n_volumes}.json"
    config = args.work / f"config-{args.maps}-{args.schaefer}.json"
    if not stamp.is_file() or not config.is_file():
        subprocess.run(
            [sys.executable, __file__, "--build", "--work", str(args.work)]
            + ["--volumes", str(n_volumes), "--maps", args.maps, "--schaefer", args.schaefer],
            check=True,
        )
    info = json.loads(stamp.read_text())
    info.update(json.loads(config.read_text()))
    info["work"] = str(args.work)
    info_path = args.work / f"info-{n_volumes}-{args.maps}-{args.schaefer}.json"
    info_path.write_text(json.dumps(info))
    return info_path


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-only", action="store_true", help="extraction only, no denoising")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids-connectome-bench"))
    parser.add_argument(
        "--volumes",
        type=int,
        default=BASE_VOLUMES,
        help=f"run length; other than {BASE_VOLUMES}: both sizes are run and compared",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the short sides (ours, ours-reports, floor); the median is reported "
        "(a shared machine's speed drifts by 10-20 %% within minutes)",
    )
    parser.add_argument("--maps", choices=("ho1mm", "ho64"), default="ho1mm")
    parser.add_argument("--schaefer", choices=("400", "200"), default="400")
    parser.add_argument(
        "--nilearn-all-sizes", action="store_true", help="run nilearn at every size, not only 300"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--info", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build(args.work, args.volumes)
        config = write_config(args.work, args.maps, args.schaefer)
        (args.work / f"config-{args.maps}-{args.schaefer}.json").write_text(json.dumps(config))
        return 0
    if args.child:
        import atexit

        warnings.simplefilter("ignore")
        info = json.loads(args.info.read_text())
        t0 = time.perf_counter()
        detail: dict = {}

        def report() -> None:  # also when the child ends the process (the CLI's run())
            detail.update(inner_s=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib())
            print(json.dumps(detail), flush=True)

        atexit.register(report)
        detail.update(CHILDREN[args.child](info, args.out) or {})
        return 0
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real atlases in {SHARED}")
    sizes = sorted({BASE_VOLUMES, args.volumes})
    mode = "engine" if args.engine_only else "cli"
    print(f"load average before: {_load()}", flush=True)
    results: dict[int, dict[str, dict]] = {}
    diffs = {}
    startup: list[float] = []
    maps_atlas: list[dict] = []
    for n in sizes:
        info_path = _prepare_info(args, n)
        results[n] = {}
        sides = ["ours", "floor"]
        if mode == "cli" and n == BASE_VOLUMES:
            sides = ["ours-cold", "ours", "ours-reports-first", "ours-reports", "floor"]
        if n == BASE_VOLUMES or args.nilearn_all_sizes:
            sides.insert(len(sides) - 1, "nilearn")
        if mode == "engine" and n == BASE_VOLUMES:
            sides.append("ours-cache")
        outputs = {}
        for side in sides:
            out = args.work / f"out-{side}-{mode}-{n}-{args.maps}-{args.schaefer}"
            if mode == "engine" or side != "ours":
                out = out.with_suffix(".npz")
            kind = side if side in ("floor", "ours-cache") else f"{side}-{mode}"
            # short sides that leave the cache as they found it: median of --repeat runs
            repeat = args.repeat if side in ("ours", "ours-reports", "floor") else 1
            print(f"running {side} ({mode}, {n} volumes) x{repeat} ...", flush=True)
            runs = [run_child(kind, info_path, out) for _ in range(repeat)]
            runs.sort(key=lambda r: r["wall_s"])
            results[n][side] = dict(runs[len(runs) // 2])
            if repeat > 1:
                results[n][side]["runs_s"] = [round(r["wall_s"], 2) for r in runs]
            outputs[side] = out
        if "nilearn" in outputs:
            compare = compare_engine if mode == "engine" else compare_cli
            diffs[n] = compare(outputs["ours"], outputs["nilearn"])
        if mode == "cli" and n == BASE_VOLUMES:
            print("timing start-up imports and the 1 mm maps atlas (3 times each) ...", flush=True)
            out = args.work / f"out-ours-startup-cli-{n}-{args.maps}-{args.schaefer}"
            for _ in range(3):
                run_child("ours-startup-cli", info_path, out)
                startup.append(run_child("imports", info_path, out)["imports"])
                maps_atlas.append(run_child("maps-atlas", info_path, out.with_suffix(".npz")))
    print(f"load average after: {_load()}")
    info = json.loads(info_path.read_text())
    labels_space = SCHAEFER[args.schaefer][2]
    print()
    print(f"BOLD: (97, 115, 97, N) float32 .nii.gz, {SPACE} 2 mm; mode: {mode}")
    print(
        f"atlases: {info['labels'][0]}, {info['maps'][0]} ({Path(info['maps'][1]).name}), Power264"
    )
    if labels_space != SPACE:
        print(
            f"NOTE: {info['labels'][0]} is a {labels_space} atlas on a {SPACE} BOLD (both apps "
            "resample it to the BOLD grid; fine for timing, not for science). "
            "--schaefer 200 uses a space-correct 1 mm file."
        )
    print()
    print(f"{'':18s} {'volumes':>8s} {'wall (s)':>10s} {'peak RSS (MiB)':>16s}  detail (s)")
    for n in sizes:
        for side, r in results[n].items():
            extra = {
                k: round(v, 2)
                for k, v in r.items()
                if k not in ("wall_s", "peak_rss_mib") and isinstance(v, float)
            }
            if "runs_s" in r:
                extra["runs"] = r["runs_s"]
            print(f"{side:18s} {n:8d} {r['wall_s']:10.2f} {r['peak_rss_mib']:16.0f}  {extra}")
    for n in sizes:
        r = results[n]
        for side in ("ours-cold", "ours-reports-first", "ours-reports"):
            if side in r and "nilearn" in r:
                print(
                    f"{n} volumes, {side}: nilearn/ours {r['nilearn']['wall_s'] / r[side]['wall_s']:.1f}x"
                )
        line = f"{n} volumes: ours/floor {r['ours']['wall_s'] / r['floor']['wall_s']:.2f}x"
        if "nilearn" in r:
            line += (
                f", ours/nilearn {r['ours']['wall_s'] / r['nilearn']['wall_s']:.3f}"
                f" (nilearn/ours {r['nilearn']['wall_s'] / r['ours']['wall_s']:.1f}x), memory "
                f"{r['ours']['peak_rss_mib'] / 1024:.2f} GiB vs {r['nilearn']['peak_rss_mib'] / 1024:.2f} GiB"
            )
        print(line)
    if len(sizes) > 1:
        a, b = results[sizes[0]], results[sizes[-1]]
        ratio = sizes[-1] / sizes[0]
        print(f"{sizes[-1]} vs {sizes[0]} volumes ({ratio:.0f}x the data):")
        for side in ("ours", "floor", "nilearn"):
            if side in a and side in b:
                print(
                    f"  {side:8s} time x{b[side]['wall_s'] / a[side]['wall_s']:.2f}, "
                    f"peak RSS x{b[side]['peak_rss_mib'] / a[side]['peak_rss_mib']:.2f} "
                    f"({a[side]['peak_rss_mib']:.0f} -> {b[side]['peak_rss_mib']:.0f} MiB)"
                )
    if startup:
        print(
            "start-up, imports needed before the first volume (fresh interpreter): "
            + ", ".join(f"{t:.2f}" for t in startup)
            + f" s; median {np.median(startup):.2f} s (target <= 0.5 s)"
        )
    if maps_atlas:
        print(
            f"1 mm maps atlas ({Path(info['maps'][1]).name}), cold: "
            + ", ".join(
                f"{m['load']:.2f} + {m['prepare']:.2f} = {m['maps_atlas']:.2f}" for m in maps_atlas
            )
            + " s (read + resample to the BOLD grid); median "
            + f"{np.median([m['maps_atlas'] for m in maps_atlas]):.2f} s (target <= 0.3 s)"
        )
    for n, d in diffs.items():
        print(f"max abs difference of outputs ({n} volumes):")
        for key, (value, rel) in d.items():
            print(f"  {key:36s} {value:.3g}   (relative to the largest value: {rel:.2g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and memory of bids-connectome against the equivalent nilearn 0.14.1 script.

Builds (once, cached in --work) a one-run fMRIPrep-like dataset with a
(97, 115, 97, 300) float32 ``.nii.gz`` BOLD on the MNI152NLin2009cAsym 2 mm
grid (the demo generator), and three atlases:

* Schaefer-400 (17 networks, 2 mm, from ../shared/data);
* 64 probabilistic maps: the first 64 Harvard-Oxford probabilistic maps of
  ../shared/data, linearly resampled once to the 2 mm grid and stored as
  float32 (no DiFuMo in ../shared/data; this is the same size of problem);
* Power-264 spheres, radius 5 mm.

Then runs, each in its own fresh process (wall time and peak RSS of that
process), our side and nilearn's side, and compares the outputs:

* default (full): ``bids-connectome participant`` (simple denoising,
  correlation + partial correlation) versus nilearn's ``load_confounds_strategy``
  + the three maskers + ``ConnectivityMeasure``;
* ``--engine-only``: ``extract.load_atlas/prepare/extract_run`` versus the three
  nilearn maskers without denoising.

Usage: ``python benchmarks/bench_extraction.py [--engine-only] [--work DIR] [--volumes 300]``
Needs nilearn (the test extra) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCHAEFER = (
    SHARED
    / "atlases/labels/tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-400Parcels17Networks_dseg.nii.gz"
)
SCHAEFER_TSV = SHARED / "atlases/labels/atlas-Schaefer2018v0143_desc-400Parcels17Networks_dseg.tsv"
HO = SHARED / "atlases/maps/atlas_harvard_oxford_prob4d.nii.gz"
POWER = SHARED / "atlases/coords/power_2011.csv"
DENOISE = {"strategy": "simple", "detrend": True, "standardize": "zscore_sample", "high_pass": 0.01}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- setup -------------------------------------------------------------------------------------


def roughen(bold: Path, mask_path: Path) -> None:
    """Add full-precision noise inside the brain: the demo's whole numbers compress ~11x,
    real fMRIPrep BOLD ~2x, and decompression time is what matters here. Streamed,
    volume by volume (gzip level 1, as nibabel writes)."""
    import gzip

    import nibabel as nib

    from bids_app.extract.stream import VolumeReader

    img = nib.load(bold)
    mask = (np.asanyarray(nib.load(mask_path).dataobj) != 0).reshape(-1, order="F")
    rng = np.random.default_rng(0)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    tmp = bold.with_name("rough_" + bold.name)
    offset = int(header.get_data_offset()) or 352
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        raw = header.binaryblock
        fh.write(raw + b"\0" * (offset - len(raw)))
        for vol in VolumeReader(bold):
            noisy = vol.astype(np.float32)
            noisy[mask] += rng.standard_normal(int(mask.sum()), dtype=np.float32)
            fh.write(noisy.astype("<f4").tobytes())
    tmp.replace(bold)


def build(work: Path, n_volumes: int) -> dict:
    import nibabel as nib
    import yaml

    from bids_app.demo import GRID_AFFINE, GRID_SHAPE, DemoSpec, build_demo

    work.mkdir(parents=True, exist_ok=True)
    stamp = work / f"built-{n_volumes}.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())
    print(f"building the dataset in {work} (once) ...", flush=True)
    build_demo(work / "demo", DemoSpec(n_subjects=1, n_sessions=1, n_volumes=n_volumes, seed=7))
    func = work / "demo" / "fmriprep" / "sub-01" / "func"
    roughen(
        next(func.glob("*_desc-preproc_bold.nii.gz")), next(func.glob("*_desc-brain_mask.nii.gz"))
    )
    maps_path = work / "ho64_2mm.nii.gz"
    if not maps_path.is_file():
        from bids_app.extract.atlas import resample

        img = nib.load(HO)
        maps = np.zeros(GRID_SHAPE + (64,), dtype=np.float32)
        for k in range(64):
            vol = np.asarray(img.dataobj[..., k], dtype=np.float32)
            maps[..., k] = resample(vol, img.affine, GRID_SHAPE, GRID_AFFINE, order=1)
        nib.Nifti1Image(maps, GRID_AFFINE).to_filename(maps_path)
    config = {
        "space": "MNI152NLin2009cAsym",
        "denoise": {"name": "simple", **DENOISE},
        "atlases": [
            {
                "name": "Schaefer400",
                "kind": "labels",
                "image": str(SCHAEFER),
                "labels": str(SCHAEFER_TSV),
            },
            {"name": "HO64", "kind": "maps", "image": str(maps_path)},
            {"name": "Power264", "kind": "spheres", "coordinates": "power2011", "radius": 5},
        ],
        "connectivity": {
            "measures": ["correlation", "partialcorrelation"],
            "estimator": "ledoit_wolf",
        },
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    func = work / "demo" / "fmriprep" / "sub-01" / "func"
    info = {
        "bids": str(work / "demo" / "fmriprep"),
        "config": str(work / "bench.yaml"),
        "bold": str(next(func.glob("*_desc-preproc_bold.nii.gz"))),
        "mask": str(next(func.glob("*_desc-brain_mask.nii.gz"))),
        "maps": str(maps_path),
    }
    stamp.write_text(json.dumps(info))
    return info


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
    return {
        "Schaefer400": NiftiLabelsMasker(str(SCHAEFER), mask_img=info["mask"], **common),
        "HO64": NiftiMapsMasker(info["maps"], mask_img=info["mask"], **common),
        "Power264": NiftiSpheresMasker(seeds, radius=5, mask_img=info["mask"], **common),
    }


def child_nilearn_engine(info: dict, out: Path) -> dict:
    signals = {}
    for name, masker in _nilearn_maskers(info).items():
        signals[name] = masker.fit_transform(info["bold"])
    np.savez(out, **signals)
    return {}


def child_ours_cli(info: dict, out: Path) -> dict:
    from bids_app.cli import main

    code = main([info["bids"], str(out), "participant", "--config", info["config"]])
    if code != 0:
        raise SystemExit(f"bids-connectome exited with {code}")
    return {}


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


CHILDREN = {
    "ours-engine": child_ours_engine,
    "nilearn-engine": child_nilearn_engine,
    "ours-cli": child_ours_cli,
    "nilearn-cli": child_nilearn_cli,
}


TIME = Path("/usr/bin/time")


def run_child(kind: str, info_path: Path, out: Path) -> dict:
    """Run one side in a fresh process; wall time and its peak RSS.

    With GNU time the peak is measured from outside (``%M``); otherwise the child
    reports its own ``ru_maxrss``. This parent stays small: Linux carries the
    high-water mark of a forking parent into the child's ``ru_maxrss``.
    """
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


def compare_engine(ours: Path, ref: Path) -> dict[str, float]:
    a, b = np.load(ours), np.load(ref)
    diffs = {}
    for name in b.files:
        got = a[name]
        keep = ~np.isnan(got).all(axis=0)  # nilearn drops regions outside the mask
        ref = b[name]
        diff = float(np.max(np.abs(got[:, keep] - ref)))
        diffs[name] = (diff, diff / float(np.max(np.abs(ref))))
    return diffs


def compare_cli(out: Path, ref: Path) -> dict[str, float]:
    from bids_app.write import read_tsv

    b = np.load(ref)
    func = out / "sub-01" / "func"
    diffs = {}
    for key in b.files:
        atlas, what = key.split("_", 1)
        if what == "timeseries":
            path = next(func.glob(f"*_atlas-{atlas}_desc-simple_timeseries.tsv"))
        else:
            path = next(func.glob(f"*_atlas-{atlas}_meas-{what}_desc-simple_relmat.tsv"))
        got = read_tsv(path).to_numpy(dtype=float)
        if what == "timeseries":
            got = got[:, ~np.isnan(got).all(axis=0)]
        else:
            keep = ~np.isnan(got).all(axis=0)
            got = got[np.ix_(keep, keep)]
        diff = float(np.nanmax(np.abs(got - b[key])))
        diffs[key] = (diff, diff / float(np.nanmax(np.abs(b[key]))))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-only", action="store_true", help="extraction only, no denoising")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids-connectome-bench"))
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--info", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build(args.work, args.volumes)
        return 0
    if args.child:
        warnings.simplefilter("ignore")
        info = json.loads(args.info.read_text())
        t0 = time.perf_counter()
        detail = CHILDREN[args.child](info, args.out)
        detail.update(inner_s=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib())
        print(json.dumps(detail))
        return 0
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real atlases in {SHARED}")
    info_path = args.work / f"built-{args.volumes}.json"
    if not info_path.is_file():  # build in a child process: keeps this parent small
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--build",
                "--work",
                str(args.work),
                "--volumes",
                str(args.volumes),
            ],
            check=True,
        )
    info = json.loads(info_path.read_text())
    mode = "engine" if args.engine_only else "cli"
    results = {}
    outputs = {}
    for side in ("ours", "nilearn"):
        out = args.work / f"out-{side}-{mode}"
        if mode == "engine":
            out = out.with_suffix(".npz")
        elif side == "nilearn":
            out = out.with_suffix(".npz")
        print(f"running {side} ({mode}) ...", flush=True)
        results[side] = run_child(f"{side}-{mode}", info_path, out)
        outputs[side] = out
    if mode == "engine":
        diffs = compare_engine(outputs["ours"], outputs["nilearn"])
    else:
        diffs = compare_cli(outputs["ours"], outputs["nilearn"])
    print()
    print(f"BOLD: {info['bold']} ({args.volumes} volumes, float32, gzip)")
    print(f"{'':10s} {'wall (s)':>10s} {'peak RSS (MiB)':>16s}")
    for side in ("ours", "nilearn"):
        r = results[side]
        print(f"{side:10s} {r['wall_s']:10.2f} {r['peak_rss_mib']:16.0f}")
        extra = {k: round(v, 2) for k, v in r.items() if k not in ("wall_s", "peak_rss_mib")}
        if extra:
            print(f"{'':10s} {extra}")
    ratio = results["nilearn"]["wall_s"] / results["ours"]["wall_s"]
    print(
        f"speed-up: {ratio:.1f}x   memory: {results['ours']['peak_rss_mib'] / 1024:.2f} GiB "
        f"vs {results['nilearn']['peak_rss_mib'] / 1024:.2f} GiB"
    )
    print("max abs difference of outputs:")
    for key, (value, rel) in diffs.items():
        print(f"  {key:32s} {value:.3g}   (relative to the largest value: {rel:.2g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

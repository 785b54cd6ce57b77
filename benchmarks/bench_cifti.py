"""Speed and memory of surface (CIFTI-2) parcellation against Connectome Workbench.

Builds (once, cached in --work) a synthetic fMRIPrep-like 91k dense time series:
91,282 grayordinates on the real brain models (cortex vertices ``grayl`` / ``grayr``
of ``fMRI_vertex_info_32k.npz``, the 31,870 subcortical voxels of the ciftiSubcortical
dlabel) x 1200 frames, float32 (438 MB, uncompressed as fMRIPrep writes it). Then,
with a warm page cache:

* ours: one fresh child process (``--child``) that loads the three parcellations
  (Schaefer-400 17 networks, Glasser, ciftiSubcortical), opens the run, prepares the
  operators and extracts the parcel means of the three in one pass over the file;
* Workbench: ``wb_command -cifti-parcellate DATA LABEL COLUMN OUT -method MEAN``
  once per parcellation.

Wall time and peak RSS are measured per process (``os.wait4`` in a small launcher
process; the launcher's own start, ~20 ms, is in the wall time of both sides), interpreter
start and imports included; the child also reports its in-process time. The parcel means
are compared (max relative difference). Run it when the machine is idle; the load
average is printed.

Usage: ``python benchmarks/bench_cifti.py [--work DIR] [--frames 1200] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SURF = SHARED / "surfaces" / "fsLR32k"
PARCELLATIONS = {
    "Schaefer400": (
        SURF / "tpl-fsLR_atlas-Schaefer2018v0143_den-32k_desc-400Parcels17Networks_dseg.dlabel.nii",
        SHARED / "atlases/labels/atlas-Schaefer2018v0143_desc-400Parcels17Networks_dseg.tsv",
    ),
    "Glasser": (
        SURF / "tpl-fsLR_atlas-Glasser_den-32k_dseg.dlabel.nii",
        SURF / "atlas-Glasser_dseg.tsv",
    ),
    "ciftiSubcortical": (
        SURF / "tpl-fsLR_atlas-ciftiSubcortical_den-32k_dseg.dlabel.nii",
        SURF / "atlas-ciftiSubcortical_dseg.tsv",
    ),
}


def brain_models():
    """The 91k brain models: left and right cortex without the medial wall, then subcortex."""
    import nibabel as nib
    from nibabel import cifti2

    info = np.load(SURF / "fMRI_vertex_info_32k.npz")
    left = cifti2.BrainModelAxis.from_surface(info["grayl"], int(info["num_meshl"]), "CortexLeft")
    right = cifti2.BrainModelAxis.from_surface(info["grayr"], int(info["num_meshr"]), "CortexRight")
    sub = nib.load(PARCELLATIONS["ciftiSubcortical"][0]).header.get_axis(1)
    return left + right + sub


def make_dtseries(path: Path, n_frames: int) -> None:
    """Write the synthetic run: per-grayordinate offsets + a few shared signals + noise,
    filled in blocks of grayordinates straight into the file."""
    from nibabel import cifti2

    bm = brain_models()
    n = len(bm)
    series = cifti2.SeriesAxis(0.0, 0.8, n_frames, unit="SECOND")
    # The header is written with a zero-filled array, then the data are filled in place.
    tmp = path.with_suffix(".tmp.nii")
    img = cifti2.Cifti2Image(np.zeros((n_frames, n), dtype=np.float32), header=(series, bm))
    img.to_filename(tmp)
    offset = int(cifti2.load(tmp).dataobj.offset)
    del img
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((8, n_frames)).astype(np.float32)
    mm = np.memmap(tmp, dtype=np.float32, mode="r+", offset=offset, shape=(n, n_frames))
    step = 4096
    for a in range(0, n, step):
        b = min(n, a + step)
        mix = rng.standard_normal((b - a, 8)).astype(np.float32)
        block = 1000 + 50 * rng.random((b - a, 1), dtype=np.float32) + mix @ shared
        block += 5 * rng.standard_normal((b - a, n_frames), dtype=np.float32)
        mm[a:b] = block
    mm.flush()
    del mm
    tmp.replace(path)


# A small process between us and each measured command: a child's peak RSS counts the RSS
# of the process it was forked from (the kernel carries it over exec), and this script holds
# the whole dtseries after writing it.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, fh)
"""


def run_wait4(cmd: list[str]) -> tuple[float, float, str]:
    """Wall time (s), peak RSS (MiB) and stdout of one command, with its own ``rusage``."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    out_path = tmp / f"bench_cifti_{os.getpid()}.out"
    usage_path = tmp / f"bench_cifti_{os.getpid()}.rusage"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(os.devnull, "wb") as devnull:
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(usage_path), *map(str, cmd)],
            stdout=out,
            stderr=devnull,
            check=False,
        )
    wall = time.perf_counter() - t0
    text = out_path.read_text()
    out_path.unlink()
    usage = json.loads(usage_path.read_text())
    usage_path.unlink()
    if proc.returncode != 0 or usage["code"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({usage['code']})")
    return wall, usage["maxrss_kib"] / 1024.0, text


def child(dtseries: Path, out_npz: Path) -> None:
    """Our side, in a fresh process: load, prepare, extract; timings as JSON on stdout."""
    import resource

    t0 = time.perf_counter()
    from bids_app.extract.surface import (
        extract_surface_run,
        load_surface_atlas,
        open_surface_data,
        prepare_surface,
    )

    t_import = time.perf_counter()
    atlases = [
        load_surface_atlas(name, image, labels=tsv) for name, (image, tsv) in PARCELLATIONS.items()
    ]
    t_atlas = time.perf_counter()
    data = open_surface_data(dtseries)
    ops = prepare_surface(atlases, data)
    t_prep = time.perf_counter()
    run = extract_surface_run(data, ops)
    t_end = time.perf_counter()
    np.savez(out_npz, **run.signals)
    print(
        json.dumps(
            {
                "import_s": t_import - t0,
                "atlases_s": t_atlas - t_import,
                "open_prepare_s": t_prep - t_atlas,
                "extract_s": t_end - t_prep,
                "inprocess_s": t_end - t0,
                "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            }
        )
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_cifti"))
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for each side")
    parser.add_argument("--child", nargs=2, metavar=("DTSERIES", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    wb = shutil.which("wb_command")
    if wb is None:
        sys.exit("wb_command not found (apt-get install connectome-workbench)")
    if not SURF.is_dir():
        sys.exit(f"{SURF} not found")
    args.work.mkdir(parents=True, exist_ok=True)
    dtseries = args.work / f"synthetic_{args.frames}_space-fsLR_den-91k_bold.dtseries.nii"
    if not dtseries.exists():
        print(f"writing {dtseries} ...", flush=True)
        make_dtseries(dtseries, args.frames)
    size_mb = dtseries.stat().st_size / 1e6
    with open(dtseries, "rb") as fh:  # warm the page cache for both sides
        while fh.read(1 << 24):
            pass
    print(f"data: {dtseries.name} ({size_mb:.0f} MB), load average before: {load_average()}")

    ours_npz = args.work / "ours.npz"
    best = None
    for _ in range(args.repeat):
        wall, rss, text = run_wait4(
            [sys.executable, __file__, "--child", str(dtseries), str(ours_npz)]
        )
        info = json.loads(text.strip().splitlines()[-1])
        if best is None or wall < best[0]:
            best = (wall, rss, info)
    ours_wall, ours_rss, info = best

    wb_rows = []
    for name, (image, _) in PARCELLATIONS.items():
        out = args.work / f"wb_{name}.ptseries.nii"
        runs = [
            run_wait4(
                [
                    wb,
                    "-cifti-parcellate",
                    str(dtseries),
                    str(image),
                    "COLUMN",
                    str(out),
                    "-method",
                    "MEAN",
                ]
            )
            for _ in range(args.repeat)
        ]
        wall, rss, _ = min(runs)
        wb_rows.append((name, wall, rss, out))

    import nibabel as nib

    ours = np.load(ours_npz)
    print(f"\nload average after: {load_average()}")
    print(f"\n{'':28s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    print(f"{'ours (3 parcellations)':28s} {ours_wall:8.2f} {ours_rss:13.0f}")
    print(
        "  in process: import {import_s:.2f} s, atlases {atlases_s:.2f} s, open+prepare "
        "{open_prepare_s:.2f} s, extract {extract_s:.2f} s".format(**info)
    )
    for name, wall, rss, _ in wb_rows:
        print(f"{'wb_command ' + name:28s} {wall:8.2f} {rss:13.0f}")
    wb_total = sum(r[1] for r in wb_rows)
    wb_peak = max(r[2] for r in wb_rows)
    print(f"{'wb_command total':28s} {wb_total:8.2f} {wb_peak:13.0f} (max)")
    print(f"\nspeed-up: {wb_total / ours_wall:.2f}x")
    for name, _, _, out in wb_rows:
        ref = np.asanyarray(nib.load(out).dataobj).astype(np.float64)
        ours_sig = ours[name]
        rel = np.max(np.abs(ours_sig - ref) / np.maximum(np.abs(ref), 1e-30))
        print(f"max relative difference vs wb, {name}: {rel:.2e}")


if __name__ == "__main__":
    main()

"""One participant's job against the size of the dataset around it.

Synthetic fMRIPrep trees of 10 and 1000 participants: participant 0001 is real (the demo's
synthetic BOLD on the MNI152NLin2009cAsym 2 mm grid, 100 volumes, with its mask, confounds
and sidecars); every other participant has the same sidecars and confounds (real text files)
and empty image files, as a cohort looks to a job that only needs one participant. Each job,
``bids-connectome TREE OUT participant --participant-label 0001``, runs in a fresh process;
the script prints its wall time per tree size and the ratio (target: 1000 / 10 <= 1.3), with
the default folder listing and with a pybids index reused from ``--bids-database-dir``
(built once per tree, timed separately).

Usage: ``python benchmarks/bench_cohort.py [--sizes 10 1000] [--repeat 3] [--work DIR]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build_tree(work: Path, n: int) -> tuple[Path, Path]:
    from bids_app.demo import DemoSpec, build_demo

    seed = work / "seed"
    if not (seed / "demo.yaml").is_file():
        build_demo(seed, DemoSpec(n_subjects=1, n_sessions=1, n_volumes=100))
    tree = work / f"tree{n}"
    if (tree / ".complete").is_file():
        return tree, seed / "demo.yaml"
    shutil.rmtree(tree, ignore_errors=True)
    real = seed / "fmriprep" / "sub-01"
    tree.mkdir(parents=True)
    shutil.copy(seed / "fmriprep" / "dataset_description.json", tree)
    for i in range(1, n + 1):
        label = f"{i:04d}"
        func = tree / f"sub-{label}" / "func"
        func.mkdir(parents=True)
        for src in sorted((real / "func").iterdir()):
            dest = func / src.name.replace("sub-01", f"sub-{label}")
            if i == 1 or not src.name.endswith(".nii.gz"):
                shutil.copy(src, dest)
            else:
                dest.touch()  # an image placeholder: the job must not open it
        anat = tree / f"sub-{label}" / "anat"  # fMRIPrep writes anat too; never read here
        anat.mkdir()
        for suffix in ("desc-preproc_T1w.nii.gz", "desc-brain_mask.nii.gz", "dseg.nii.gz"):
            (anat / f"sub-{label}_{suffix}").touch()
    (tree / ".complete").touch()
    return tree, seed / "demo.yaml"


def job(tree: Path, config: Path, out: Path, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bids_app.cli",
            str(tree),
            str(out),
            "participant",
            "--config",
            str(config),
            "--participant-label",
            "0001",
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"job failed in {tree}:\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids-connectome-bench-cohort"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], float] = {}
    for n in args.sizes:
        print(f"building a {n}-participant tree ...", flush=True)
        tree, config = build_tree(args.work, n)
        out = args.work / f"out{n}"
        times = [job(tree, config, out) for _ in range(args.repeat)]
        results[("listing", n)] = statistics.median(times)
        db = args.work / f"db{n}"
        shutil.rmtree(db, ignore_errors=True)
        build = job(tree, config, out, "--bids-database-dir", str(db))
        times = [job(tree, config, out, "--bids-database-dir", str(db)) for _ in range(args.repeat)]
        results[("index", n)] = statistics.median(times)
        print(
            f"{n:>6} participants: job {results[('listing', n)]:.2f} s (folder listing); "
            f"{results[('index', n)]:.2f} s with a reused pybids index "
            f"(building the index: {build:.1f} s, once)",
            flush=True,
        )
    lo, hi = min(args.sizes), max(args.sizes)
    for how in ("listing", "index"):
        ratio = results[(how, hi)] / results[(how, lo)]
        what = "folder listing (default)" if how == "listing" else "--bids-database-dir, reused"
        print(f"job time {hi} / {lo} participants, {what}: {ratio:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

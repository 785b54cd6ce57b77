"""Run engine: parent memory against the number of runs, and the cost of a rerun.

1. Parent memory flat in the number of runs: the demo dataset (synthetic BOLD on the
   MNI152NLin2009cAsym 2 mm grid, the demo's four atlases) with 10 and with 200 runs,
   processed by ``bids-connectome participant`` in a fresh process; peak RSS of that
   process (``VmHWM``), serial (the runs computed in the process itself) and with
   ``--n-jobs 2`` (the process only orchestrates; each run is a child process).
2. Rerun: the demo as the README runs it (3 participants x 2 sessions, 100 volumes), the
   first participant-level run against the same command again (every run current: skipped).

Usage: ``python benchmarks/bench_engine.py [--runs 10 200] [--volumes 45] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
def peak_mib():  # VmHWM: this process's own peak (ru_maxrss carries the forking parent's over)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
t0 = time.perf_counter()
from bids_app.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "peak_rss_mib": peak_mib()}))
"""


def cli(*args: str) -> dict:
    """``bids-connectome ARGS`` in a fresh process: exit code, wall time, peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bids-connectome {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def demo(work: Path, name: str, **spec) -> tuple[Path, Path]:
    from bids_app.demo import DemoSpec, build_demo

    dest = work / name
    config = dest / "demo.yaml"
    if not config.is_file():
        print(f"building {dest} ...", flush=True)
        build_demo(dest, DemoSpec(**spec))
    return dest / "fmriprep", config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--volumes", type=int, default=45)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids-connectome-bench-engine"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    print("\n== parent peak RSS against the number of runs")
    print(f"{'runs':>6} {'executor':>10} {'wall s':>8} {'s/run':>7} {'peak RSS MiB':>13}")
    rows = {}
    for n in args.runs:
        bids, config = demo(
            args.work, f"runs{n}", n_subjects=n, n_sessions=1, n_volumes=args.volumes
        )
        for jobs in ("1", "2"):
            out = args.work / f"out-runs{n}-jobs{jobs}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            r = cli(str(bids), str(out), "participant", "--config", str(config), "--n-jobs", jobs)
            rows[(n, jobs)] = r
            executor = "serial" if jobs == "1" else "2 procs"
            print(
                f"{n:>6} {executor:>10} {r['wall']:>8.1f} {r['wall'] / n:>7.2f} "
                f"{r['peak_rss_mib']:>13.0f}",
                flush=True,
            )
    if len(args.runs) >= 2:
        lo, hi = min(args.runs), max(args.runs)
        for jobs, executor in (("1", "serial"), ("2", "--n-jobs 2")):
            ratio = rows[(hi, jobs)]["peak_rss_mib"] / rows[(lo, jobs)]["peak_rss_mib"]
            print(f"peak RSS {hi} runs / {lo} runs, {executor}: {ratio:.2f}")

    print("\n== rerun of the README demo (3 participants x 2 sessions, 100 volumes)")
    bids, config = demo(args.work, "readme", n_subjects=3, n_sessions=2, n_volumes=100)
    out = args.work / "out-readme"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    first = cli(str(bids), str(out), "participant", "--config", str(config))
    again = cli(str(bids), str(out), "participant", "--config", str(config))
    print(
        f"first run {first['wall']:.2f} s, rerun (all current) {again['wall']:.2f} s: "
        f"{100 * again['wall'] / first['wall']:.1f} % of the first run (target <= 10 %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

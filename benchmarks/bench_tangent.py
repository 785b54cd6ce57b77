"""Speed and memory of the batched tangent space against nilearn 0.14.1.

Builds synthetic region signals for N participants x P regions x T volumes (seeded; latent
network signals with AR(1) autocorrelation, subject-specific network coupling, a global signal,
region loadings, scales and noise), then runs, each in its own fresh process so that the peak
RSS (``ru_maxrss``) is that side's:

* ours: ``connect.covariance`` (scikit-learn ``LedoitWolf``) one subject at a time into a
  preallocated stack, then ``connect.tangent_from_covariances`` (geometric mean, whitening and every
  subject's tangent matrix, in place);
* nilearn: ``ConnectivityMeasure(kind="tangent").fit`` on the list of all time series
  (covariances, geometric mean, whitening; no per-subject transform).

Only the estimation is timed (not the generation of the signals). Afterwards, untimed, nilearn
transforms the first ``--compare`` subjects, and the parent prints both wall times, the
speed-up, both peak RSS, and the largest differences of ``mean_``, ``whitening_`` and of the
transformed matrices of those subjects (a subset, to keep the transfer small).

Usage: ``python benchmarks/bench_tangent.py [--subjects 1000] [--regions 400] [--volumes 150]
[--compare 50] [--blas-threads N] [--skip-nilearn]``. Needs nilearn (the test extra). nilearn's side needs about
``N (T P + 6 P^2) 8`` bytes (7.6 GiB at the default size, measured 5.8 P^2 per subject); runs
needing more than 8 GiB need ``--allow-large``. Ours needs about one stack, ``N P^2 8`` bytes,
plus ~150 MiB of chunk temporaries at P = 400.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_SPEEDUP = 5.0
GOAL_RSS_MIB = 2048.0
GOAL_DIFF = 1e-6
MAX_BENCH_BYTES = 8 * 2**30


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- synthetic data ----------------------------------------------------------------------------


def subject_series(seed: int, index: int, n_regions: int, n_volumes: int) -> np.ndarray:
    """Region signals of one subject, ``(n_volumes, n_regions)``; the same for a given
    (seed, index) in every process."""
    from scipy.signal import lfilter

    n_networks = int(np.clip(n_regions // 20, 2, 17))
    group = np.random.default_rng([seed, 0])
    member = np.sort(group.integers(0, n_networks, n_regions))
    loading = group.uniform(0.4, 1.2, n_regions)
    coupling = np.eye(n_networks) + 0.3 * group.standard_normal((n_networks, n_networks))

    rng = np.random.default_rng([seed, 1, index])
    white = rng.standard_normal((n_volumes, n_networks + 1))
    latent = lfilter([1.0], [1.0, -0.5], white, axis=0)  # slow haemodynamic-like drift
    mixing = coupling + 0.15 * rng.standard_normal((n_networks, n_networks))
    networks = latent[:, :n_networks] @ mixing
    global_signal = latent[:, -1:]
    noise = lfilter([1.0], [1.0, -0.3], rng.standard_normal((n_volumes, n_regions)), axis=0)
    signal = (
        networks[:, member] * loading * rng.uniform(0.8, 1.2, n_regions)
        + 0.4 * global_signal
        + noise * rng.uniform(0.6, 1.4, n_regions)
    )
    return signal * rng.uniform(0.5, 2.0, n_regions) + rng.uniform(-50, 50, n_regions)


# --- children ----------------------------------------------------------------------------------


def child_ours(args: argparse.Namespace, out: Path) -> dict:
    import sklearn.covariance  # noqa: F401 - loaded before timing, as importing nilearn does

    from bids_app import connect

    n, p = args.subjects, args.regions
    generation = 0.0

    def series():
        nonlocal generation
        for s in range(n):
            start = time.perf_counter()
            ts = subject_series(args.seed, s, p, args.volumes)
            generation += time.perf_counter() - start
            yield ts

    covs = np.empty((n, p, p))
    start = time.perf_counter()
    for s, ts in enumerate(series()):
        covs[s] = connect.covariance(ts, "ledoit_wolf")
    t_cov = time.perf_counter() - start - generation
    rss_before = current_rss_mib()
    start = time.perf_counter()
    mean, whitening = connect.tangent_from_covariances(covs)
    t_tangent = time.perf_counter() - start
    np.savez(out, mean=mean, whitening=whitening, transformed=covs[: args.compare])
    return {
        "seconds": t_cov + t_tangent,
        "covariances_s": t_cov,
        "tangent_s": t_tangent,
        "generation_s": generation,
        "rss_before_tangent_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
    }


def child_nilearn(args: argparse.Namespace, out: Path) -> dict:
    from nilearn.connectome import ConnectivityMeasure

    start = time.perf_counter()
    series = [
        subject_series(args.seed, s, args.regions, args.volumes) for s in range(args.subjects)
    ]
    generation = time.perf_counter() - start
    rss_before = current_rss_mib()
    measure = ConnectivityMeasure(kind="tangent")
    start = time.perf_counter()
    measure.fit(series)
    t_fit = time.perf_counter() - start
    peak_fit = peak_rss_mib()
    transformed = measure.transform(series[: args.compare])
    np.savez(out, mean=measure.mean_, whitening=measure.whitening_, transformed=transformed)
    return {
        "seconds": t_fit,
        "generation_s": generation,
        "rss_before_fit_mib": rss_before,
        "peak_rss_mib": peak_fit,
    }


CHILDREN = {"ours": child_ours, "nilearn": child_nilearn}


def run_child(kind: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--out", str(out)]
    for name in ("subjects", "regions", "volumes", "seed", "compare"):
        cmd += [f"--{name}", str(getattr(args, name))]
    env = dict(os.environ)
    if args.blas_threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.blas_threads)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{kind} child failed (exit {proc.returncode})")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["load_before"] = load
    report["load_after"] = os.getloadavg()[0]
    return report


def max_differences(ours: Path, ref: Path) -> dict[str, tuple[float, float]]:
    """Largest absolute difference and the same relative to the largest nilearn value."""
    a, b = np.load(ours), np.load(ref)
    out = {}
    for key in ("mean", "whitening", "transformed"):
        diff = float(np.abs(a[key] - b[key]).max())
        out[key] = (diff, diff / float(np.abs(b[key]).max()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=400)
    parser.add_argument("--volumes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare", type=int, default=50, help="subjects whose tangent matrices are compared"
    )
    parser.add_argument(
        "--blas-threads", type=int, help="BLAS threads of both children (default: library default)"
    )
    parser.add_argument("--allow-large", action="store_true", help="run nilearn beyond ~8 GiB")
    parser.add_argument("--skip-nilearn", action="store_true", help="time and measure ours only")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.compare = max(2, min(args.compare, args.subjects))
    if args.subjects < 2:
        parser.error("--subjects must be at least 2")

    if args.child:
        print(json.dumps(CHILDREN[args.child](args, args.out)))
        return 0

    n, p, t = args.subjects, args.regions, args.volumes
    need = n * (t * p + 6 * p * p) * 8  # measured: ~5.8 p^2 doubles per subject
    if need > MAX_BENCH_BYTES and not (args.allow_large or args.skip_nilearn):
        parser.error(f"nilearn would need ~{need / 2**30:.1f} GiB; pass --allow-large to run it")
    threads = args.blas_threads or os.environ.get("OPENBLAS_NUM_THREADS") or "library default"
    print(f"{n} subjects x {p} regions x {t} volumes (seed {args.seed}); {os.cpu_count()} CPUs")
    print(f"BLAS threads: {threads}; load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-tangent-") as work:
        ours_out, ref_out = Path(work) / "ours.npz", Path(work) / "nilearn.npz"
        sides = [("ours: covariances + tangent", run_child("ours", args, ours_out))]
        if not args.skip_nilearn:
            sides.append(("nilearn ConnectivityMeasure.fit", run_child("nilearn", args, ref_out)))
            diffs = max_differences(ours_out, ref_out)

    ours = sides[0][1]
    print()
    print(f"{'':34s} {'wall [s]':>10s} {'peak RSS [MiB]':>15s} {'load before/after':>18s}")
    for name, r in sides:
        loads = f"{r['load_before']:.2f}/{r['load_after']:.2f}"
        print(f"{name:34s} {r['seconds']:10.2f} {r['peak_rss_mib']:15.0f} {loads:>18s}")
    print(
        f"  ours: covariances {ours['covariances_s']:.2f} s, tangent (mean, whitening and "
        f"{n} transforms) {ours['tangent_s']:.2f} s; RSS before the tangent "
        f"{ours['rss_before_tangent_mib']:.0f} MiB (the covariance stack is "
        f"{n * p * p * 8 / 2**20:.0f} MiB)"
    )
    if len(sides) > 1:
        print(
            f"  nilearn: RSS before fit {sides[1][1]['rss_before_fit_mib']:.0f} MiB (all time "
            "series in memory, as its API needs); fit only, no transform"
        )
    print()
    if len(sides) > 1:
        speedup = sides[1][1]["seconds"] / ours["seconds"]
        print(
            f"speed-up (nilearn fit / ours): {speedup:.2f}x  (goal >= {GOAL_SPEEDUP:g}x: "
            f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'})"
        )
    print(
        f"ours peak RSS {ours['peak_rss_mib']:.0f} MiB  (goal <= {GOAL_RSS_MIB:g} MiB: "
        f"{'met' if ours['peak_rss_mib'] <= GOAL_RSS_MIB else 'NOT met'})"
    )
    if len(sides) > 1:
        for key, label in (
            ("mean", "mean_"),
            ("whitening", "whitening_"),
            ("transformed", f"tangent matrices (first {args.compare} subjects)"),
        ):
            diff, rel = diffs[key]
            verdict = "met" if rel <= GOAL_DIFF else "NOT met"
            print(
                f"max |ours - nilearn| {label}: {diff:.3g} (relative to max |nilearn| "
                f"{rel:.3g}; goal <= {GOAL_DIFF:g}: {verdict})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bids-connectome on a Dask cluster: Slurm jobs as Dask workers (dask-jobqueue), or a
LocalCluster to try the same thing on one machine. See docs/cluster.md.

    python cluster/dask_slurm.py BIDS_DIR OUTPUT_DIR --config my.yaml --cluster slurm --jobs 50
    python cluster/dask_slurm.py BIDS_DIR OUTPUT_DIR --config my.yaml --cluster local --jobs 2

Each Dask task computes one run and writes its outputs itself, so OUTPUT_DIR must be on a file
system the workers share. Rerunning skips the runs already done.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_cluster(kind: str, jobs: int):
    """A Dask cluster: ``jobs`` single-threaded workers (Slurm jobs, or local processes)."""
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster  # pip install dask-jobqueue

        cluster = SLURMCluster(
            cores=1,  # one run per worker: runs are single-threaded (BLAS pinned)
            processes=1,
            memory="4GB",
            walltime="04:00:00",
            local_directory="$TMPDIR",  # node-local scratch for the workers
            job_extra_directives=["--output=dask-worker-%j.log"],
        )
        cluster.scale(jobs=jobs)
        return cluster
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--config", help="YAML file or preset name (default: the default preset)")
    parser.add_argument("--participant-label", nargs="+")
    parser.add_argument("--cluster", choices=("slurm", "local"), default="slurm")
    parser.add_argument("--jobs", type=int, default=10, help="Dask workers (one run each)")
    parser.add_argument("--no-reports", action="store_true", help="no HTML reports")
    args = parser.parse_args(argv)

    from bids_app import api

    with make_cluster(args.cluster, args.jobs) as cluster:
        summary = api.run_participant(
            args.bids_dir,
            args.output_dir,
            args.config,
            participant_label=args.participant_label,
            dask_scheduler=cluster.scheduler_address,
            reports=not args.no_reports,
        )
    print(
        f"{summary.n_done} run(s) done, {summary.n_skipped} skipped, {summary.n_excluded} "
        f"excluded, {summary.n_failed} failed"
    )
    for label, message, _ in summary.failures:
        print(f"  {label}: {message}")
    if summary.exit_code == 0:
        result = api.run_group(args.output_dir, args.config, reports=not args.no_reports)
        print(f"group level: {len(result.written)} files in {result.folder}")
    return summary.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

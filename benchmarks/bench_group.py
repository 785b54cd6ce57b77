"""The group level at cohort scale: 1000 participants x 400 regions, correlation + partial
correlation + tangent, time and peak memory of ``bids-connectome group`` (target <= 2 GiB).

Builds (once, in --work) an OUTPUT_DIR as the participant level writes it: per participant a
QC sidecar, a 150-volume time series of 400 regions and its correlation and partial correlation
matrices (Ledoit-Wolf), with the sidecars and the configuration record. To keep the build short,
``--distinct`` participants are computed and the others are byte copies of them with their own
mean FD (the group level reads and parses every file all the same). Then runs the group level
in a fresh process and prints its wall time and peak RSS. The tangent step alone, against
nilearn's ConnectivityMeasure(kind="tangent"), is benchmarks/bench_tangent.py.

Usage: ``python benchmarks/bench_group.py [--participants 1000] [--regions 400] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
SPACE = "MNI152NLin2009cAsym"


def build(work: Path, n_sub: int, n_reg: int, n_vol: int, distinct: int) -> tuple[Path, Path]:
    import nibabel as nib
    import pandas as pd

    from bids_app import connect, naming
    from bids_app.config import load_config
    from bids_app.write import matrix_text, to_json_text, write_json, write_text, write_tsv

    out = work / f"out-{n_sub}x{n_reg}"
    config_path = work / "group.yaml"
    if (out / ".complete").is_file():
        return out, config_path
    shutil.rmtree(out, ignore_errors=True)
    labels = np.arange(1, n_reg + 1, dtype=np.int16).reshape(-1, 1, 1)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), work / "atlas.nii.gz")
    config_path.write_text(
        f"space: {SPACE}\n"
        "denoise: {name: simple}\n"
        "atlases: [{name: Big, kind: labels, image: atlas.nii.gz}]\n"
        "connectivity: {measures: [correlation, partialcorrelation, tangent]}\n"
    )
    config = load_config(config_path)
    chash = "sha256:" + config.digest(participant_only=True)
    write_json(
        naming.config_path(out, "simple"),
        naming.configuration_record(config.canonical(), chash, {}),
    )
    rng = np.random.default_rng(0)
    regions = [f"R{k + 1}" for k in range(n_reg)]
    lut = pd.DataFrame({"index": np.arange(1, n_reg + 1), "name": regions})
    lut[["x", "y", "z"]] = rng.uniform(-70, 70, (n_reg, 3))
    write_tsv(naming.atlas_lut_path(out, "Big"), lut)
    network = np.arange(n_reg) % 7
    texts = []
    print(f"computing {distinct} distinct participants ...", flush=True)
    for _ in range(distinct):
        latent = rng.standard_normal((n_vol, 7))
        ts = latent[:, network] + 1.5 * rng.standard_normal((n_vol, n_reg))
        ts = (ts - ts.mean(0)) / ts.std(0, ddof=1)
        texts.append(
            {
                "ts": matrix_text(ts, regions),
                "correlation": matrix_text(connect.connectivity_matrix(ts, "correlation"), regions),
                "partialcorrelation": matrix_text(
                    connect.connectivity_matrix(ts, "partialcorrelation"), regions
                ),
            }
        )
    print(f"writing {n_sub} participants ...", flush=True)
    for i in range(n_sub):
        ents = {"sub": f"{i + 1:04d}", "task": "rest", "space": SPACE}
        t = texts[i % distinct]
        fd = float(rng.uniform(0.05, 0.6))
        qc = naming.qc_sidecar(
            n_volumes=n_vol,
            n_kept=n_vol,
            provenance={"MeanFramewiseDisplacement": fd},
            t_r=2.0,
            excluded=None,
            sources=[],
            config_hash=chash,
        )
        write_text(
            naming.participant_path(out, ents, "qc", ".json", desc="simple"), to_json_text(qc)
        )
        ts_path = naming.participant_path(
            out, ents, "timeseries", ".tsv", atlas="Big", desc="simple"
        )
        ts_path.parent.mkdir(parents=True, exist_ok=True)
        ts_path.write_text(t["ts"])
        ts_path.with_suffix(".json").write_text(
            json.dumps({"Columns": regions, "MissingRegions": [], "ConfigurationHash": chash})
        )
        for meas in ("correlation", "partialcorrelation"):
            path = naming.participant_path(
                out, ents, "relmat", ".tsv", atlas="Big", meas=meas, desc="simple"
            )
            path.write_text(t[meas])
            side = naming.relmat_sidecar(
                measure=meas,
                estimator="ledoit_wolf",
                atlas="Big",
                sources=[],
                volumes=n_vol,
                config_hash=chash,
            )
            path.with_suffix(".json").write_text(to_json_text(side))
    (out / ".complete").touch()
    return out, config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=400)
    parser.add_argument("--volumes", type=int, default=150)
    parser.add_argument("--distinct", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids-connectome-bench-group"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    out, config = build(args.work, args.participants, args.regions, args.volumes, args.distinct)
    shutil.rmtree(out / "group", ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "/nonexistent", str(out), "group", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"group level failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    n_files = len(list((out / "group").iterdir()))
    print(
        f"group level, {args.participants} participants x {args.regions} regions, correlation + "
        f"partial correlation + tangent: {wall:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
        f"(target <= 2048 MiB), {n_files} files"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A small synthetic fMRIPrep-style dataset, for the demo and the tests.

The data sit on the real MNI152NLin2009cAsym 2 mm grid (shape and affine of
fMRIPrep's ``res-2`` outputs). Region signals follow a known network
structure; subject motion adds a global artifact to the BOLD and shows in the
confounds (fMRIPrep column names, ``n/a`` first rows, non-steady-state volumes,
CompCor metadata in the JSON sidecar), so denoising has something to remove.

Command line: ``bids-connectome-demo DEST`` writes ``DEST/fmriprep`` (the input
folder), ``DEST/atlas`` (a labels atlas, its lookup table and a coordinates
file) and ``DEST/demo.yaml`` (a config using them).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from . import __version__
from .write import to_json_text, write_bytes, write_nifti, write_text, write_tsv

SPACE = "MNI152NLin2009cAsym"
# fMRIPrep's MNI152NLin2009cAsym res-2 grid.
GRID_SHAPE = (97, 115, 97)
GRID_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
N_NETWORKS = 4
NON_STEADY = 2


@dataclass(frozen=True)
class DemoSpec:
    n_subjects: int = 3
    n_sessions: int = 2
    n_runs: int = 1
    n_volumes: int = 100
    t_r: float = 2.0
    parcel_mm: float = 28.0
    seed: int = 0
    task: str = "rest"
    cifti: bool = False  # also fMRIPrep's fsLR 91k dense time series of every run
    brain_model: Path | None = None  # shared fsLR32k folder: the real 91k brain model


# CIFTI: fsLR 32k meshes (32,492 vertices a hemisphere) and the MNI152NLin6Asym 2 mm grid
# of the 91k subcortical voxels.
FSLR_VERTICES = 32492
CIFTI_AFFINE = np.array([[-2.0, 0, 0, 90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])
CIFTI_SHAPE = (91, 109, 91)
SURFACE_PARCELS = 24  # per hemisphere
SHARED_SURFACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "surfaces" / "fsLR32k"


def brain_model(folder: Path | None = None):
    """The 91k grayordinates: fMRIPrep's real brain model when ``folder`` (the shared
    fsLR32k files) is given, else a built-in one of the same size: cortex without a
    medial wall band, and two thalamus-like blocks of voxels."""
    from nibabel import cifti2

    if folder is not None:
        info = np.load(folder / "fMRI_vertex_info_32k.npz")
        left = cifti2.BrainModelAxis.from_surface(
            info["grayl"], int(info["num_meshl"]), "CortexLeft"
        )
        right = cifti2.BrainModelAxis.from_surface(
            info["grayr"], int(info["num_meshr"]), "CortexRight"
        )
        import nibabel as nib

        sub = nib.load(folder / "tpl-fsLR_atlas-ciftiSubcortical_den-32k_dseg.dlabel.nii")
        return left + right + sub.header.get_axis(1)
    wall = np.zeros(FSLR_VERTICES, bool)
    wall[14000:16796] = True  # a medial-wall-like band of 2,796 vertices
    left = cifti2.BrainModelAxis.from_surface(np.flatnonzero(~wall), FSLR_VERTICES, "CortexLeft")
    right = cifti2.BrainModelAxis.from_surface(np.flatnonzero(~wall), FSLR_VERTICES, "CortexRight")
    axes = [left, right]
    for name, x0 in (("ThalamusLeft", 36), ("ThalamusRight", 48)):
        ijk = np.indices((7, 9, 8)).reshape(3, -1).T + np.array([x0, 46, 36])
        axes.append(cifti2.BrainModelAxis.from_mask(_mask_of(ijk), name, CIFTI_AFFINE))
    out = axes[0]
    for ax in axes[1:]:
        out = out + ax
    return out


def _mask_of(ijk: np.ndarray) -> np.ndarray:
    mask = np.zeros(CIFTI_SHAPE, bool)
    mask[tuple(ijk.T)] = True
    return mask


def surface_parcels(bm) -> tuple[np.ndarray, pd.DataFrame]:
    """A parcellation of the grayordinates: blocks of vertex numbers per hemisphere, and
    one parcel per subcortical structure; networks assigned round-robin."""
    labels = np.zeros(len(bm), dtype=np.int32)
    rows = []
    next_label = 1
    for name, slc, _ in bm.iter_structures():
        idx = np.arange(slc.start or 0, slc.stop if slc.stop is not None else len(bm))
        if "CORTEX" in name:
            order = np.argsort(np.asarray(bm.vertex[idx]), kind="stable")
            block = np.empty(len(idx), dtype=int)  # blocks of the hemisphere's vertices
            block[order] = (np.arange(len(idx)) * SURFACE_PARCELS) // len(idx)
            hemi = "LH" if "LEFT" in name else "RH"
            for b in range(SURFACE_PARCELS):
                net = (next_label - 1) % N_NETWORKS + 1
                labels[idx[block == b]] = next_label
                rows.append(
                    {
                        "index": next_label,
                        "name": f"{hemi}_Net{net}_{b + 1}",
                        "network": f"Net{net}",
                    }
                )
                next_label += 1
        else:
            net = (next_label - 1) % N_NETWORKS + 1
            labels[idx] = next_label
            short = name.replace("CIFTI_STRUCTURE_", "").title().replace("_", "")
            rows.append({"index": next_label, "name": f"{short}_Net{net}", "network": f"Net{net}"})
            next_label += 1
    return labels, pd.DataFrame(rows)


def _write_dlabel(path: Path, labels: np.ndarray, lut: pd.DataFrame, bm) -> None:
    from nibabel import cifti2

    rng = np.random.default_rng(1)
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    for idx, name in zip(lut["index"], lut["name"], strict=True):
        table[int(idx)] = (str(name), tuple(float(c) for c in rng.random(3)) + (1.0,))
    axis = cifti2.LabelAxis(["DemoSurf"], [table])
    img = cifti2.Cifti2Image(labels[None, :].astype(np.float32), header=(axis, bm))
    img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_LABELS")
    write_bytes(path, img.to_bytes())


def brain_mask() -> np.ndarray:
    """An ellipsoid roughly the size and position of the MNI brain."""
    ijk = np.indices(GRID_SHAPE).reshape(3, -1).T
    xyz = ijk * 2.0 + GRID_AFFINE[:3, 3]
    centre = np.array([0.0, -18.0, 12.0])
    radii = np.array([68.0, 88.0, 66.0])
    inside = (((xyz - centre) / radii) ** 2).sum(axis=1) <= 1.0
    return inside.reshape(GRID_SHAPE)


def parcellation(mask: np.ndarray, parcel_mm: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Cut the mask into cubes of ``parcel_mm`` per hemisphere; label networks round-robin."""
    ijk = np.argwhere(mask)
    xyz = ijk * 2.0 + GRID_AFFINE[:3, 3]
    cell = np.floor((xyz - xyz.min(axis=0)) / parcel_mm).astype(int)
    hemi = (xyz[:, 0] >= 0).astype(int)
    keys = np.column_stack([hemi, cell])
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    keep = counts >= 40
    new_ids = np.zeros(len(uniq), dtype=np.int32)
    new_ids[keep] = np.arange(1, keep.sum() + 1)
    labels = np.zeros(GRID_SHAPE, dtype=np.int16)
    labels[tuple(ijk.T)] = new_ids[inverse.ravel()]
    rows = []
    for idx in range(1, keep.sum() + 1):
        hemi_name = "RH" if uniq[keep][idx - 1][0] else "LH"
        net = (idx - 1) % N_NETWORKS + 1
        rows.append({"index": idx, "name": f"{hemi_name}_Net{net}_{idx}", "network": f"Net{net}"})
    return labels, pd.DataFrame(rows)


def _blob(centre_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    ijk = np.indices(GRID_SHAPE, dtype=np.float32)
    xyz = [ijk[a] * 2.0 + GRID_AFFINE[a, 3] for a in range(3)]
    d2 = sum((xyz[a] - centre_mm[a]) ** 2 for a in range(3))
    return np.exp(-d2 / (2 * sigma_mm**2)).astype(np.float32)


def blob_images(
    mask: np.ndarray, centroids_mm: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Eight Gaussian probability maps around parcel centroids, and a t-like map with
    two positive and one negative blob (for the ``maps`` and ``regions`` atlas kinds)."""
    picks = centroids_mm[:: max(len(centroids_mm) // 8, 1)][:8]
    maps = np.stack([_blob(c, 8.0) * mask for c in picks], axis=-1)
    maps[maps < 0.05] = 0
    tmap = 6 * _blob(picks[0], 7.0) + 5 * _blob(picks[3], 6.0) - 5 * _blob(picks[6], 6.0)
    tmap = (tmap + 0.3 * rng.standard_normal(GRID_SHAPE).astype(np.float32)) * mask
    return maps.astype(np.float32), tmap.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, k: int, rho: float = 0.7) -> np.ndarray:
    """AR(1) series with unit variance, shape (n, k)."""
    out = np.empty((n, k))
    out[0] = rng.standard_normal(k)
    for t in range(1, n):
        out[t] = rho * out[t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(k)
    return out


def _motion(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    """Six rigid-body parameters (mm, rad) as random walks with a few jerks."""
    steps = rng.standard_normal((n, 6)) * level * np.array([0.05, 0.05, 0.05, 0.001, 0.001, 0.001])
    jerks = rng.random(n) < 0.04 * level
    steps[jerks] *= 12
    steps[0] = 0
    return np.cumsum(steps, axis=0)


def _expand(frame: dict, base: str, values: np.ndarray) -> None:
    deriv = np.concatenate([[np.nan], np.diff(values)])
    frame[base] = values
    frame[f"{base}_derivative1"] = deriv
    frame[f"{base}_power2"] = values**2
    frame[f"{base}_derivative1_power2"] = deriv**2


def _confounds(
    rng: np.random.Generator,
    motion: np.ndarray,
    gs: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    dvars: np.ndarray,
    t_r: float,
) -> tuple[pd.DataFrame, dict]:
    n = motion.shape[0]
    frame: dict[str, np.ndarray] = {}
    for name, values in (("global_signal", gs), ("csf", csf), ("white_matter", wm)):
        _expand(frame, name, values)
    frame["csf_wm"] = (csf + wm) / 2
    std_dvars = dvars / np.nanmean(dvars)
    frame["std_dvars"] = std_dvars
    frame["dvars"] = dvars
    fd = np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + 50 * np.abs(
        np.diff(motion[:, 3:], axis=0)
    ).sum(1)
    frame["framewise_displacement"] = np.concatenate([[np.nan], fd])
    frame["rmsd"] = np.concatenate(
        [[np.nan], np.sqrt((np.diff(motion[:, :3], axis=0) ** 2).sum(1))]
    )
    meta: dict[str, dict] = {}
    noise = _smooth_noise(rng, n, 17, rho=0.5)
    for i in range(5):
        frame[f"t_comp_cor_{i:02d}"] = noise[:, i]
        meta[f"t_comp_cor_{i:02d}"] = {"Method": "tCompCor", "Retained": True}
    for j, (prefix, mask) in enumerate((("c", "CSF"), ("w", "WM"), ("a", "combined"))):
        for i in range(4):
            frame[f"{prefix}_comp_cor_{i:02d}"] = noise[:, 5 + 4 * j + i]
            meta[f"{prefix}_comp_cor_{i:02d}"] = {
                "Method": "aCompCor",
                "Mask": mask,
                "Retained": True,
                "SingularValue": float(10 - i),
                "VarianceExplained": 0.1 / (i + 1),
                "CumulativeVarianceExplained": 0.1 * (i + 1),
            }
    k = np.arange(n)
    for j in range(1, 1 + int(np.floor(2 * n * t_r / 128.0))):
        frame[f"cosine{j - 1:02d}"] = np.sqrt(2.0 / n) * np.cos(np.pi / n * (k + 0.5) * j)
    for i in range(NON_STEADY):
        col = np.zeros(n)
        col[i] = 1
        frame[f"non_steady_state_outlier{i:02d}"] = col
    names = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    for i, name in enumerate(names):
        _expand(frame, name, motion[:, i])
    outliers = np.flatnonzero((frame["framewise_displacement"] > 0.5) | (std_dvars > 1.5))
    for i, t in enumerate(outliers):
        col = np.zeros(n)
        col[t] = 1
        frame[f"motion_outlier{i:02d}"] = col
    return pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in frame.items()}), meta


def build_demo(dest: Path | str, spec: DemoSpec | None = None) -> Path:
    """Write the demo dataset under ``dest``; return the path of its config file."""
    spec = spec or DemoSpec()
    dest = Path(dest)
    rng = np.random.default_rng(spec.seed)
    mask = brain_mask()
    labels, lut = parcellation(mask, spec.parcel_mm)
    n_parcels = len(lut)
    network_of = np.array([(i % N_NETWORKS) for i in range(n_parcels)])
    atlas_dir = dest / "atlas"
    write_nifti(atlas_dir / "atlas-DemoGrid_dseg.nii.gz", nib.Nifti1Image(labels, GRID_AFFINE))
    write_tsv(atlas_dir / "atlas-DemoGrid_dseg.tsv", lut[["index", "name", "network"]])
    centroids = np.array([np.argwhere(labels == i + 1).mean(axis=0) for i in range(n_parcels)])
    world = centroids * 2.0 + GRID_AFFINE[:3, 3]
    seeds = pd.DataFrame(
        {"name": [f"Seed{i + 1}" for i in range(0, n_parcels, 3)]}
        | {ax: np.round(world[::3, j], 1) for j, ax in enumerate("xyz")}
    )
    write_tsv(atlas_dir / "demo_seeds.tsv", seeds[["x", "y", "z", "name"]])
    maps, tmap = blob_images(mask, world, rng)
    write_nifti(atlas_dir / "demo_maps.nii.gz", nib.Nifti1Image(maps, GRID_AFFINE))
    write_nifti(atlas_dir / "demo_tmap.nii.gz", nib.Nifti1Image(tmap, GRID_AFFINE))
    surface = None
    if spec.cifti:
        bm = brain_model(spec.brain_model)
        surf_labels, surf_lut = surface_parcels(bm)
        _write_dlabel(
            atlas_dir / "tpl-fsLR_atlas-DemoSurf_den-91k_dseg.dlabel.nii", surf_labels, surf_lut, bm
        )
        write_tsv(atlas_dir / "atlas-DemoSurf_dseg.tsv", surf_lut)
        surface = (bm, surf_labels, surf_lut)

    root = dest / "fmriprep"
    write_text(
        root / "dataset_description.json",
        to_json_text(
            {
                "Name": "bids-connectome synthetic demo (fMRIPrep layout)",
                "BIDSVersion": "1.9.0",
                "Authors": ["bids-connectome developers", "bids-connectome-demo (synthetic data)"],
                "DatasetType": "derivative",
                "GeneratedBy": [
                    {
                        "Name": "bids-connectome-demo",
                        "Version": __version__,
                        "Description": "Synthetic BOLD on the MNI152NLin2009cAsym 2 mm grid",
                    }
                ],
            }
        ),
    )
    voxel_parcel = labels[mask].astype(int) - 1  # -1: in the mask, no parcel
    n_vox = int(mask.sum())
    baseline = 600 + 200 * rng.random(n_vox)
    artifact_map = rng.standard_normal(n_vox)
    for s in range(1, spec.n_subjects + 1):
        motion_level = 0.5 + 1.5 * (s - 1) / max(spec.n_subjects - 1, 1)
        for ses in range(1, spec.n_sessions + 1):
            for run in range(1, spec.n_runs + 1):
                ents = f"sub-{s:02d}" + (f"_ses-{ses}" if spec.n_sessions > 1 else "")
                ents += f"_task-{spec.task}" + (f"_run-{run}" if spec.n_runs > 1 else "")
                sub_dir = root / f"sub-{s:02d}"
                if spec.n_sessions > 1:
                    sub_dir = sub_dir / f"ses-{ses}"
                func = sub_dir / "func"
                _write_run(
                    func,
                    ents,
                    spec,
                    rng,
                    mask,
                    voxel_parcel,
                    network_of,
                    baseline,
                    artifact_map,
                    motion_level,
                    surface,
                )
    config = dest / "demo.yaml"
    surface_atlas = (
        """  # for the fsLR runs (--space fsLR): a surface parcellation; the volume atlases above
  # are skipped for them, and this one for the volume runs
  - {name: DemoSurf, kind: labels, image: atlas/tpl-fsLR_atlas-DemoSurf_den-91k_dseg.dlabel.nii,
     labels: atlas/atlas-DemoSurf_dseg.tsv}
"""
        if spec.cifti
        else ""
    )
    write_text(
        config,
        f"""# Demo configuration (written by bids-connectome-demo); paths are relative to this file.
space: {SPACE}
denoise:
  name: simple
  strategy: simple
  detrend: true
  standardize: zscore_sample
  high_pass: 0.01
atlases:  # made on the BOLD's template (space: checked against the BOLD space)
  - {{name: DemoGrid, kind: labels, image: atlas/atlas-DemoGrid_dseg.nii.gz, labels: atlas/atlas-DemoGrid_dseg.tsv,
     space: {SPACE}}}
  - {{name: DemoMaps, kind: maps, image: atlas/demo_maps.nii.gz, space: {SPACE}}}
  - {{name: DemoSeeds, kind: spheres, coordinates: atlas/demo_seeds.tsv, radius: 6, space: {SPACE}}}
  - {{name: DemoTmap, kind: regions, image: atlas/demo_tmap.nii.gz, threshold: 3.0,
     extract_type: connected_components, min_region_size: 500, space: {SPACE}}}
{surface_atlas}connectivity:
  measures: [correlation, partialcorrelation]
  estimator: ledoit_wolf
""",
    )
    return config


def _write_run(
    func: Path,
    ents: str,
    spec: DemoSpec,
    rng: np.random.Generator,
    mask: np.ndarray,
    voxel_parcel: np.ndarray,
    network_of: np.ndarray,
    baseline: np.ndarray,
    artifact_map: np.ndarray,
    motion_level: float,
    surface: tuple | None = None,
) -> None:
    n = spec.n_volumes
    n_parcels = len(network_of)
    networks = _smooth_noise(rng, n, N_NETWORKS)
    parcels = networks[:, network_of] + 0.6 * _smooth_noise(rng, n, n_parcels)
    motion = _motion(rng, n, motion_level)
    fd = np.concatenate([[0.0], np.abs(np.diff(motion[:, :3], axis=0)).sum(1)])
    artifact = 4.0 * (motion[:, :3].sum(1) - motion[:, :3].sum(1).mean()) + 8.0 * fd
    drift = np.linspace(-1, 1, n)
    steady = np.ones(n)
    steady[:NON_STEADY] = 1.3  # T1 saturation in the first volumes
    signal = (
        np.where(voxel_parcel >= 0, 1.0, 0.0)[None, :] * parcels[:, np.maximum(voxel_parcel, 0)]
    )
    data = (
        baseline[None, :] * steady[:, None]
        + 6.0 * signal
        + 3.0 * rng.standard_normal((n, baseline.size))
        + artifact[:, None] * artifact_map[None, :]
        + 5.0 * drift[:, None]
    )
    # Whole numbers in float32: fMRIPrep's dtype, and the files compress ~3x better.
    data = np.round(data).astype(np.float32)
    vol4d = np.zeros(GRID_SHAPE + (n,), dtype=np.float32)
    vol4d[mask] = data.T
    stem = f"{ents}_space-{SPACE}_res-2"
    img = nib.Nifti1Image(vol4d, GRID_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = spec.t_r
    write_nifti(func / f"{stem}_desc-preproc_bold.nii.gz", img, compresslevel=1)
    write_text(
        func / f"{stem}_desc-preproc_bold.json",
        to_json_text({"RepetitionTime": spec.t_r, "SkullStripped": False, "TaskName": spec.task}),
    )
    write_nifti(
        func / f"{stem}_desc-brain_mask.nii.gz", nib.Nifti1Image(mask.astype(np.uint8), GRID_AFFINE)
    )
    write_text(func / f"{stem}_desc-brain_mask.json", to_json_text({"Type": "Brain"}))
    gs = data.mean(axis=1).astype(float)
    wm = artifact + 0.5 * rng.standard_normal(n) + 500
    csf = 1.5 * artifact + 0.5 * rng.standard_normal(n) + 800
    dv = np.concatenate(
        [[np.nan], np.sqrt((np.diff(data[:, ::50], axis=0).astype(float) ** 2).mean(1))]
    )
    frame, meta = _confounds(rng, motion, gs, wm, csf, dv, spec.t_r)
    write_tsv(func / f"{ents}_desc-confounds_timeseries.tsv", frame, float_format="%.6g")
    write_text(func / f"{ents}_desc-confounds_timeseries.json", to_json_text(meta))
    if surface is not None:
        _write_cifti_run(func, ents, spec, networks, artifact, drift, steady, surface)


def _write_cifti_run(
    func: Path,
    ents: str,
    spec: DemoSpec,
    networks: np.ndarray,
    artifact: np.ndarray,
    drift: np.ndarray,
    steady: np.ndarray,
    surface: tuple,
) -> None:
    """fMRIPrep's ``*_space-fsLR_den-91k_bold.dtseries.nii`` of the run: the same network
    time courses, motion artifact and drift as its volume, on the 91k grayordinates."""
    import zlib

    from nibabel import cifti2

    bm, labels, lut = surface
    rng = np.random.default_rng(
        [spec.seed, zlib.crc32(ents.encode())]
    )  # the volume's stream untouched
    n, g = spec.n_volumes, len(bm)
    net_of = np.array([int(str(v).removeprefix("Net")) - 1 for v in lut["network"]])
    parcels = networks[:, net_of] + 0.6 * _smooth_noise(rng, n, len(lut))
    signal = np.zeros((n, g), dtype=np.float32)
    inside = labels > 0
    signal[:, inside] = parcels[:, labels[inside] - 1]
    data = (
        (600 + 200 * rng.random(g, dtype=np.float32))[None, :] * steady[:, None]
        + 6.0 * signal
        + 3.0 * rng.standard_normal((n, g), dtype=np.float32)
        + artifact[:, None] * rng.standard_normal(g, dtype=np.float32)[None, :]
        + 5.0 * drift[:, None]
    )
    series = cifti2.SeriesAxis(0.0, spec.t_r, n, unit="SECOND")
    img = cifti2.Cifti2Image(np.round(data).astype(np.float32), header=(series, bm))
    img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES")
    stem = f"{ents}_space-fsLR_den-91k_bold"
    write_bytes(func / f"{stem}.dtseries.nii", img.to_bytes())
    write_text(
        func / f"{stem}.json",
        to_json_text({"RepetitionTime": spec.t_r, "TaskName": spec.task, "Density": "91k"}),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bids-connectome-demo",
        description="Write a small synthetic fMRIPrep-style dataset, an atlas and a config to DEST.",
    )
    parser.add_argument(
        "dest", type=Path, help="folder to create (DEST/fmriprep is the input folder)"
    )
    parser.add_argument("--subjects", type=int, default=DemoSpec.n_subjects)
    parser.add_argument("--sessions", type=int, default=DemoSpec.n_sessions)
    parser.add_argument("--runs", type=int, default=DemoSpec.n_runs)
    parser.add_argument("--volumes", type=int, default=DemoSpec.n_volumes)
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    parser.add_argument(
        "--no-cifti",
        action="store_true",
        help="volume runs only (default: also fsLR 91k CIFTI runs and a surface parcellation)",
    )
    parser.add_argument(
        "--brain-model",
        type=Path,
        default=SHARED_SURFACES if SHARED_SURFACES.is_dir() else None,
        help="folder with fMRIPrep's fsLR 32k files (fMRI_vertex_info_32k.npz, the "
        "ciftiSubcortical dlabel) for the real 91k brain model; default: ../shared/data/"
        "surfaces/fsLR32k when present, else a built-in model of the same size",
    )
    args = parser.parse_args(argv)
    spec = DemoSpec(
        n_subjects=args.subjects,
        n_sessions=args.sessions,
        n_runs=args.runs,
        n_volumes=args.volumes,
        seed=args.seed,
        cifti=not args.no_cifti,
        brain_model=None if args.no_cifti else args.brain_model,
    )
    config = build_demo(args.dest, spec)
    print(json.dumps({"bids_dir": str(args.dest / "fmriprep"), "config": str(config)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

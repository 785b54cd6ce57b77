"""On-disk cache of grid-level operators and atlas content digests."""

from __future__ import annotations

import hashlib
import json
import logging
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
from test_extract_prepare import assert_same_operators

from bids_app import extract
from bids_app.config import parse_config
from bids_app.extract import cache
from bids_app.extract.operators import apply_mask, prepare_grid

ATLAS_SHAPE = (40, 46, 38)
ATLAS_AFFINE = np.array([[2.0, 0, 0, -40.0], [0, 2.0, 0, -46.0], [0, 0, 2.0, -36.0], [0, 0, 0, 1]])
SHAPE = (27, 31, 26)
AFFINE = np.array([[3.0, 0, 0, -40.0], [0, 3.0, 0, -45.0], [0, 0, 3.0, -36.0], [0, 0, 0, 1]])
T = 12


def atlas_cfg(**kwargs):
    return parse_config({"atlases": [kwargs]}, Path("/")).atlases[0]


def _write_atlases(folder: Path) -> list[dict]:
    rng = np.random.default_rng(3)
    ijk = np.indices(ATLAS_SHAPE).astype(float)
    centres = rng.uniform(4, np.array(ATLAS_SHAPE) - 4, size=(30, 3))
    dist = np.stack([(((ijk.T - c) / 5.0) ** 2).sum(axis=-1).T for c in centres], axis=-1)
    labels = (np.argmin(dist, axis=-1) + 1).astype(np.int16)
    labels[dist.min(axis=-1) > 1.5] = 0
    nib.Nifti1Image(labels, ATLAS_AFFINE).to_filename(folder / "labels.nii.gz")
    pd.DataFrame({"index": np.arange(1, 31), "name": [f"R{i}" for i in range(1, 31)]}).to_csv(
        folder / "labels.tsv", sep="\t", index=False
    )
    maps = np.exp(-dist[..., :20] * 2).astype(np.float32)
    maps[maps < 0.01] = 0
    nib.Nifti1Image(maps, ATLAS_AFFINE).to_filename(folder / "maps.nii.gz")
    world = nib.affines.apply_affine(ATLAS_AFFINE, centres[:12])
    pd.DataFrame({"x": world[:, 0], "y": world[:, 1], "z": world[:, 2]}).to_csv(
        folder / "seeds.csv", index=False
    )
    return [
        {
            "name": "L",
            "kind": "labels",
            "image": str(folder / "labels.nii.gz"),
            "labels": str(folder / "labels.tsv"),
        },
        {
            "name": "Med",
            "kind": "labels",
            "image": str(folder / "labels.nii.gz"),
            "strategy": "median",
        },
        {"name": "M", "kind": "maps", "image": str(folder / "maps.nii.gz")},
        {
            "name": "S",
            "kind": "spheres",
            "coordinates": str(folder / "seeds.csv"),
            "radius": 5.0,
            "allow_overlap": True,
        },
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache_data")
    atlases = _write_atlases(folder)
    sources = [extract.load_atlas(atlas_cfg(**a)) for a in atlases]
    rng = np.random.default_rng(8)
    bold = (rng.standard_normal(SHAPE + (T,)) * 20 + 300).astype(np.float32)
    nib.Nifti1Image(bold, AFFINE).to_filename(folder / "bold.nii.gz")
    ijk = np.indices(SHAPE).reshape(3, -1).T
    mask = ((((ijk - np.array(SHAPE) / 2) / (np.array(SHAPE) / 2.2)) ** 2).sum(1) <= 1).reshape(
        SHAPE
    )
    return {"folder": folder, "atlases": atlases, "sources": sources, "mask": mask}


def _signals(data, ops):
    run = extract.extract_run(data["folder"] / "bold.nii.gz", ops)
    return run.signals, run.coverage


def _same_signals(a, b):
    assert a[0].keys() == b[0].keys()
    for name in a[0]:
        assert a[0][name].tobytes() == b[0][name].tobytes(), name
        pd.testing.assert_frame_equal(a[1][name], b[1][name])


def test_digest_is_computed_once_from_content(data, tmp_path):
    src = data["sources"][0]
    assert len(src.digest) == 64 and len({s.digest for s in data["sources"]}) == 4
    # same bytes under another name and path, another atlas name: same digest
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(data["folder"] / "labels.nii.gz", moved / "a.nii.gz")
    shutil.copy(data["folder"] / "labels.tsv", moved / "a.tsv")
    cfg = dict(data["atlases"][0], name="Other", image=str(moved / "a.nii.gz"))
    cfg["labels"] = str(moved / "a.tsv")
    assert extract.load_atlas(atlas_cfg(**cfg)).digest == src.digest
    assert extract.load_atlas(atlas_cfg(**cfg, min_coverage=0.5)).digest == src.digest
    # one changed byte of the lookup table, an option that changes the regions: new digests
    table = (moved / "a.tsv").read_text()
    (moved / "a.tsv").write_text(table.replace("R7", "R8"))
    assert extract.load_atlas(atlas_cfg(**cfg)).digest != src.digest
    spheres = data["atlases"][3]
    assert (
        extract.load_atlas(atlas_cfg(**dict(spheres, radius=6.0))).digest
        != data["sources"][3].digest
    )
    builtin = extract.load_atlas(atlas_cfg(name="P", kind="spheres", coordinates="power2011"))
    assert builtin.digest == extract.atlas.atlas_digest(
        atlas_cfg(name="Q", kind="spheres", coordinates="Power2011")
    )


def test_cache_miss_then_hit_is_byte_identical(data, tmp_path, caplog):
    sources, mask = data["sources"], data["mask"]
    plain = extract.prepare(sources, SHAPE, AFFINE, mask)
    ref = _signals(data, plain)
    cache_dir = tmp_path / "cache"
    grid = prepare_grid(sources, SHAPE, AFFINE, cache_dir=cache_dir)
    assert not any(ga.cached for ga in grid.atlases)
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 4 and all(p.endswith(".npz") for p in entries)
    assert {p.split("-")[0] for p in entries} == {"labels", "maps", "spheres"}
    with caplog.at_level(logging.DEBUG, logger="bids_app.extract"):
        grid = prepare_grid(sources, SHAPE, AFFINE, cache_dir=cache_dir)
    assert all(ga.cached for ga in grid.atlases)
    assert "read from the cache" in caplog.text
    cached = extract.prepare(sources, SHAPE, AFFINE, mask, cache_dir=cache_dir)
    assert_same_operators(cached, plain)
    _same_signals(_signals(data, cached), ref)
    # entries hold plain arrays only
    for path in cache_dir.iterdir():
        with np.load(path, allow_pickle=False) as npz:
            assert all(npz[k].dtype != object for k in npz.files)


def test_key_depends_on_grid_and_versions(data, monkeypatch):
    src = data["sources"][2]
    key = cache.grid_key(src.digest, src.kind, SHAPE, AFFINE)
    assert key == cache.grid_key(src.digest, src.kind, SHAPE, AFFINE.copy())
    neg_zero = AFFINE.copy()
    neg_zero[0, 1] = -0.0
    assert key == cache.grid_key(src.digest, src.kind, SHAPE, neg_zero)
    shifted = AFFINE.copy()
    shifted[0, 3] += 1e-9
    assert key != cache.grid_key(src.digest, src.kind, SHAPE, shifted)
    assert key != cache.grid_key(src.digest, src.kind, (27, 31, 27), AFFINE)
    assert key != cache.grid_key(data["sources"][0].digest, src.kind, SHAPE, AFFINE)
    monkeypatch.setattr(cache, "CACHE_FORMAT", cache.CACHE_FORMAT + 1)
    assert key != cache.grid_key(src.digest, src.kind, SHAPE, AFFINE)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other-key", "bad-array"])
def test_damaged_entry_is_ignored_and_rebuilt(data, tmp_path, caplog, damage):
    sources, mask = data["sources"][2:3], data["mask"]  # the maps atlas
    ref = extract.prepare(sources, SHAPE, AFFINE, mask)
    cache_dir = tmp_path / "cache"
    prepare_grid(sources, SHAPE, AFFINE, cache_dir=cache_dir)
    (path,) = cache_dir.iterdir()
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a zip file" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if damage == "other-key":
            arrays["__key__"] = np.array("0" * 64)
        else:
            arrays["ptr"] = arrays["ptr"][:-1]  # readable, inconsistent
        np.savez(path, **arrays)
    with caplog.at_level(logging.DEBUG, logger="bids_app.extract"):
        grid = prepare_grid(sources, SHAPE, AFFINE, cache_dir=cache_dir)
    assert not grid.atlases[0].cached
    assert "ignoring" in caplog.text
    assert_same_operators(apply_mask(grid, mask), ref)
    # the entry was rewritten and is used again
    assert prepare_grid(sources, SHAPE, AFFINE, cache_dir=cache_dir).atlases[0].cached


def test_unwritable_cache_only_costs_the_rebuild(data, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    sources = data["sources"][:1]
    got = extract.prepare(sources, SHAPE, AFFINE, None, cache_dir=not_a_folder / "cache")
    assert got.matrix.nnz > 0 and not (not_a_folder / "cache").exists()


def test_sources_without_digest_are_not_cached(data, tmp_path):
    import dataclasses

    anon = dataclasses.replace(data["sources"][0], digest="")
    prepare_grid([anon], SHAPE, AFFINE, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


_WORKER = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from pathlib import Path
    import numpy as np
    from bids_app import extract
    from bids_app.config import parse_config
    from bids_app.extract import cache

    mode, cache_dir, start, atlases = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    cfgs = parse_config({"atlases": json.loads(atlases)}, Path("/")).atlases
    sources = [extract.load_atlas(c) for c in cfgs]
    shape, affine = tuple(json.loads(sys.argv[5])), np.array(json.loads(sys.argv[6]))
    while not start.exists():  # start together
        time.sleep(0.005)
    if mode == "prepare":
        ops = extract.prepare(sources, shape, affine, None, cache_dir=cache_dir)
        h = hashlib.sha256()
        for m in (ops.matrix, ops.support):
            for a in (m.data, m.indices, m.indptr):
                h.update(np.ascontiguousarray(a).tobytes())
        print(h.hexdigest())
    elif mode == "write":  # rewrite the same entries again and again for 2 s
        grid = extract.operators.prepare_grid(sources, shape, affine)
        keys = [cache.grid_key(s.digest, s.kind, shape, affine) for s in sources]
        n, t_end = 0, time.time() + 3.0
        while n < 10 or time.time() < t_end:
            for key, ga in zip(keys, grid.atlases):
                assert cache.save_entry(cache_dir, key, ga.arrays, ga.source.kind) is not None
            n += 1
        print("ok")
    else:  # read while the writers write: an entry that exists is always complete
        src = sources[0]
        key = cache.grid_key(src.digest, src.kind, shape, affine)
        path = cache.entry_path(cache_dir, key, src.kind)
        expected = extract.operators.prepare_grid([src], shape, affine).atlases[0].arrays
        hits = broken = 0
        t_end = time.time() + 2.5
        while time.time() < t_end:
            exists = path.exists()
            arrays = cache.load_entry(cache_dir, key, src.kind)
            if arrays is None:
                broken += exists
                continue
            hits += 1
            for k, v in expected.items():
                if arrays[k].astype(v.dtype).tobytes() != v.tobytes():
                    broken += 1
        print(json.dumps({"hits": hits, "broken": broken}))
    """
)


def _run_workers(tmp_path, data, modes):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    start = tmp_path / "start"
    cache_dir = tmp_path / "cache"
    # the maps atlas: the largest entry (slowest to write)
    atlases = json.dumps([data["atlases"][2], data["atlases"][0]])
    root = Path(extract.__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                mode,
                str(cache_dir),
                str(start),
                atlases,
                json.dumps(list(SHAPE)),
                json.dumps(AFFINE.tolist()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for mode in modes
    ]
    start.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out.strip().splitlines()[-1])
    return cache_dir, outs


def test_concurrent_processes_share_one_cache(data, tmp_path):
    """Fresh processes started together: two miss the same entries and build and write them,
    one rewrites them for 2 s, one reads them meanwhile. Every process succeeds, the two
    preparations equal an uncached one, the reader never finds an incomplete entry, and no
    temporary file is left behind."""
    modes = ["prepare", "write", "read", "prepare"]
    cache_dir, outs = _run_workers(tmp_path, data, modes)
    sources = [data["sources"][2], data["sources"][0]]
    ops = extract.prepare(sources, SHAPE, AFFINE, None)
    h = hashlib.sha256()
    for m in (ops.matrix, ops.support):
        for a in (m.data, m.indices, m.indptr):
            h.update(np.ascontiguousarray(a).tobytes())
    assert outs[0] == outs[3] == h.hexdigest()
    assert outs[1] == "ok"
    report = json.loads(outs[2])
    assert report["hits"] > 0 and report["broken"] == 0
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 2 and all(not n.startswith(".") for n in names)
    assert all(ga.cached for ga in prepare_grid(sources, SHAPE, AFFINE, cache_dir).atlases)


def test_temporary_files_of_killed_writers_are_cleaned(data, tmp_path):
    src = data["sources"][0]
    key = cache.grid_key(src.digest, src.kind, SHAPE, AFFINE)
    final = cache.entry_path(tmp_path, key, src.kind)
    stale = tmp_path / f".{final.stem}.123.dead.tmp"
    recent = tmp_path / f".{final.stem}.456.live.tmp"
    for path in (stale, recent):
        path.write_bytes(b"partial")
    old = stale.stat().st_mtime - 2 * cache.STALE_SECONDS
    os.utime(stale, (old, old))
    grid = prepare_grid([src], SHAPE, AFFINE, cache_dir=tmp_path)
    assert final.is_file() and not stale.exists() and recent.exists()
    assert cache.load_entry(tmp_path, key, src.kind).keys() == grid.atlases[0].arrays.keys()


def test_sources_described_by_the_cache_read_their_voxels_only_when_needed(data, tmp_path):
    """A second job loads its atlases from small cache entries (no voxel array read); with
    the grid in the operator cache it never reads them; on a grid that is not, it does.
    Either way, the same operators and signals as atlases loaded from their files."""
    cache_dir, mask = tmp_path / "cache", data["mask"]
    plain = extract.prepare(data["sources"], SHAPE, AFFINE, mask)
    first = [extract.load_atlas(atlas_cfg(**a), cache_dir) for a in data["atlases"]]
    assert not any(s.light for s in first)  # read from the files, entries written
    extract.prepare_grid(first, SHAPE, AFFINE, cache_dir=cache_dir)  # the grid cached
    light = [extract.load_atlas(atlas_cfg(**a), cache_dir) for a in data["atlases"]]
    assert [s.light for s in light] == [True, True, True, False]  # spheres have no voxels
    for a, b in zip(light, data["sources"], strict=True):
        pd.testing.assert_frame_equal(a.lut, b.lut)
        assert a.digest == b.digest and a.labels is None and a.maps is None
    warm = extract.prepare(light, SHAPE, AFFINE, mask, cache_dir=cache_dir)
    assert all(s.light for s in light[:3]), "a warm grid cache reads no voxel array"
    assert_same_operators(warm, plain)
    _same_signals(_signals(data, warm), _signals(data, plain))
    other = AFFINE.copy()
    other[:3, 3] += 1.5  # another grid: not cached, the voxels are read
    ref = extract.prepare(data["sources"], SHAPE, other, mask)
    cold = extract.prepare(light, SHAPE, other, mask, cache_dir=cache_dir)
    assert not any(s.light for s in light)
    assert_same_operators(cold, ref)
    # a damaged entry: the atlas is read from its files again
    entry = cache_dir / f"source-labels-{data['sources'][0].digest}.json"
    entry.write_text("{")
    again = extract.load_atlas(atlas_cfg(**data["atlases"][0]), cache_dir)
    assert not again.light and again.labels is not None

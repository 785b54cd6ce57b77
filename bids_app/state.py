"""What produced the outputs on disk: fingerprints and manifests, for resuming and for
never mixing two configurations under one ``desc-`` label.

Each run (and each aggregated session / subject) writes, after all its files, a hidden
manifest beside them: its *fingerprint* (software version, configuration hash, and the
path, size and modification time of every input file) and the files it wrote with
their sizes. A rerun skips a run whose manifest has the same fingerprint and whose
files are all there; any other run is recomputed, and every file it owned before that
it does not write again is removed (a relmat of a run now excluded, a measure no
longer asked for), as are temporary files a killed process left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, naming
from .write import STAGING_PREFIX, TEMP_MARKER, host_tag, write_json

if TYPE_CHECKING:
    from .discover import RunInputs
    from .engine import RunContext

log = logging.getLogger(__name__)

FORMAT = 1
# What a run owns (in func/ and figures/), and what the connectome of its unit owns: the
# run itself with ``aggregate: run``, else its session or subject.
RUN_SUFFIXES = ("timeseries", "coverage", "qc", "carpet", "regressors", "figures")
UNIT_SUFFIXES = ("relmat", "connectome", "unitfigures")


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def input_identity(run: RunInputs, bids_dir: Path) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every input file of a run."""
    out = []
    for path in run.input_files():
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        try:
            rel = path.relative_to(bids_dir).as_posix()
        except ValueError:
            rel = str(path)
        out.append([rel, size, mtime])
    return out


def run_fingerprint(run: RunInputs, ctx: RunContext, inputs: list[list[Any]]) -> str:
    """Digest of what determines a run's outputs; ``inputs`` from :func:`input_identity`."""
    return _digest(
        {
            "format": FORMAT,
            "version": __version__,
            "config": ctx.config_hash,
            "reports": ctx.reports,
            "inputs": inputs,
        }
    )


def unit_fingerprint(member_fingerprints: Iterable[str], ctx: RunContext) -> str:
    return _digest(
        {
            "format": FORMAT,
            "version": __version__,
            "config": ctx.config_hash,
            "reports": ctx.reports,
            "runs": list(member_fingerprints),
        }
    )


def _manifest(ctx: RunContext, entities: Mapping[str, str], kind: str) -> Path:
    return naming.manifest_path(ctx.output_dir, entities, ctx.desc, kind)


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(ctx: RunContext, entities: Mapping[str, str], kind: str, fingerprint: str) -> bool:
    """The job's outputs were made by this fingerprint and are all still there."""
    path = _manifest(ctx, entities, kind)
    data = read_manifest(path)
    if data is None or data.get("Fingerprint") != fingerprint:
        return False
    out = Path(ctx.output_dir)
    for name, size in (data.get("Files") or {}).items():
        try:
            if (out / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def owned_files(
    folder: Path, entities: Mapping[str, str], desc: str, suffixes: Iterable[str]
) -> list[Path]:
    """Output files in ``folder`` of the run/unit ``entities`` with ``desc`` and a suffix
    in ``suffixes`` (found by name: they are removed even without a manifest)."""
    key, wanted = naming.owner_key(entities), set(suffixes)
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if name.startswith("."):
            continue
        parsed = naming.try_parse_name(name)
        if parsed is None:
            continue
        ents, suffix, _ = parsed
        if suffix in wanted and ents.get("desc") == desc and naming.owner_key(ents) == key:
            out.append(folder / name)
    return out


def _temporaries(folder: Path, owned_names: set[str]) -> list[Path]:
    out = []
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if name.startswith(".") and name.endswith(".tmp") and TEMP_MARKER in name:
            target = name[1:].split(TEMP_MARKER, 1)[0]
            if target in owned_names:
                out.append(folder / name)
    return out


def _folders(ctx: RunContext, entities: Mapping[str, str]) -> list[Path]:
    """Where a run's / unit's files live: its ``func/`` folder and the participant's figures."""
    return [naming.func_dir(ctx.output_dir, entities), naming.figures_dir(ctx.output_dir, entities)]


def _commit(
    ctx: RunContext,
    entities: Mapping[str, str],
    kind: str,
    suffixes: Iterable[str],
    fingerprint: str | None,
    files: list[Path],
    inputs: list[list[Any]] | None = None,
) -> None:
    out = Path(ctx.output_dir)
    manifest = _manifest(ctx, entities, kind)
    keep = {Path(f).resolve() for f in files}
    stale: list[Path] = []
    for folder in _folders(ctx, entities):
        owned = owned_files(folder, entities, ctx.desc, suffixes)
        stale += [f for f in owned if f.resolve() not in keep]
        names = {f.name for f in owned} | {Path(f).name for f in files} | {manifest.name}
        stale += _temporaries(folder, names)
    if fingerprint is None:
        stale.append(manifest)
    for path in stale:
        try:
            path.unlink()
            log.debug("removed %s", path)
        except FileNotFoundError:
            pass
    if fingerprint is not None:
        sizes = {
            Path(f).resolve().relative_to(out.resolve()).as_posix(): Path(f).stat().st_size
            for f in sorted(files)
        }
        record = {
            "Format": FORMAT,
            "Fingerprint": fingerprint,
            "Software": naming.SOFTWARE,
            "ConfigurationHash": ctx.config_hash,
            "Files": sizes,
        }
        if inputs is not None:  # what the fingerprint was made of, for people to read
            record["Inputs"] = [
                dict(zip(("path", "size", "mtime_ns"), i, strict=True)) for i in inputs
            ]
        write_json(manifest, record)
    for folder in _folders(ctx, entities):
        _remove_empty_dirs(folder, out)


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """``func/``, ``figures/``, ``ses-*/`` and ``sub-*/`` left empty by removals (never
    ``stop`` itself)."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def run_suffixes(ctx: RunContext) -> tuple[str, ...]:
    if ctx.config.connectivity.aggregate == "run":
        return RUN_SUFFIXES + UNIT_SUFFIXES
    return RUN_SUFFIXES


def commit_run(
    entities: Mapping[str, str],
    ctx: RunContext,
    fingerprint: str,
    files: list[Path],
    inputs: list[list[Any]] | None = None,
) -> None:
    """Record a run's new files (and the identity of its ``inputs``, see
    :func:`input_identity`); remove what it owned before and no longer writes."""
    _commit(ctx, entities, "run", run_suffixes(ctx), fingerprint, files, inputs)


def discard_run(entities: Mapping[str, str], ctx: RunContext) -> None:
    """Remove every output of a failed run (they no longer match its inputs)."""
    _commit(ctx, entities, "run", run_suffixes(ctx), None, [])


def commit_unit(
    entities: Mapping[str, str], ctx: RunContext, fingerprint: str, files: list[Path]
) -> None:
    _commit(ctx, entities, "unit", UNIT_SUFFIXES, fingerprint, files)


def discard_unit(entities: Mapping[str, str], ctx: RunContext) -> None:
    """Remove the connectomes of a unit that cannot be computed now."""
    _commit(ctx, entities, "unit", UNIT_SUFFIXES, None, [])


def remove_other_levels(runs: Iterable[Mapping[str, str]], ctx: RunContext) -> None:
    """Remove connectomes of the selected runs at the aggregation levels not configured.

    With ``aggregate: run`` a session-level relmat left by an earlier configuration is
    stale, and so is a run-level one with ``aggregate: session``.
    """
    current = ctx.config.connectivity.aggregate
    seen = set()
    for ents in runs:
        now = naming.owner_key(naming.unit_entities(ents, current))
        for level in ("run", "session", "subject"):
            unit = naming.unit_entities(ents, level)
            key = naming.owner_key(unit)
            if key == now or key in seen:
                continue
            seen.add(key)
            if level == "run":
                for folder in _folders(ctx, unit):
                    for path in owned_files(folder, unit, ctx.desc, UNIT_SUFFIXES):
                        path.unlink(missing_ok=True)
            else:
                discard_unit(unit, ctx)


# --- temporary files of dataset-level writers -----------------------------------------------


def _dead_writer(tag: str, host: str) -> bool:
    """Whether ``tag`` (``<host>-<pid>[-...]``) names a process of this host that has ended."""
    parts = tag.split("-")
    if len(parts) < 2 or parts[0] != host:
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OverflowError):
        return False
    return False


def remove_dead_temporaries(folder: Path) -> None:
    """Temporary files and group staging folders in ``folder`` left by killed processes
    of this host."""
    host = host_tag()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(".") and name.endswith(".tmp") and TEMP_MARKER in name:
            if _dead_writer(name.split(TEMP_MARKER, 1)[1], host):
                (folder / name).unlink(missing_ok=True)
        elif name.startswith(STAGING_PREFIX) and _dead_writer(name[len(STAGING_PREFIX) :], host):
            shutil.rmtree(folder / name, ignore_errors=True)


def remove_dead_dataset_temporaries(output_dir: Path) -> None:
    """:func:`remove_dead_temporaries` in every dataset-level folder of ``output_dir``: the
    root, ``code/``, ``logs/``, ``group/`` with its subsets and their figures (per-run
    folders are cleaned when their run is committed)."""
    out = Path(output_dir)
    folders = [out, naming.code_dir(out), naming.logs_dir(out)]
    group = naming.group_dir(out)
    try:
        subsets = [group / n for n in os.listdir(group) if (group / n).is_dir()]
    except OSError:
        subsets = []
    for folder in [group, *subsets]:
        folders.append(folder)
        try:
            folders += [folder / n for n in os.listdir(folder) if (folder / n).is_dir()]
        except OSError:
            pass
    for folder in folders:
        remove_dead_temporaries(folder)

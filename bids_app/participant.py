"""Participant level: wire discovery's runs through an executor and keep the books.

For each run: skip it when its outputs are current (:mod:`bids_app.state`), else hand
it to the executor, whose worker computes it and writes its files
(:func:`bids_app.engine.process_run`). The parent keeps only small outcomes, so its
memory does not grow with the number of runs. Dataset-level files are written once a
run has succeeded; session / subject connectomes are computed after their runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import naming, state
from .config import Config
from .discover import RunInputs
from .engine import (
    RunContext,
    RunOutcome,
    RunTask,
    UnitTask,
    process_run,
    process_unit,
)
from .errors import EXIT_DATA, EXIT_FAILURE, EXIT_OK, OutputError
from .write import nifti_bytes, to_json_text, tsv_text, write_if_changed

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """Counts of one invocation and the failures, with the exit code they imply."""

    n_runs: int = 0
    n_done: int = 0
    n_excluded: int = 0
    n_skipped: int = 0
    failures: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def wrote_outputs(self) -> bool:
        return self.n_done + self.n_excluded + self.n_skipped > 0

    @property
    def exit_code(self) -> int:
        if not self.failures:
            return EXIT_OK
        codes = {code for _, _, code in self.failures}
        return EXIT_DATA if codes == {EXIT_DATA} else EXIT_FAILURE

    def add(self, outcome: RunOutcome) -> None:
        if outcome.status == "done":
            self.n_done += 1
        elif outcome.status == "excluded":
            self.n_excluded += 1
        elif outcome.status == "skipped":
            self.n_skipped += 1
        else:
            self.failures.append((outcome.label, outcome.message or "failed", outcome.exit_code))


def make_context(
    config: Config,
    output_dir: Path,
    bids_dir: Path,
    cache_dir: Path | None = None,
    reports: bool = True,
) -> RunContext:
    """The run context, atlases not loaded yet (:func:`load_atlases` does it when needed)."""
    return RunContext(
        config=config,
        sources=[],
        output_dir=Path(output_dir),
        bids_dir=Path(bids_dir),
        config_hash="sha256:" + config.digest(participant_only=True),
        cache_dir=cache_dir,
        reports=reports,
    )


def load_atlases(ctx: RunContext) -> None:
    from . import extract

    if not ctx.sources:
        atlases = ctx.config.applicable_atlases
        if ctx.config.grid == "volume":
            ctx.sources = [extract.load_atlas(a, ctx.cache_dir) for a in atlases]
        else:
            from .extract.surface import load_surface_atlas_config

            ctx.sources = [load_surface_atlas_config(a) for a in atlases]


def write_dataset_files(ctx: RunContext) -> None:
    """dataset_description.json, the configuration record, lookup tables, atlas images.

    Identical for every job with the same configuration, so concurrent jobs (a Slurm
    array) can all write them: each file is replaced atomically, and only if it differs.
    """
    out = ctx.output_dir
    state.remove_dead_dataset_temporaries(out)
    try:
        source = json.loads((ctx.bids_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        source = None
    link = Path(os.path.relpath(ctx.bids_dir, out)).as_posix()
    write_if_changed(
        out / "dataset_description.json", to_json_text(naming.dataset_description(source, link))
    )
    write_if_changed(out / ".bidsignore", naming.BIDSIGNORE)
    write_if_changed(out / "README.md", naming.README)
    from .config import file_digest

    files = {path: file_digest(path) for path in ctx.config.files()}
    record = naming.configuration_record(ctx.config.canonical(), ctx.config_hash, files)
    write_if_changed(naming.config_path(out, ctx.desc), to_json_text(record))
    entries = {a.name: a for a in ctx.config.atlases}
    for src in ctx.sources:
        write_if_changed(naming.atlas_lut_path(out, src.name), tsv_text(src.lut))
        resolved = ctx.config.resolved.get(src.name)
        reference = None
        if resolved is not None:
            entry = entries[src.name]
            write_if_changed(
                naming.atlas_description_path(out, src.name),
                to_json_text(naming.description_sidecar(resolved, entry.metadata)),
            )
            reference = naming.description_sidecar(resolved).get("SpatialReference")
            header = naming.lut_header(src.name, src.kind, reference)
            write_if_changed(
                naming.atlas_lut_sidecar_path(out, src.name),
                to_json_text(
                    naming.lut_sidecar(src.kind, list(src.lut.columns), resolved.template, header)
                ),
            )
        for suffix, img in src.outputs.items():
            path = naming.atlas_image_path(out, src.name, ctx.config.space, suffix)
            img = img.__class__(img.dataobj, img.affine, img.header.copy())
            img.header.set_xyzt_units("mm", "sec")  # BIDS asks for both units
            write_if_changed(path, nifti_bytes(img, gzipped=True))
            write_if_changed(
                path.with_name(path.name.replace(".nii.gz", ".json")),
                to_json_text(naming.region_maps_sidecar(src.name, reference)),
            )


def _units(runs: Iterable[RunInputs], aggregate: str) -> dict[tuple, list[RunInputs]]:
    units: dict[tuple, list[RunInputs]] = defaultdict(list)
    for run in runs:
        units[naming.owner_key(naming.unit_entities(run.entities, aggregate))].append(run)
    return units


def run_participant(
    ctx: RunContext,
    runs: list[RunInputs],
    executor,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> Summary:
    """Process ``runs`` with ``executor``; returns the summary (nothing per run is kept).

    ``on_outcome`` is called in this process for every run and unit as it finishes
    (progress display, logging).
    """
    report = on_outcome or (lambda outcome: None)
    try:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create OUTPUT_DIR {ctx.output_dir}: {err.strerror}") from None
    summary = Summary(n_runs=len(runs))
    fingerprints: dict[tuple, str] = {}
    todo: list[RunTask] = []
    for run in runs:
        log.debug(
            "%s: BOLD %s, mask %s, confounds %s",
            run.label,
            run.bold.name,
            run.mask.name if run.mask else None,
            run.confounds.name if run.confounds else None,
        )
        inputs = state.input_identity(run, ctx.bids_dir)
        fp = state.run_fingerprint(run, ctx, inputs)
        fingerprints[naming.owner_key(run.entities)] = fp
        if state.is_current(ctx, run.entities, "run", fp):
            outcome = RunOutcome(run.label, dict(run.entities), "skipped", fingerprint=fp)
            summary.add(outcome)
            report(outcome)
        else:
            todo.append(RunTask(run, fp, inputs))
    if todo or not (ctx.output_dir / "dataset_description.json").is_file():
        load_atlases(ctx)
    if todo and ctx.reports and executor.name == "processes":
        from .report import warm_up

        warm_up(ctx)  # imports and caches once, inherited by every forked worker
    dataset_files_written = False
    failed: set[tuple] = set()
    for outcome in executor.run(process_run, todo, ctx):
        summary.add(outcome)
        if not outcome.ok:
            failed.add(naming.owner_key(outcome.entities))
        elif not dataset_files_written:
            write_dataset_files(ctx)
            dataset_files_written = True
        report(outcome)
    if summary.wrote_outputs and not dataset_files_written:
        write_dataset_files(ctx)
    aggregate = ctx.config.connectivity.aggregate
    if aggregate != "run":
        units = []
        for key, members in sorted(_units(runs, aggregate).items()):
            if any(naming.owner_key(m.entities) in failed for m in members):
                log.warning("%s: not aggregated (a run of it failed)", naming.run_label(dict(key)))
                state.discard_unit(dict(key), ctx)
                continue
            fps = [fingerprints[naming.owner_key(m.entities)] for m in members]
            task = UnitTask(dict(key), [dict(m.entities) for m in members], "")
            task.fingerprint = state.unit_fingerprint(fps, ctx)
            if state.is_current(ctx, task.entities, "unit", task.fingerprint):
                continue
            units.append(task)
        if units:
            load_atlases(ctx)
        for outcome in executor.run(process_unit, units, ctx):
            if not outcome.ok:
                summary.failures.append(
                    (outcome.label, outcome.message or "failed", outcome.exit_code)
                )
            report(outcome)
    state.remove_other_levels([r.entities for r in runs], ctx)
    if ctx.reports and summary.wrote_outputs:
        from .report import participant_report

        for sub in sorted({r.entities["sub"] for r in runs}):
            try:
                participant_report(ctx.output_dir, sub, ctx.config)
            except Exception as err:  # a report never fails the level
                log.warning("sub-%s: the report could not be written: %s", sub, err)
    return summary


__all__ = ["Summary", "load_atlases", "make_context", "run_participant", "write_dataset_files"]

"""A reconstruction from a validated config: load, prepare, iterate, write.

:func:`reconstruct` is the one execution path of ``ptychograph run`` and of the Python API: the
frames go to a chunked Zarr store, Dask workers read their own chunks and keep their exit waves
(:mod:`ptychograph.executors.dask`). :func:`reconstruct_in_process` runs the same algorithms
through the same driver with the in-process executor; it is the reference the distributed path
is tested against (docs/design.md, "Seams").
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.algorithms import plan_from
from ptychograph.auto_modes import mode_hooks
from ptychograph.backend import complex_dtype, real_dtype
from ptychograph.checkpoint import load_checkpoint, save_checkpoint
from ptychograph.cluster import open_client
from ptychograph.config import Config, load_config, parse_config
from ptychograph.driver import Callback, Driver, DriverSettings, SyncHook, choose_final
from ptychograph.errors import InputError
from ptychograph.executors import RunExecutor
from ptychograph.executors.dask import DaskExecutor
from ptychograph.executors.local import LocalExecutor
from ptychograph.initial import load_previous, load_probe_file
from ptychograph.io import apply_geometry, convert_to_store, load_scan
from ptychograph.io.store_check import check_store_frames
from ptychograph.io.validate import validate_frames, validate_mask
from ptychograph.io.zarr_store import is_frames_store, read_store_info
from ptychograph.plotting import preview_figure
from ptychograph.problem import Problem, Result, ScanSummary, layout, prepare, previous_object
from ptychograph.results import check_output_free, write_result
from ptychograph.scan import Scan
from ptychograph.state import SyncPoint

log = logging.getLogger("ptychograph")


def drive(
    executor: RunExecutor,
    problem: Problem,
    config: Config,
    progress: Callback | None = None,
    start: SyncPoint | None = None,
    hooks: Sequence[SyncHook] = (),
) -> Result:
    """Run the configured plan from ``start`` (or the problem's initial state) to the end."""
    rec, cluster = config.reconstruction, config.cluster
    settings = DriverSettings(
        rec.iterations, cluster.sync_every, cluster.lookahead, rec.average_last
    )
    driver = Driver(executor, plan_from(rec), settings, progress, [*hooks, *mode_hooks(config)])
    start = start or SyncPoint(problem.state)
    if start.state.origins is None:
        start = dataclasses.replace(start, state=start.state.replace(origins=problem.origins))
    last = driver.run(start)
    final = choose_final(executor, last)
    return Result(final.state, last.history, problem, config, final.chosen, final.model_error)


def load_validated(config: Config) -> tuple[Scan, list[str]]:
    """Read and validate the scan named in the config; notes say what was fixed."""
    scan = load_scan(config.data.path, config.data)
    return validate_frames(scan, config.data.nonfinite, config.data.negative)


def reconstruct_in_process(
    config: Config, progress: Callback | None = None, n_chunks: int = 1
) -> Result:
    """The single-process reference: the same driver and algorithms with the views split into
    ``n_chunks`` slots in this process; nothing is written."""
    scan, notes = load_validated(config)
    for note in notes:
        log.warning("%s", note)
    problem = prepare(scan, config)
    rec = config.reconstruction
    amplitudes = np.sqrt(scan.frames).astype(real_dtype(complex_dtype(rec.precision)))
    executor = LocalExecutor.from_frames(
        amplitudes, problem.origins, problem.summary.good, rec.batch_size, rec.subpixel, n_chunks
    )
    return drive(executor, problem, config, progress)


def run_on_cluster(
    client: Any,
    store: Path,
    config: Config,
    progress: Callback | None = None,
    workers: list[str] | None = None,
    start: SyncPoint | None = None,
    hooks: Sequence[SyncHook] = (),
) -> Result:
    """The whole run on ``client``'s workers, frames read by the workers from ``store``."""
    info = read_store_info(store)
    info = dataclasses.replace(info, geometry=apply_geometry(info.geometry, config.data.geometry))
    lay = layout(info.positions, info.geometry, config.reconstruction, config.data)
    good = None if info.mask is None else ~info.mask
    frame_shape = info.geometry.frame_shape
    executor, stats = DaskExecutor.open(
        client,
        store,
        lay.origins,
        frame_shape,
        lay.obj_shape,
        good,
        config,
        workers,
        info.chunk_frames,
    )
    try:
        mean = stats.frame_sum / stats.n_frames
        summary = ScanSummary(info.positions, info.geometry, info.mask, info.illumination, mean)
        return drive(executor, prepare(summary, config), config, progress, start, hooks)
    finally:
        executor.close()


def reconstruct(
    config: Config | str | Path | dict[str, Any],
    client: object | None = None,
    progress: Callback | None = None,
    write: bool = True,
    overwrite: bool = False,
    workers: list[str] | None = None,
    resume: bool = False,
) -> Result:
    """Reconstruct the scan of ``config`` on a Dask cluster and write the result.

    config : a :class:`Config`, a YAML path, or the YAML's content as a dict.
    client : a ``distributed.Client`` to use (e.g. a notebook's); when None, the ``cluster``
    section says what to start or connect to. workers : restrict to these worker addresses.
    resume : continue from the checkpoint (``output.checkpoint_path``) of an earlier run.
    Checkpoints are written (every ``output.checkpoint_every`` iterations) only when ``write``.
    A run whose estimates become non-finite raises :class:`~ptychograph.driver.Diverged`;
    nothing is written then and the last checkpoint is kept.
    """
    if isinstance(config, str | Path):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    if write:
        check_output_free(config.output.path, overwrite, config.output.figure)
    out = config.output
    start = load_checkpoint(out.checkpoint_path, config) if resume else None
    writes_checkpoints = write and out.checkpoint_every > 0
    if writes_checkpoints and not resume and not overwrite and out.checkpoint_path.exists():
        raise InputError(
            "output.checkpoint",
            f"{out.checkpoint_path} exists; pass --resume to continue it or --overwrite",
        )
    hooks = _output_hooks(config) if write else []
    store = frames_store(config, overwrite)
    try:
        check_geometry(store, config)  # before any cluster starts
        with open_client(config.cluster, client) as active:
            result = run_on_cluster(active, store, config, progress, workers, start, hooks)
        if write:
            write_result(result, config.output.path, overwrite=overwrite)
            if writes_checkpoints and not out.keep_checkpoint:
                shutil.rmtree(out.checkpoint_path, ignore_errors=True)
    finally:
        if store.parent == work_dir(config):
            shutil.rmtree(work_dir(config), ignore_errors=True)
    return result


def _output_hooks(config: Config) -> list[SyncHook]:
    """Checkpoints and previews at sync points, as the ``output`` section asks."""
    out = config.output

    def checkpoint(sync: SyncPoint) -> None:
        save_checkpoint(out.checkpoint_path, sync, config)
        log.info("checkpoint at iteration %d: %s", sync.iteration, out.checkpoint_path)

    def preview(sync: SyncPoint) -> None:
        preview_figure(sync.state.probe, sync.state.obj, sync.iteration, preview_path)

    preview_path = out.path.with_name(out.path.stem + ".preview.png")
    hooks = []
    if out.checkpoint_every > 0:
        hooks.append(SyncHook(out.checkpoint_every, checkpoint, at_end=True))
    if out.preview_every > 0:
        hooks.append(SyncHook(out.preview_every, preview))
    return hooks


def check_geometry(store: Path, config: Config) -> None:
    """Refuse, before a cluster starts, an impossible object size (wrong units or geometry)
    and initial guesses that cannot be read or do not fit."""
    info = read_store_info(store)
    geometry = apply_geometry(info.geometry, config.data.geometry)
    lay = layout(info.positions, geometry, config.reconstruction, config.data)
    init = config.initial
    if init.probe == "file" and init.probe_path is not None:
        load_probe_file(init.probe_path, geometry.frame_shape)
    if init.previous is not None and init.probe == "previous":
        load_previous(init.previous, "probe", "initial.previous")
    if init.previous is not None and init.object == "previous":
        previous_object(config, lay.obj_shape)


def store_is_clean(path: Path, config: Config) -> bool:
    """Check a frames store's values chunk by chunk. True when it can be used as it is; False
    when ``data.nonfinite: drop`` / ``data.negative: clip`` must repair it (the run then
    converts it into its work folder); InputError when it holds values the config refuses."""
    validate_mask(read_store_info(path).mask)
    check = check_store_frames(path)
    data = config.data
    if check.nonfinite_frames and data.nonfinite == "error":
        first = check.nonfinite_frames[0]
        raise InputError(
            "frames",
            f"{len(check.nonfinite_frames)} frames contain NaN or Inf (first: frame {first}); "
            "set data.nonfinite: drop to drop them",
        )
    if check.negative_pixels and data.negative == "error":
        raise InputError(
            "frames",
            f"{check.negative_pixels} negative pixels in {check.negative_frames} frames; "
            "set data.negative: clip to clip them to zero",
        )
    if check.all_zero:
        raise InputError("frames", "every frame is entirely zero")
    return not (check.nonfinite_frames or check.negative_pixels)


def work_dir(config: Config) -> Path:
    """The run's work folder beside the output: result.zarr -> .result.work/."""
    out = config.output.path
    return out.parent / f".{out.stem}.work"


def frames_store(config: Config, overwrite: bool = False) -> Path:
    """The Zarr frames store of the run: the data path itself, or a conversion of it."""
    path = config.data.path
    if is_frames_store(path) and store_is_clean(path, config):
        return path
    folder = work_dir(config)
    target = folder / "frames.zarr"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        notes = convert_to_store(
            path,
            target,
            chunk_frames=config.cluster.chunk_frames,
            overwrite=True,
            nonfinite=config.data.nonfinite,
            negative=config.data.negative,
            data=config.data,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for note in notes:
        log.warning("%s", note)
    return target

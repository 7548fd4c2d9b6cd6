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
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.backend import complex_dtype, real_dtype
from ptychograph.checkpoint import load_checkpoint, save_checkpoint
from ptychograph.cluster import open_client
from ptychograph.config import Config, load_config, parse_config, resolve_paths
from ptychograph.driver import Callback, DriverSettings, SyncHook
from ptychograph.errors import InputError
from ptychograph.executors import WorkerLost
from ptychograph.executors.dask import DaskExecutor
from ptychograph.executors.local import LocalExecutor
from ptychograph.follow import follow_on_cluster
from ptychograph.io import apply_geometry, convert_to_store, load_scan
from ptychograph.io.live_mark import read_mark
from ptychograph.io.store_check import fingerprint
from ptychograph.io.validate import validate_frames
from ptychograph.io.zarr_store import is_frames_store, read_frames, read_store_info
from ptychograph.noise import SAMPLE_FRAMES, photon_unit
from ptychograph.paths import (
    Kind,
    check_disjoint,
    check_folder,
    check_replaceable,
    clean_leftovers,
    clean_work_dir,
    remove_owned,
)
from ptychograph.plotting import preview, save
from ptychograph.problem import Result, ScanSummary, layout, prepare
from ptychograph.provenance import run_info
from ptychograph.results import check_output_free, figure_path, write_result
from ptychograph.run_checks import check_geometry, store_is_clean
from ptychograph.run_lock import run_lock
from ptychograph.scan import Scan
from ptychograph.scan_watch import wait_for_store
from ptychograph.solve import drive
from ptychograph.state import SyncPoint

log = logging.getLogger("ptychograph")


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
        unit = photon_unit(read_frames(store, 0, min(info.n_frames, SAMPLE_FRAMES)))
        summary = ScanSummary(
            info.positions, info.geometry, info.mask, info.illumination, mean, unit
        )
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

    config : a :class:`Config`, a YAML path, or the YAML's content as a dict (relative paths
    of a dict or Config are taken against the current directory).
    client : a ``distributed.Client`` to use (e.g. a notebook's); when None, the ``cluster``
    section says what to start or connect to. workers : restrict to these worker addresses.
    resume : continue from the checkpoint (``output.checkpoint_path``) of an earlier run, which
    must have been made from the same input (its fingerprint is checked).
    Checkpoints are written (every ``output.checkpoint_every`` iterations) only when ``write``.
    What ``overwrite`` may replace, and which paths may not overlap, is checked up front
    (:func:`check_run_paths`). A run whose estimates become non-finite raises
    :class:`~ptychograph.driver.Diverged`; nothing is written then and the last checkpoint is
    kept. Two runs writing the same result or checkpoint at once: the second is refused.
    """
    if isinstance(config, str | Path):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    config = resolve_paths(config, Path.cwd())
    # a second run on the same outputs would take the first's half-written store for a leftover
    out = config.output
    locks = {out.path: "output.path"}  # also its work folder, .NAME.work
    if write and (out.checkpoint_every > 0 or resume):
        locks[out.checkpoint_path] = "output.checkpoint"
    with run_lock(locks):
        return _reconstruct(config, client, progress, write, overwrite, workers, resume)


def _reconstruct(
    config: Config,
    client: object | None,
    progress: Callback | None,
    write: bool,
    overwrite: bool,
    workers: list[str] | None,
    resume: bool,
) -> Result:
    out = config.output
    began = time.perf_counter()
    check_run_paths(config, overwrite, resume, write)
    store = frames_store(config, overwrite)
    try:
        geometry = check_geometry(store, config)  # before any cluster starts
        stamp, follow = fingerprint(store), config.data.follow
        # a followed store grows: its views are checked against the checkpoint's instead
        checked = None if follow else stamp
        start = load_checkpoint(out.checkpoint_path, config, checked) if resume else None
        if start is not None:
            log.info("resuming from %s at iteration %d", out.checkpoint_path, start.iteration)
        pixel = geometry.object_pixel[1]
        hooks = _output_hooks(config, stamp, pixel) if write else []
        run = follow_on_cluster if follow else run_on_cluster
        with open_client(config.cluster, client) as active:
            result = run(active, store, config, progress, workers, start, hooks)
            cluster = config.cluster
            seconds = time.perf_counter() - began
            info = run_info(active, cluster.backend, cluster.n_workers, workers, seconds)
        if write:
            with _writing(config.output.path):
                write_result(result, config.output.path, overwrite=overwrite, run=info)
            if out.checkpoint_every > 0 and not out.keep_checkpoint:
                remove_owned(out.checkpoint_path, "checkpoint")
                log.info("run complete: removed its checkpoint (output.keep_checkpoint keeps it)")
    except KeyboardInterrupt:
        if write and out.checkpoint_path.exists():  # the CLI's line says so
            raise KeyboardInterrupt(
                f"{out.checkpoint_path} is kept: continue with --resume"
            ) from None
        raise
    except WorkerLost as lost:
        raise InputError(
            "cluster",
            f"gave up after more than {DriverSettings.max_recoveries} lost workers (last: "
            f"{lost}); the last checkpoint is kept, continue with --resume",
        ) from None
    finally:
        if store.parent == work_dir(config):
            shutil.rmtree(work_dir(config), ignore_errors=True)
    return result


def check_run_paths(config: Config, overwrite: bool, resume: bool, write: bool = True) -> None:
    """The data-loss rule for a run (:mod:`ptychograph.paths`): no output overlaps an input or
    another output; ``overwrite`` replaces only a result, checkpoint or figure ptychograph
    wrote; a checkpoint is continued only with ``resume``. Then the leftovers of a killed run
    of the same outputs are removed."""
    out, init = config.output, config.initial
    inputs = {
        "data.path": config.data.path,
        "initial.probe_path": init.probe_path if init.probe == "file" else None,
        "initial.previous": init.previous,
    }
    if not write:  # only the work folder (for a conversion) is written
        check_disjoint(inputs, {"output.path (work folder)": work_dir(config)})
        clean_work_dir(work_dir(config))
        if resume and not out.checkpoint_path.exists():
            raise InputError("--resume", f"no checkpoint at {out.checkpoint_path}")
        return
    checkpoints = out.checkpoint_every > 0 or resume
    outputs: dict[str, Path | None] = {
        "output.path": out.path,
        "output.path (figure)": figure_path(out.path) if out.figure else None,
        "output.checkpoint": out.checkpoint_path if checkpoints else None,
        "output.preview_every": preview_path(config) if out.preview_every > 0 else None,
        "output.path (work folder)": work_dir(config),
    }
    check_disjoint(inputs, outputs)
    check_output_free(out.path, overwrite, out.figure)
    ckpt = out.checkpoint_path
    if out.preview_every > 0:  # replaced at every preview: only a figure of ours
        check_replaceable(preview_path(config), "figure", True, "output.preview_every")
    kinds: dict[Path, Kind] = {out.path: "result", ckpt: "checkpoint"}
    kinds |= {figure_path(out.path): "figure", preview_path(config): "figure"}
    clean_work_dir(work_dir(config))
    for path in clean_leftovers(kinds, kinds):  # before --resume looks for the checkpoint
        log.info("removed %s, left by an interrupted run", path)
    if checkpoints:
        check_folder(ckpt, "output.checkpoint")
        if resume and not ckpt.exists():
            raise InputError("--resume", f"no checkpoint at {ckpt}")
        if ckpt.exists() and not (resume or overwrite):
            raise InputError(
                "output.checkpoint",
                f"{ckpt} exists; pass --resume to continue it or --overwrite "
                "(resume=True / overwrite=True in Python)",
            )
        check_replaceable(ckpt, "checkpoint", True, "output.checkpoint")


@contextmanager
def _writing(path: Path, field: str = "output.path") -> Iterator[None]:
    """An OS error while writing (disk full, read-only, permissions) -> one InputError line
    naming ``field``."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(field, f"could not write {path} ({reason})") from None


def preview_path(config: Config) -> Path:
    """The preview PNG beside the result: result.zarr -> result.preview.png."""
    out = config.output.path
    return out.with_name(out.stem + ".preview.png")


def _output_hooks(config: Config, stamp: dict[str, Any], pixel: float) -> list[SyncHook]:
    """Checkpoints (recording the input's fingerprint ``stamp``) and previews (with a scale bar
    for object pixels of ``pixel`` m) at sync points, as the ``output`` section asks."""
    out = config.output

    def checkpoint(sync: SyncPoint) -> None:
        with _writing(out.checkpoint_path, "output.checkpoint"):
            save_checkpoint(out.checkpoint_path, sync, config, stamp)
        log.info("checkpoint at iteration %d: %s", sync.iteration, out.checkpoint_path)

    def draw(sync: SyncPoint) -> None:
        with _writing(preview_path(config), "output.preview_every"):
            state = sync.state
            figure = preview(state.probe, state.obj, sync.iteration, state.origins, pixel)
            if config.data.follow and state.origins is not None:  # frames seen / expected
                mark = read_mark(config.data.path)
                expected = "?" if mark is None else mark.expected_frames or "?"
                figure.suptitle(f"live: {len(state.origins)} of {expected} frames")
            save(figure, preview_path(config))

    hooks = []
    if out.checkpoint_every > 0:
        hooks.append(SyncHook(out.checkpoint_every, checkpoint, at_end=True))
    if out.preview_every > 0:
        hooks.append(SyncHook(out.preview_every, draw))
    return hooks


def work_dir(config: Config) -> Path:
    """The run's work folder beside the output: result.zarr -> .result.work/."""
    out = config.output.path
    return out.parent / f".{out.stem}.work"


def frames_store(config: Config, overwrite: bool = False) -> Path:
    """The Zarr frames store of the run: the data path itself, or a conversion of it."""
    path = config.data.path
    if config.data.follow:  # read as it is, while it grows; workers check each frame they load
        store_is_clean(wait_for_store(config), config)  # negatives left: workers clip them
        return path
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

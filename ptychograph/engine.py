"""A reconstruction from a validated config: load, prepare, iterate, write.

:func:`reconstruct` is the one execution path of ``ptychograph run`` and of the Python API: the
frames go to a chunked Zarr store, Dask workers read their own chunks and keep their exit waves
(:mod:`ptychograph.distributed`). :func:`reconstruct_in_process` runs the same iteration in this
process; it is the reference the distributed path is tested against.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.backend import complex_dtype, real_dtype
from ptychograph.config import Config, load_config, parse_config
from ptychograph.errors import InputError
from ptychograph.geometry import object_shape, view_origins
from ptychograph.initial import (
    add_modes,
    flat_object,
    load_previous,
    load_probe_file,
    probe_from_mean,
    random_object,
    scale_power,
)
from ptychograph.scan import Geometry, Scan
from ptychograph.solver import Callback, LocalExecutor, Settings, run_dm
from ptychograph.state import History, State
from ptychograph.views import make_chunk

log = logging.getLogger("ptychograph")


@dataclass(frozen=True)
class ScanSummary:
    """What preparing a run needs to know about a scan, without its frames.

    positions : (N, 2) (y, x) metres. mask : (H, W) bool or None. illumination : (M, H, W) or
    None. mean_frame : (H, W) float64, the mean diffraction pattern.
    """

    positions: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None
    illumination: np.ndarray | None
    mean_frame: np.ndarray

    @classmethod
    def of(cls, scan: Scan) -> ScanSummary:
        mean = scan.frames.mean(axis=0, dtype=np.float64)
        return cls(scan.positions, scan.geometry, scan.mask, scan.illumination, mean)


@dataclass(frozen=True)
class Problem:
    """The geometry and starting point of a run.

    summary : the scan without frames. origins : (N, 2) float view corners in object pixels.
    state : initial probe (M_P, H, W) and object (M_O, Y, X) of the working precision.
    """

    summary: ScanSummary
    origins: np.ndarray
    state: State

    @property
    def good(self) -> np.ndarray | None:
        """(H, W) bool, False at bad detector pixels, or None."""
        return None if self.summary.mask is None else ~self.summary.mask


@dataclass(frozen=True)
class Result:
    """A finished reconstruction: final state, history and the problem it solved."""

    state: State
    history: History
    problem: Problem
    config: Config


def settings_from(config: Config) -> Settings:
    """Loop settings from the reconstruction section."""
    rec = config.reconstruction
    return Settings(
        iterations=rec.iterations,
        beta=rec.beta,
        overlap_passes=rec.overlap_passes,
        probe_update_start=rec.probe_update_start,
        regularisation=rec.regularisation,
        orthogonalise_probe=rec.orthogonalise_probe,
        noise_bound=rec.noise_bound,
        average_last=rec.average_last,
    )


def scan_origins(positions: np.ndarray, geometry: Geometry, config: Config) -> np.ndarray:
    """(N, 2) view origins in object pixels per the data orientation options."""
    rec = config.reconstruction
    origins = view_origins(
        positions,
        geometry.object_pixel,
        rec.object_margin,
        config.data.swap_xy,
        config.data.flip_x,
        config.data.flip_y,
    )
    return np.round(origins) if rec.subpixel == "off" else origins


def prepare(summary: ScanSummary | Scan, config: Config) -> Problem:
    """Origins and initial estimates (DESIGN.md step 7) for a validated scan."""
    if isinstance(summary, Scan):
        summary = ScanSummary.of(summary)
    rec = config.reconstruction
    cdtype = complex_dtype(rec.precision)
    origins = scan_origins(summary.positions, summary.geometry, config)
    shape = object_shape(origins, summary.geometry.frame_shape, rec.object_margin)
    rng = np.random.default_rng(rec.seed)
    probe = initial_probe(summary, config, rng)
    obj = initial_object(shape, config, rng)
    state = State(probe.astype(cdtype), obj.astype(cdtype), 0)
    return Problem(summary, origins, state)


def initial_probe(
    summary: ScanSummary | Scan, config: Config, rng: np.random.Generator
) -> np.ndarray:
    """(M_P, H, W) complex128 initial probe per ``config.initial``."""
    if isinstance(summary, Scan):
        summary = ScanSummary.of(summary)
    init = config.initial
    frame_shape = summary.geometry.frame_shape
    choice: str = init.probe
    if choice == "auto":
        choice = "illumination" if summary.illumination is not None else "data"
    if choice == "illumination":
        assert summary.illumination is not None
        probe = summary.illumination.astype(np.complex128)
    elif choice == "data":
        probe = probe_from_mean(summary.mean_frame, summary.mask)[None]
    elif choice == "file":
        assert init.probe_path is not None
        probe = load_probe_file(init.probe_path, frame_shape)
    else:
        assert init.previous is not None
        probe = load_previous(init.previous, "probe", "initial.previous")
    if probe.shape[1:] != frame_shape:
        raise InputError("initial.probe", f"probe {probe.shape[1:]} != frames {frame_shape}")
    if choice != "previous":
        probe = scale_power(probe, float(summary.mean_frame.sum()))
    return add_modes(probe, config.reconstruction.start_probe_modes, init.extra_mode_power, rng)


def initial_object(shape: tuple[int, int], config: Config, rng: np.random.Generator) -> np.ndarray:
    """(M_O, Y, X) complex128 initial object per ``config.initial``."""
    n_modes = config.reconstruction.object_modes
    if config.initial.object == "flat":
        return flat_object(shape, n_modes, rng)
    if config.initial.object == "random":
        return random_object(shape, n_modes, rng)
    assert config.initial.previous is not None
    obj = load_previous(config.initial.previous, "object", "initial.previous")
    if obj.shape[1:] != shape:
        raise InputError(
            "initial.previous", f"object {obj.shape[1:]} does not fit this scan's {shape}"
        )
    if obj.shape[0] < n_modes:
        extra = flat_object(shape, n_modes, rng)[obj.shape[0] :]
        obj = np.concatenate([obj, extra])
    return obj[:n_modes]


def run_local(
    scan: Scan,
    problem: Problem,
    config: Config,
    callback: Callback | None = None,
    n_chunks: int = 1,
) -> tuple[State, History]:
    """Run DM in this process with the views split into ``n_chunks`` chunks."""
    rec = config.reconstruction
    amplitudes = np.sqrt(scan.frames).astype(real_dtype(complex_dtype(rec.precision)))
    bounds = np.linspace(0, amplitudes.shape[0], n_chunks + 1).astype(int)
    chunks = [
        make_chunk(
            amplitudes[a:b],
            problem.good,
            problem.origins[a:b],
            problem.state.probe,
            problem.state.obj,
            rec.batch_size,
            rec.subpixel,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    executor = LocalExecutor(chunks, rec.batch_size)
    return run_dm(executor, problem.state, settings_from(config), callback=callback)


def load_validated(config: Config) -> tuple[Scan, list[str]]:
    """Read and validate the scan named in the config; notes say what was fixed."""
    from ptychograph.io import load_scan
    from ptychograph.io.validate import validate_frames

    scan = load_scan(config.data.path, config.data)
    return validate_frames(scan, config.data.nonfinite, config.data.negative)


def reconstruct_in_process(
    config: Config, progress: Callback | None = None, n_chunks: int = 1
) -> Result:
    """The single-process reference: same iteration, no cluster, nothing written."""
    scan, notes = load_validated(config)
    for note in notes:
        log.warning("%s", note)
    problem = prepare(scan, config)
    state, history = run_local(scan, problem, config, progress, n_chunks)
    return Result(state, history, problem, config)


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
    """
    if isinstance(config, str | Path):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    from ptychograph.checkpoint import load_checkpoint, save_checkpoint
    from ptychograph.cluster import open_client
    from ptychograph.distributed_run import SyncPoint
    from ptychograph.results import check_output_free, write_result
    from ptychograph.run_loop import SyncHook, run_distributed

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

    def checkpoint(sync: SyncPoint) -> None:
        save_checkpoint(out.checkpoint_path, sync, config)
        log.info("checkpoint at iteration %d: %s", sync.iteration, out.checkpoint_path)

    def preview(sync: SyncPoint) -> None:
        from ptychograph.plotting import preview_figure

        preview_figure(sync.estimates.probe, sync.estimates.obj, sync.iteration, preview_path)

    preview_path = out.path.with_name(out.path.stem + ".preview.png")
    hooks = []
    if writes_checkpoints:
        hooks.append(SyncHook(out.checkpoint_every, checkpoint, at_end=True))
    if write and out.preview_every > 0:
        hooks.append(SyncHook(out.preview_every, preview))
    store = frames_store(config, overwrite)
    try:
        check_geometry(store, config)  # before any cluster starts
        with open_client(config.cluster, client) as active:
            state, history, problem = run_distributed(
                active, store, config, progress, workers, start, hooks
            )
        result = Result(state, history, problem, config)
        if write:
            write_result(result, config.output.path, overwrite=overwrite)
            if writes_checkpoints and not out.keep_checkpoint:
                shutil.rmtree(out.checkpoint_path, ignore_errors=True)
    finally:
        if store.parent == work_dir(config):
            shutil.rmtree(work_dir(config), ignore_errors=True)
    return result


def check_geometry(store: Path, config: Config) -> None:
    """Refuse, before a cluster starts, an impossible object size (wrong units or geometry)
    and initial guesses that cannot be read or do not fit."""
    from ptychograph.io import apply_geometry
    from ptychograph.io.zarr_store import read_store_info

    info = read_store_info(store)
    geometry = apply_geometry(info.geometry, config.data.geometry)
    origins = scan_origins(info.positions, geometry, config)
    shape = object_shape(origins, geometry.frame_shape, config.reconstruction.object_margin)
    init = config.initial
    if init.probe == "file" and init.probe_path is not None:
        load_probe_file(init.probe_path, geometry.frame_shape)
    if init.previous is not None and "previous" in (init.probe, init.object):
        previous = load_previous(init.previous, "object", "initial.previous")
        if init.object == "previous" and previous.shape[1:] != shape:
            raise InputError(
                "initial.previous", f"object {previous.shape[1:]} does not fit this scan's {shape}"
            )


def store_is_clean(path: Path, config: Config) -> bool:
    """Check a frames store's values chunk by chunk. True when it can be used as it is; False
    when ``data.nonfinite: drop`` / ``data.negative: clip`` must repair it (the run then
    converts it into its work folder); InputError when it holds values the config refuses."""
    from ptychograph.io.zarr_store import check_store_frames

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
    from ptychograph.io.zarr_store import convert_to_store, is_frames_store

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

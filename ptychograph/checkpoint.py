"""Checkpoints: the state of a run at a sync point, written atomically, and resuming from it.

A checkpoint holds the probe and object after ``iteration`` completed iterations, the running
sums of the averaging window, the history so far, the seed and the random generator's state
after the initial guesses (nothing random is drawn after them), and the resolved config. It is
written beside the result (``result.checkpoint.zarr``) to a temporary store that is renamed into
place, so a crash never leaves a half-written checkpoint. ``ptychograph run CONFIG --resume``
continues from it, also to extend a finished run with more iterations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ptychograph.backend import to_host
from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.results import write_dataset_atomic
from ptychograph.state import History, State, SyncPoint, window_start
from ptychograph.version import __version__

#: Keys of the reconstruction section that may change on resume.
RESUMABLE_CHANGES = {"iterations"}


def save_checkpoint(path: Path, sync: SyncPoint, config: Config) -> None:
    """Write ``sync`` atomically to ``path``."""
    data: dict[str, Any] = {
        "probe": (("probe_mode", "py", "px"), to_host(sync.state.probe)),
        "object": (("obj_mode", "y", "x"), to_host(sync.state.obj)),
        "fourier_error": (("iteration",), np.asarray(sync.history.fourier_error)),
        "probe_change": (("iteration",), np.asarray(sync.history.probe_change)),
        "object_change": (("iteration",), np.asarray(sync.history.object_change)),
        "iteration_seconds": (("iteration",), np.asarray(sync.history.seconds)),
    }
    if sync.average is not None:
        data["average_probe"] = (("probe_mode", "py", "px"), to_host(sync.average.probe))
        data["average_object"] = (("obj_mode", "y", "x"), to_host(sync.average.obj))
    if sync.state.origins is not None:
        data["view_origin"] = (("frame", "axis"), np.asarray(sync.state.origins))
    ds = xr.Dataset(data)
    rng = np.random.default_rng(config.reconstruction.seed)
    ds.attrs.update(
        {
            "iteration": int(sync.iteration),
            "average_count": int(sync.average_count),
            "config": json.loads(config.model_dump_json()),
            "seed": config.reconstruction.seed,
            "rng_state": json.loads(json.dumps(rng.bit_generator.state, default=int)),
            "ptychograph_version": __version__,
        }
    )
    write_dataset_atomic(ds, path)


def load_checkpoint(path: Path, config: Config) -> SyncPoint:
    """Read a checkpoint and check it belongs to this run's config."""
    if not path.exists():
        raise InputError("--resume", f"no checkpoint at {path}")
    try:
        with xr.open_zarr(path, consolidated=False) as ds:
            ds = ds.load()
    except (OSError, ValueError, KeyError) as err:
        raise InputError("--resume", f"{path} is not a readable checkpoint ({err})") from None
    _check_compatible(ds.attrs.get("config", {}), config, path)
    history = History(
        [float(v) for v in ds["fourier_error"].values],
        [float(v) for v in ds["probe_change"].values],
        [float(v) for v in ds["object_change"].values],
        [float(v) for v in ds["iteration_seconds"].values],
    )
    rec = config.reconstruction
    origins = ds["view_origin"].values if "view_origin" in ds else None
    average, count = None, int(ds.attrs.get("average_count", 0))
    iteration = int(ds.attrs["iteration"])
    saved_iterations = int(ds.attrs["config"]["reconstruction"]["iterations"])
    saved_window = window_start(saved_iterations, rec.average_last)
    if "average_probe" in ds and saved_window == window_start(rec.iterations, rec.average_last):
        average = State(ds["average_probe"].values, ds["average_object"].values, iteration)
    else:
        count = 0  # a changed run length moves the averaging window: start it afresh
    if iteration > config.reconstruction.iterations:
        raise InputError(
            "reconstruction.iterations",
            f"the checkpoint is at iteration {iteration}; ask for at least that many",
        )
    state = State(ds["probe"].values, ds["object"].values, iteration, origins)
    return SyncPoint(state, average, count, history)


def _check_compatible(saved: dict[str, Any], config: Config, path: Path) -> None:
    now = json.loads(config.model_dump_json())
    for section in ("data", "reconstruction", "initial"):
        for key, value in now.get(section, {}).items():
            if section == "reconstruction" and key in RESUMABLE_CHANGES:
                continue
            if saved.get(section, {}).get(key) != value:
                raise InputError(
                    f"{section}.{key}",
                    f"differs from the checkpoint {path.name} "
                    f"({saved.get(section, {}).get(key)!r} there, {value!r} now)",
                )

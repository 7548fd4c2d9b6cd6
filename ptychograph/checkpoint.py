"""Checkpoints: the state of a run at a sync point, written atomically, and resuming from it.

A checkpoint holds the probe and object after ``iteration`` completed iterations, the running
sums of the averaging window, the history so far, the seed and the random generator's state
after the initial guesses (nothing random is drawn after them), and the resolved config. It is
written beside the result (``result.checkpoint.zarr``) to a temporary store that is renamed into
place, so a crash never leaves a half-written checkpoint. ``ptychograph run CONFIG --resume``
continues from it, also to extend a finished run with more iterations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic_core import to_jsonable_python

from ptychograph.backend import to_host
from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.results import write_dataset_atomic
from ptychograph.state import History, State, SyncPoint, window_start
from ptychograph.version import __version__

#: Keys of the reconstruction section that may change on resume.
RESUMABLE_CHANGES = {"iterations", "ml_iterations"}


@dataclasses.dataclass(frozen=True)
class FinalSyncPoint(SyncPoint):
    """A sync point of a followed run's final iterations, which began at iteration
    ``final_start`` (the checkpoint records it, so a resume does not run them again)."""

    final_start: int = 0

    @classmethod
    def of(cls, sync: SyncPoint, final_start: int) -> FinalSyncPoint:
        fields = {f.name: getattr(sync, f.name) for f in dataclasses.fields(SyncPoint)}
        return cls(**fields, final_start=final_start)


def save_checkpoint(
    path: Path, sync: SyncPoint, config: Config, fingerprint: dict[str, Any] | None = None
) -> None:
    """Write ``sync`` atomically to ``path``, with the ``fingerprint`` of the input store
    (:func:`ptychograph.io.store_check.fingerprint`) that ``--resume`` checks."""
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
    if isinstance(sync, FinalSyncPoint):
        ds.attrs["final_start"] = int(sync.final_start)
    rng = np.random.default_rng(config.reconstruction.seed)
    ds.attrs.update(
        {
            "iteration": int(sync.iteration),
            "average_count": int(sync.average_count),
            "config": json.loads(config.model_dump_json()),
            "seed": config.reconstruction.seed,
            "rng_state": json.loads(json.dumps(rng.bit_generator.state, default=int)),
            "ptychograph_version": __version__,
            "input_fingerprint": fingerprint or {},
        }
    )
    write_dataset_atomic(ds, path)


def load_checkpoint(
    path: Path, config: Config, fingerprint: dict[str, Any] | None = None
) -> SyncPoint:
    """Read a checkpoint and check it belongs to this run: its config, and (when given) the
    ``fingerprint`` of this run's input. Any damage is one InputError line."""
    if not path.exists():
        raise InputError("--resume", f"no checkpoint at {path}")
    try:
        with xr.open_zarr(path, consolidated=False) as ds:
            ds = ds.load()
        _check_compatible(ds.attrs.get("config", {}), config, path)
        if fingerprint is not None:
            _check_input(ds.attrs.get("input_fingerprint"), fingerprint, path)
        return _sync_point(ds, config)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        reason = f"{type(err).__name__}: {str(err)[:100]}"
        raise InputError("--resume", f"{path} is not a readable checkpoint ({reason})") from None


def _sync_point(ds: xr.Dataset, config: Config) -> SyncPoint:
    """The sync point a loaded checkpoint holds, checked against this run's settings."""
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
    if len(history) != iteration:
        raise ValueError(f"history of {len(history)} iterations at iteration {iteration}")
    saved_iterations = int(ds.attrs["config"]["reconstruction"]["iterations"])
    saved_window = window_start(saved_iterations, rec.average_last)
    if "average_probe" in ds and saved_window == window_start(rec.iterations, rec.average_last):
        average = State(ds["average_probe"].values, ds["average_object"].values, iteration)
    else:
        count = 0  # a changed run length moves the averaging window: start it afresh
    if iteration > config.reconstruction.total_iterations and not config.data.follow:
        raise InputError(
            "reconstruction.iterations",
            f"the checkpoint is at iteration {iteration}; ask for at least that many "
            "(iterations + ml_iterations)",
        )
    state = State(ds["probe"].values, ds["object"].values, iteration, origins)
    if "final_start" in ds.attrs:
        return FinalSyncPoint(state, average, count, history, int(ds.attrs["final_start"]))
    return SyncPoint(state, average, count, history)


def _check_input(saved: Any, now: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint made from other frames (a changed or replaced input file)."""
    if not saved:
        raise InputError("--resume", f"{path.name} records no input fingerprint; start afresh")
    differ = [key for key, value in now.items() if saved.get(key) != value]
    if differ:
        raise InputError(
            "--resume",
            f"{path.name} was made from other input data ({', '.join(differ)} differ); "
            "run without --resume, with --overwrite, to start afresh",
        )


def _check_compatible(saved: dict[str, Any], config: Config, path: Path) -> None:
    if not isinstance(saved, dict) or not saved:
        raise InputError("--resume", f"{path} holds no config; not a checkpoint")
    now = json.loads(config.model_dump_json())
    for section in ("data", "reconstruction", "initial"):
        before = saved.get(section)
        before = before if isinstance(before, dict) else {}
        for key, value in now.get(section, {}).items():
            if section == "reconstruction" and key in RESUMABLE_CHANGES:
                continue
            if key not in before and value == _default(config, section, key):
                continue  # a key added since the checkpoint was written, at its default
            if before.get(key) != value:
                raise InputError(
                    f"{section}.{key}",
                    f"differs from the checkpoint {path.name} "
                    f"({before.get(key)!r} there, {value!r} now)",
                )


def _default(config: Config, section: str, key: str) -> Any:
    """The default of ``section.key`` as the config's JSON holds it (None when it has none)."""
    field = type(getattr(config, section)).model_fields.get(key)
    if field is None or field.is_required():
        return None
    return to_jsonable_python(field.get_default(call_default_factory=True))

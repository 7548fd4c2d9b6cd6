"""Checks of a run's input made before any cluster starts: the geometry and initial guesses
can be used, the scan's extent is physically plausible, a frames store's values are ones the
config accepts (docs/reliability.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.initial import load_previous, load_probe_file
from ptychograph.io import apply_geometry
from ptychograph.io.store_check import check_store_frames
from ptychograph.io.validate import validate_mask
from ptychograph.io.zarr_store import read_store_info
from ptychograph.problem import layout, previous_object
from ptychograph.scan import HC_EV_M, Geometry

log = logging.getLogger("ptychograph")


def check_geometry(store: Path, config: Config) -> Geometry:
    """Refuse, before a cluster starts, an impossible object size (wrong units or geometry)
    and initial guesses that cannot be read or do not fit; returns the run's geometry."""
    info = read_store_info(store)
    geometry = apply_geometry(info.geometry, config.data.geometry)
    lay = layout(info.positions, geometry, config.reconstruction, config.data)
    check_plausible(geometry, info.positions, lay.origins)
    init = config.initial
    if init.probe == "file" and init.probe_path is not None:
        load_probe_file(init.probe_path, geometry.frame_shape)
    if init.previous is not None and init.probe == "previous":
        load_previous(init.previous, "probe", "initial.previous")
    if init.previous is not None and init.object == "previous":
        previous_object(config, lay.obj_shape)
    return geometry


def check_plausible(geometry: Geometry, positions: np.ndarray, origins: np.ndarray) -> None:
    """Refuse a scan whose views all fall within one object pixel (positions or geometry in
    the wrong units: nothing can be reconstructed); warn about an energy or distance far
    outside any beamline's. positions : (N, 2) metres; origins : (N, 2) object pixels."""
    energy = HC_EV_M / geometry.wavelength
    notes = []
    if not 10.0 <= energy <= 1e6:
        notes.append(f"photon energy {energy:.3g} eV is far from X-rays")
    if not 1e-3 <= geometry.distance <= 1e3:
        notes.append(f"distance {geometry.distance:.3g} m is far from a detector's")
    if len(origins) > 1 and float(np.ptp(origins, axis=0).max()) < 1.0:
        span = float(np.ptp(positions, axis=0).max())
        also = "".join(f"; {note}" for note in notes)
        raise InputError(  # one line, the geometry's oddities in it
            "positions",
            f"all {len(origins)} views fall within one object pixel (positions span {span:.3g} "
            f"m, object pixel {max(geometry.object_pixel):.3g} m{also}); check the units of "
            "the positions, energy and distance",
        )
    for note in notes:
        log.warning("data.geometry: %s; units?", note)


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

"""Read scans saved with NumPy: a ``.npz`` archive of named arrays plus geometry from the YAML.

The archive holds

* frames (N, H, W) real (float or integer) intensities under ``frames`` (or ``data`` /
  ``diffraction``), **already centred**: zero frequency at the frame centre, as a detector
  records them (no fft-shift, rotation or transposition is applied);
* positions (N, 2) (y, x) under ``positions`` (or ``scan`` / ``points``), in metres or, with
  ``data.positions_unit: px``, in object pixels;
* optionally ``mask`` (H, W), non-zero at bad pixels, and ``probe`` (H, W) or (M, H, W)
  complex, the initial illumination.

NumPy files carry no geometry, so ``data.geometry`` must give ``energy_ev``, ``distance_m``
and ``detector_pixel_m``. Arrays are loaded with ``allow_pickle=False``: object arrays are
refused rather than unpickled. A ``.npy`` file holds one array -- frames without positions --
and is refused with a hint to save an ``.npz``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from ptychograph.config import GeometryConfig
from ptychograph.errors import InputError
from ptychograph.scan import HC_EV_M, Geometry, Scan

FRAME_KEYS = ("frames", "data", "diffraction")
POSITION_KEYS = ("positions", "scan", "points")
MASK_KEY = "mask"
PROBE_KEY = "probe"
GEOMETRY_KEYS = ("energy_ev", "distance_m", "detector_pixel_m")
#: numpy dtype kinds accepted for frames/positions/mask, and for the probe.
REAL_KINDS = "biuf"
NUMERIC_KINDS = "biufc"
SAVE_HINT = "save frames and positions together: np.savez(path, frames=..., positions=...)"


def read_numpy(
    path: str | os.PathLike[str],
    geometry: GeometryConfig | None,
    positions_unit: Literal["m", "px"] = "m",
) -> Scan:
    """Read a ``.npz`` scan (see the module docstring) into a :class:`Scan`.

    geometry : ``data.geometry``; all three values are required. positions_unit : "m", or
    "px" for (y, x) object pixels, converted with the object pixel size of the geometry (so
    view origins reproduce them after the minimum is moved to the margin).
    Returns frames (N, H, W) float32, positions (N, 2) float64 (y, x) metres, mask (H, W) bool
    or None, illumination (M, H, W) complex64 or None.
    """
    file = Path(path)
    if file.suffix.lower() == ".npy":
        raise InputError(
            "data.path",
            f"{file} is a .npy file: one array (frames) but no positions; {SAVE_HINT}",
        )
    if positions_unit not in ("m", "px"):
        raise InputError("data.positions_unit", f"must be 'm' or 'px', got {positions_unit!r}")
    energy_ev, distance, pixel = _required_geometry(geometry or GeometryConfig())
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError("data.path", f"{file} is not a readable .npz archive ({reason})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError("data.path", f"{file} holds a single array, not an .npz; {SAVE_HINT}")
    with archive:
        frames = _frames(archive, file)
        frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        result = Geometry(
            wavelength=HC_EV_M / energy_ev,
            distance=distance,
            detector_pixel=(pixel, pixel),
            frame_shape=frame_shape,
        )
        positions = _positions(archive, file, frames.shape[0])
        if positions_unit == "px":
            positions = positions * np.asarray(result.object_pixel)
        return Scan(
            frames=frames,
            positions=positions,
            geometry=result,
            mask=_mask(archive, file, frame_shape),
            illumination=_probe(archive, file, frame_shape),
        )


def _required_geometry(config: GeometryConfig) -> tuple[float, float, float]:
    """(energy eV, distance m, detector pixel m); InputError naming the first one missing."""
    values = [getattr(config, key) for key in GEOMETRY_KEYS]
    for key, value in zip(GEOMETRY_KEYS, values, strict=True):
        if value is None:
            problem = "required for NumPy inputs, which carry no geometry"
            raise InputError(f"data.geometry.{key}", problem)
    energy_ev, distance, pixel = (float(value) for value in values)
    return energy_ev, distance, pixel


def _field(file: Path, key: str) -> str:
    """How errors name an array: ``scan.npz['positions']``."""
    return f"{file.name}[{key!r}]"


def _load(archive: np.lib.npyio.NpzFile, file: Path, key: str) -> np.ndarray:
    """One array of the archive; pickled (object) arrays and unreadable members refused."""
    try:
        return np.asarray(archive[key])
    except ValueError as exc:
        problem = "is an object array (pickled); only numeric arrays are read"
        if "pickle" not in str(exc):
            problem = f"could not be read ({' '.join(str(exc).split())})"
        raise InputError(_field(file, key), problem) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(_field(file, key), f"could not be read ({reason})") from exc


def _first(archive: np.lib.npyio.NpzFile, file: Path, keys: tuple[str, ...], what: str) -> str:
    """The first of ``keys`` in the archive; InputError listing what it holds otherwise."""
    for key in keys:
        if key in archive.files:
            return key
    held = ", ".join(repr(name) for name in archive.files) or "nothing"
    expected = ", ".join(repr(key) for key in keys)
    raise InputError("data.path", f"{file} has no {what} array (one of {expected}; holds {held})")


def _check_kind(array: np.ndarray, field: str, kinds: str) -> None:
    if array.dtype.kind not in kinds:
        expected = "real numbers" if kinds == REAL_KINDS else "numbers"
        raise InputError(field, f"has dtype {array.dtype}, expected {expected}")


def _frames(archive: np.lib.npyio.NpzFile, file: Path) -> np.ndarray:
    """Frames (N, H, W) real -> float32, with N, H, W >= 1."""
    key = _first(archive, file, FRAME_KEYS, "frames")
    field = _field(file, key)
    array = _load(archive, file, key)
    _check_kind(array, field, REAL_KINDS)
    if array.ndim != 3:
        raise InputError(field, f"has shape {array.shape}, expected (N, H, W)")
    if array.shape[0] == 0:
        raise InputError(field, "contains zero frames")
    if 0 in array.shape:
        raise InputError(field, f"has empty frames: shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _positions(archive: np.lib.npyio.NpzFile, file: Path, n_frames: int) -> np.ndarray:
    """Positions (N, 2) (y, x) -> float64, finite, one per frame."""
    key = _first(archive, file, POSITION_KEYS, "positions")
    field = _field(file, key)
    array = _load(archive, file, key)
    _check_kind(array, field, REAL_KINDS)
    if array.ndim != 2 or array.shape[1] != 2:
        hint = "; transpose it" if array.shape == (2, n_frames) else ""
        raise InputError(field, f"has shape {array.shape}, expected (N, 2) (y, x){hint}")
    if array.shape[0] != n_frames:
        raise InputError(field, f"has {array.shape[0]} positions but there are {n_frames} frames")
    positions = np.asarray(array, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise InputError(
            field, f"has {bad.size} position(s) with NaN or Inf (first: position {bad[0]})"
        )
    return positions + 0.0


def _mask(
    archive: np.lib.npyio.NpzFile, file: Path, frame_shape: tuple[int, int]
) -> np.ndarray | None:
    """Optional mask (H, W), non-zero = bad -> bool."""
    if MASK_KEY not in archive.files:
        return None
    field = _field(file, MASK_KEY)
    array = _load(archive, file, MASK_KEY)
    _check_kind(array, field, REAL_KINDS)
    if array.shape != frame_shape:
        raise InputError(field, f"has shape {array.shape} but the frames are {frame_shape}")
    return array != 0


def _probe(
    archive: np.lib.npyio.NpzFile, file: Path, frame_shape: tuple[int, int]
) -> np.ndarray | None:
    """Optional probe (H, W) or (M, H, W) -> (M, H, W) complex64, finite."""
    if PROBE_KEY not in archive.files:
        return None
    field = _field(file, PROBE_KEY)
    array = _load(archive, file, PROBE_KEY)
    _check_kind(array, field, NUMERIC_KINDS)
    if array.ndim not in (2, 3) or array.shape[-2:] != frame_shape or array.size == 0:
        raise InputError(
            field, f"has shape {array.shape}, expected (H, W) or (M, H, W) with {frame_shape}"
        )
    probe = array.astype(np.complex64).reshape((-1, *frame_shape))
    if not np.isfinite(probe).all():
        raise InputError(field, "contains NaN or Inf")
    return probe

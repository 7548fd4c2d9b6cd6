"""Read the reconstruction input HDF5 of NSLS-II HXN's ptychography tools (``scan_<id>.h5``).

What the file holds, as HXN's ``save_data`` writes it (ptycho_gui, ``HXN_databroker.py``):

========================  =====================================================================
``diffamp`` (N, A, B)     sqrt of the counts (after a threshold), each frame rotated and
                          fft-shifted (below); A pairs with x, B with y
``points`` (2, N)         row 0 = x, row 1 = y: the scan motor positions in **micrometres**
``lambda_nm``             wavelength, nm
``z_m``                   sample-detector distance, m
``ccd_pixel_um``          detector pixel size, um (square pixels)
``x_pixel_m``             optional: HXN's object pixel size lambda z / (A pixel), m
``y_pixel_m``             optional: likewise lambda z / (B pixel), m
========================  =====================================================================

Orientation assumed (and pinned by ``tests/test_inputs_hxn_npz.py``). HXN's tools crop each
detector image D (rows, columns as read out) around the beam and store
``fftshift(rot90(D, axes=(1, 0)))``, i.e. ``fftshift(flipud(D).T)``: a clockwise quarter turn,
then zero frequency moved to the corner for their plain ``fft2``. Their engine indexes every
array as [x, y] -- frame axis 1 and object axis 0 go with ``points[0]`` (their pixel sizes
agree: ``x_pixel_m`` uses the size of axis 1). This reader therefore returns, per frame,

    frame = fftshift(diffamp ** 2).T        (frame[r, c] = D[H - 1 - r, c], zero frequency at
                                             the centre, rows = y, columns = x)
    positions (y, x) = (points[1], points[0]) * 1e-6 m

which is exactly HXN's problem written in this package's (row = y, column = x) layout: the
object comes out as HXN's reconstruction transposed. The detector's row flip is kept on
purpose -- the positions pair with the stored orientation, so undoing the rotation without
mirroring the positions would contradict them. Positions are taken as micrometres because
HXN's scan motors (``zpssx``, ``dssx``, ...) are in micrometres and their code converts with
``points * 1e-6``; values that only make sense as metres are reported. Where a beamline's
stages are mounted otherwise, ``data.swap_xy``, ``data.flip_x`` and ``data.flip_y`` fix the
stage orientation (:mod:`ptychograph.geometry`).

Negative amplitudes are squared with their sign (``diffamp * |diffamp|``) so the frame checks
see, and refuse or clip, them (``data.negative``); NaN/Inf pass through to ``data.nonfinite``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os

import h5py
import numpy as np

from ptychograph.config import GeometryConfig
from ptychograph.errors import InputError
from ptychograph.scan import HC_EV_M, Geometry, Scan

log = logging.getLogger("ptychograph")

#: numpy dtype kinds accepted for real-valued datasets.
REAL_KINDS = "biuf"
#: Relative difference between HXN's stored object pixel size and ours that is reported.
PIXEL_TOLERANCE = 0.01
#: Positions are micrometres; a scan spanning less than this many um is suspicious (metres?).
MIN_SPAN_UM = 1e-3
#: Frames converted per block (bounds the float64 temporaries of a large file).
BLOCK_FRAMES = 256


def read_hxn(path: str | os.PathLike[str], geometry: GeometryConfig | None = None) -> Scan:
    """Read an HXN ptychography input file into a :class:`Scan`.

    geometry : values given here replace the file's (``lambda_nm``, ``z_m``, ``ccd_pixel_um``),
    whose datasets are then not needed. Returns frames (N, H, W) float32 intensities with zero
    frequency at the centre, positions (N, 2) float64 (y, x) metres; no mask or illumination.
    Raises InputError naming the dataset (``diffamp``, ``points``, ``lambda_nm``, ...).
    """
    overrides = geometry or GeometryConfig()
    with contextlib.suppress(ImportError):  # registers bitshuffle/LZ4/... filters if installed
        import hdf5plugin  # noqa: F401
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError("data.path", f"{path} is not a readable HXN HDF5 file ({reason})") from exc
    with file:
        frames = _read_frames(file)
        positions = _read_points(file, frames.shape[0])
        wavelength = (
            HC_EV_M / overrides.energy_ev
            if overrides.energy_ev is not None
            else _scalar(file, "lambda_nm") * 1e-9
        )
        distance = overrides.distance_m or _scalar(file, "z_m")
        pixel = overrides.detector_pixel_m or _scalar(file, "ccd_pixel_um") * 1e-6
        result = Geometry(
            wavelength=wavelength,
            distance=distance,
            detector_pixel=(pixel, pixel),
            frame_shape=(int(frames.shape[1]), int(frames.shape[2])),
        )
        _cross_check_pixels(file, result)
    _warn_if_metres(positions)
    return Scan(frames=frames, positions=positions, geometry=result)


def _read_frames(file: h5py.File) -> np.ndarray:
    """``diffamp`` (N, A, B) amplitudes -> frames (N, B, A) float32 intensities, centred."""
    ds = _dataset(file, "diffamp")
    _check_rank(ds, "diffamp", (3,), "(N, H, W)")
    if ds.shape[0] == 0:
        raise InputError("diffamp", "contains zero frames")
    if 0 in ds.shape:
        raise InputError("diffamp", f"has empty frames: shape {ds.shape}")
    n_frames, size_a, size_b = (int(size) for size in ds.shape)
    frames = np.empty((n_frames, size_b, size_a), dtype=np.float32)
    for start in range(0, n_frames, BLOCK_FRAMES):
        stop = min(start + BLOCK_FRAMES, n_frames)
        try:
            amplitude = np.asarray(ds[start:stop], dtype=np.float64)
        except (OSError, TypeError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError("diffamp", f"could not be read ({reason})") from exc
        intensity = amplitude * np.abs(amplitude)
        centred = np.fft.fftshift(intensity, axes=(1, 2))
        frames[start:stop] = centred.transpose(0, 2, 1)
    return frames


def _read_points(file: h5py.File, n_frames: int) -> np.ndarray:
    """``points`` (2, N) (x, y) um (or (N, 2)) -> positions (N, 2) float64 (y, x) metres.

    With N = 2 the (2, 2) array is read in HXN's (2, N) layout.
    """
    ds = _dataset(file, "points")
    _check_rank(ds, "points", (2,), "(2, N) (x, y) in micrometres")
    raw = np.asarray(ds[()], dtype=np.float64)
    if raw.shape[0] == 2 and raw.shape[1] == n_frames:
        xy = raw.T
    elif raw.shape == (n_frames, 2):
        xy = raw
    else:
        raise InputError(
            "points",
            f"has shape {raw.shape}, expected (2, N) or (N, 2) with N = {n_frames} "
            "(the number of diffamp frames)",
        )
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise InputError(
            "points", f"has {bad.size} position(s) with NaN or Inf (first: position {bad[0]})"
        )
    return np.ascontiguousarray(xy[:, ::-1]) * 1e-6 + 0.0


def _scalar(file: h5py.File, name: str) -> float:
    """A positive finite scalar dataset, shape () or (1,)."""
    ds = _dataset(file, name)
    _check_rank(ds, name, (0, 1), "a scalar")
    if ds.size != 1:
        raise InputError(name, f"has shape {ds.shape}, expected a scalar")
    value = float(np.asarray(ds[()], dtype=np.float64).reshape(-1)[0])
    if not (math.isfinite(value) and value > 0):
        raise InputError(name, f"must be a positive finite number, got {value}")
    return value


def _cross_check_pixels(file: h5py.File, geometry: Geometry) -> None:
    """Warn when HXN's stored object pixel sizes differ from ours by more than 1 %.

    ``x_pixel_m`` pairs with frame columns (object_pixel[1]), ``y_pixel_m`` with rows.
    """
    ours = {"y_pixel_m": geometry.object_pixel[0], "x_pixel_m": geometry.object_pixel[1]}
    for name, expected in ours.items():
        if name not in file:
            continue
        try:
            stored = _scalar(file, name)
        except InputError as exc:
            log.warning("ignoring %s (%s)", name, exc.problem)
            continue
        if abs(stored - expected) > PIXEL_TOLERANCE * expected:
            log.warning(
                "%s: the file says %.4g m but lambda z / (pixels * pixel size) gives %.4g m "
                "(%.1f %% apart); using the computed size -- check lambda_nm, z_m, "
                "ccd_pixel_um and data.geometry",
                name,
                stored,
                expected,
                100 * abs(stored - expected) / expected,
            )


def _warn_if_metres(positions: np.ndarray) -> None:
    """HXN writes micrometres; a scan spanning under 1 nm as read suggests metres."""
    if positions.shape[0] < 2:
        return
    span_um = float(np.ptp(positions, axis=0).max()) * 1e6
    if 0 < span_um < MIN_SPAN_UM:
        log.warning(
            "points: the scan spans only %.3g um as micrometres; if the file holds metres, "
            "multiply points by 1e6 (HXN writes micrometres)",
            span_um,
        )


def _dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """The dataset ``name``; InputError naming it when missing or not a dataset."""
    try:
        obj = file.get(name)
    except (KeyError, OSError):  # dangling or broken link
        obj = None
    if obj is None:
        raise InputError(name, "missing dataset (expected in an HXN ptychography file)")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(name, f"is a {type(obj).__name__}, expected a dataset")
    return obj


def _check_rank(ds: h5py.Dataset, name: str, ranks: tuple[int, ...], expected: str) -> None:
    """Refuse a non-real dataset or one whose rank is not in ``ranks``."""
    if ds.dtype.kind not in REAL_KINDS:
        raise InputError(name, f"has dtype {ds.dtype}, expected real numbers")
    if ds.shape is None:
        raise InputError(name, f"is an empty (null) dataset, expected {expected}")
    if ds.ndim not in ranks:
        raise InputError(name, f"has shape {ds.shape}, expected {expected}")

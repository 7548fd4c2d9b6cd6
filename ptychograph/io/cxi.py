"""Read and write CXI 1.x ptychography files
(docs/design.md, "Geometry and CXI input"; Maia, Nat. Methods 2012).

:func:`read_cxi` checks every dataset it uses and raises :class:`InputError` naming the HDF5
path and the problem. :func:`write_cxi` writes a file that :func:`read_cxi` (and other CXI
readers) accept, atomically: a temporary file beside the target, renamed on success.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from ptychograph.errors import InputError
from ptychograph.scan import EV_J, HC_EV_M, Geometry, Scan
from ptychograph.version import __version__

DETECTOR = "/entry_1/instrument_1/detector_1"
SOURCE = "/entry_1/instrument_1/source_1"
DATA_PATHS = ("/entry_1/data_1/data", f"{DETECTOR}/data")
TRANSLATION_PATHS = ("/entry_1/sample_1/geometry_1/translation", "/entry_1/data_1/translation")
ILLUMINATION_PATHS = (f"{SOURCE}/illumination", f"{SOURCE}/probe")
ENERGY_PATH = f"{SOURCE}/energy"
MASK_PATH = f"{DETECTOR}/mask"
CXI_VERSION = 150
#: A bare energy above this can only be eV: X-ray photon energies in joules are ~1e-16..1e-14.
EV_THRESHOLD = 1e-12
#: eV per unit for the ``units`` attribute of the energy (compared in lower case).
EV_PER_UNIT = {"ev": 1.0, "kev": 1e3, "j": 1.0 / EV_J, "joule": 1.0 / EV_J, "joules": 1.0 / EV_J}
#: numpy dtype kinds accepted for real-valued and for possibly complex datasets.
REAL_KINDS = "biuf"
NUMERIC_KINDS = "biufc"


def read_cxi(path: str | os.PathLike[str]) -> Scan:
    """Read a CXI file into a :class:`Scan`.

    Returns frames (N, H, W) float32, positions (N, 2) float64 (y, x) metres, geometry from
    energy, distance and pixel sizes, mask (H, W) bool or None, illumination (M, H, W)
    complex64 or None.
    """
    with contextlib.suppress(ImportError):  # registers bitshuffle/LZ4/... filters if installed
        import hdf5plugin  # noqa: F401
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            "data.path", f"{path} is not a readable HDF5/CXI file ({_one_line(exc)})"
        ) from exc
    with file:
        frames = _read_frames(file)
        frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        geometry = Geometry(
            wavelength=HC_EV_M / _read_energy_ev(file),
            distance=_read_positive(file, f"{DETECTOR}/distance"),
            detector_pixel=(
                _read_positive(file, f"{DETECTOR}/y_pixel_size"),
                _read_positive(file, f"{DETECTOR}/x_pixel_size"),
            ),
            frame_shape=frame_shape,
        )
        return Scan(
            frames=frames,
            positions=_read_positions(file, frames.shape[0]),
            geometry=geometry,
            mask=_read_mask(file, frame_shape),
            illumination=_read_illumination(file, frame_shape),
        )


def write_cxi(
    path: str | os.PathLike[str], scan: Scan, energy_units: Literal["J", "eV"] = "J"
) -> None:
    """Write ``scan`` as a CXI 1.x file (cxi_version 150), atomically.

    Frames (N, H, W) chunked per frame and gzip-compressed; translation (N, 3) (x, y, z=0)
    metres; energy in J, or in eV with a ``units`` attribute when ``energy_units="eV"``.
    """
    if energy_units not in ("J", "eV"):
        raise InputError("energy_units", f"must be 'J' or 'eV', got {energy_units!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(tmp, "x") as file:
            file.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            file.attrs["creator"] = f"ptychograph {__version__}"  # what --overwrite may replace
            _write_detector(file, scan)
            _write_source(file, scan, energy_units)
            translation = np.zeros((scan.n_frames, 3), dtype=np.float64)
            translation[:, 0] = scan.positions[:, 1]
            translation[:, 1] = scan.positions[:, 0]
            file.create_dataset(TRANSLATION_PATHS[0], data=translation)
            file[DATA_PATHS[0]] = h5py.SoftLink(DATA_PATHS[1])
            file[TRANSLATION_PATHS[1]] = h5py.SoftLink(TRANSLATION_PATHS[0])
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_detector(file: h5py.File, scan: Scan) -> None:
    """Frames (N, H, W), distance, pixel sizes and the optional mask (H, W) as uint32 (bit 0)."""
    det = file.create_group(DETECTOR)
    height, width = scan.frames.shape[1:]
    det.create_dataset(
        "data",
        data=scan.frames,
        chunks=(1, height, width) if scan.n_frames else None,
        compression="gzip",
        compression_opts=4,
        shuffle=True,
    )
    det.create_dataset("distance", data=np.float64(scan.geometry.distance))
    det.create_dataset("y_pixel_size", data=np.float64(scan.geometry.detector_pixel[0]))
    det.create_dataset("x_pixel_size", data=np.float64(scan.geometry.detector_pixel[1]))
    if scan.mask is not None:
        det.create_dataset("mask", data=np.asarray(scan.mask, dtype=bool).astype(np.uint32))


def _write_source(file: h5py.File, scan: Scan, energy_units: str) -> None:
    """Photon energy (J, or eV with ``units``) and the optional illumination (M, H, W)."""
    source = file.create_group(SOURCE)
    energy_ev = HC_EV_M / scan.geometry.wavelength
    if energy_units == "eV":
        source.create_dataset("energy", data=np.float64(energy_ev))
        source["energy"].attrs["units"] = "eV"
    else:
        source.create_dataset("energy", data=np.float64(energy_ev * EV_J))
    if scan.illumination is not None:
        probe = np.asarray(scan.illumination, dtype=np.complex64)
        source.create_dataset("illumination", data=probe.reshape((-1, *probe.shape[-2:])))


def _read_frames(file: h5py.File) -> np.ndarray:
    """Frames (N, H, W) as float32, with N, H, W >= 1."""
    path, ds = _required(file, DATA_PATHS)
    _check(ds, path, (3,), "(N, H, W)", REAL_KINDS)
    if ds.shape[0] == 0:
        raise InputError(path, "contains zero frames")
    if 0 in ds.shape:
        raise InputError(path, f"has empty frames: shape {ds.shape}")
    _check_virtual_sources(ds, path, Path(file.filename).parent)
    frames = np.empty(ds.shape, dtype=np.float32)
    try:
        ds.read_direct(frames)
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(path, f"could not be read ({_one_line(exc)})") from exc
    return frames


def _check_virtual_sources(ds: h5py.Dataset, path: str, folder: Path) -> None:
    """A virtual dataset whose source file is missing reads as its fill value (zeros, taken
    for real frames): refuse it, naming the missing file."""
    if not ds.is_virtual:
        return
    for source in ds.virtual_sources():
        name = source.file_name
        if name == ".":  # a dataset of the same file
            continue
        if not (Path(name) if Path(name).is_absolute() else folder / name).is_file():
            raise InputError(path, f"virtual dataset source file {name} is missing")


def _read_positions(file: h5py.File, n_frames: int) -> np.ndarray:
    """Translation (N, 3) (x, y, z) metres -> positions (N, 2) float64 (y, x), finite, unique."""
    path, ds = _required(file, TRANSLATION_PATHS)
    _check(ds, path, (2,), "(N, 3)", REAL_KINDS)
    if ds.shape[1] != 3:
        raise InputError(path, f"has shape {ds.shape}, expected (N, 3) (x, y, z) in metres")
    if ds.shape[0] != n_frames:
        raise InputError(path, f"has {ds.shape[0]} positions but the data has {n_frames} frames")
    xyz = np.asarray(ds[()], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
    if bad.size:
        first_bad = int(bad[0])
        problem = (
            f"has {_count(bad.size, 'position')} with NaN or Inf (first: position {first_bad})"
        )
        raise InputError(path, problem)
    positions = xyz[:, [1, 0]] + 0.0  # (y, x); + 0.0 turns -0.0 into 0.0 for the check below
    _check_unique(positions, path)
    return positions


def _check_unique(positions: np.ndarray, path: str) -> None:
    """Refuse repeated (y, x) positions (N, 2): they make the overlap ill-defined."""
    _, first = np.unique(positions, axis=0, return_index=True)
    if first.size == positions.shape[0]:
        return
    repeated = np.setdiff1d(np.arange(positions.shape[0]), first)
    index = int(repeated[0])
    earlier = int(np.flatnonzero((positions == positions[index]).all(axis=1))[0])
    problem = f"has {_count(repeated.size, 'repeated position')} "
    problem += f"(first: position {index} repeats position {earlier})"
    raise InputError(path, problem)


def _read_energy_ev(file: h5py.File) -> float:
    """Photon energy in eV: J by the spec, eV/keV by ``units``, or a bare value > 1e-12 as eV."""
    value = _read_positive(file, ENERGY_PATH)
    units = _units(file[ENERGY_PATH])
    if units is None:
        return value if value > EV_THRESHOLD else value / EV_J
    ev_per_unit = EV_PER_UNIT.get(units.lower())
    if ev_per_unit is None:
        raise InputError(ENERGY_PATH, f"has units {units!r}, expected J, eV or keV")
    if units.lower().startswith("j") and value > EV_THRESHOLD:
        raise InputError(
            ENERGY_PATH, f"is {value} J, far above any X-ray photon; are the units really J?"
        )
    return value * ev_per_unit


def _units(ds: h5py.Dataset) -> str | None:
    """The ``units`` attribute as stripped text, or None when absent or empty."""
    raw = ds.attrs.get("units")
    if isinstance(raw, np.ndarray):
        raw = raw.reshape(-1)[0] if raw.size else None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = "" if raw is None else str(raw).strip()
    return text or None


def _read_positive(file: h5py.File, path: str) -> float:
    """A scalar stored as shape () or (1,), which must be finite and > 0."""
    _, ds = _required(file, (path,))
    _check(ds, path, (0, 1), "a scalar, shape () or (1,)", REAL_KINDS)
    if ds.size != 1:
        raise InputError(path, f"has shape {ds.shape}, expected a scalar, shape () or (1,)")
    value = float(np.asarray(ds[()], dtype=np.float64).reshape(-1)[0])
    if not (np.isfinite(value) and value > 0):
        raise InputError(path, f"must be a positive finite number, got {value}")
    return value


def _read_mask(file: h5py.File, frame_shape: tuple[int, int]) -> np.ndarray | None:
    """Optional mask (H, W): non-zero marks a bad pixel -> bool (H, W), True = bad."""
    found = _find(file, (MASK_PATH,))
    if found is None:
        return None
    path, ds = found
    _check(ds, path, (2,), "(H, W)", REAL_KINDS)
    if ds.shape != frame_shape:
        raise InputError(path, f"has shape {ds.shape} but the frames are {frame_shape}")
    return np.asarray(ds[()]) != 0


def _read_illumination(file: h5py.File, frame_shape: tuple[int, int]) -> np.ndarray | None:
    """Optional initial probe (H, W) or (M, H, W) -> (M, H, W) complex64, finite."""
    found = _find(file, ILLUMINATION_PATHS)
    if found is None:
        return None
    path, ds = found
    _check(ds, path, (2, 3), "(H, W) or (M, H, W)", NUMERIC_KINDS)
    if ds.shape[-2:] != frame_shape or ds.size == 0:
        raise InputError(
            path, f"has shape {ds.shape}, expected (H, W) or (M, H, W) with (H, W) = {frame_shape}"
        )
    probe = np.asarray(ds[()]).astype(np.complex64).reshape((-1, *frame_shape))
    if not np.isfinite(probe).all():
        raise InputError(path, "contains NaN or Inf")
    return probe


def _find(file: h5py.File, paths: tuple[str, ...]) -> tuple[str, h5py.Dataset] | None:
    """The first of ``paths`` that exists, as (path, dataset), or None when none does."""
    for path in paths:
        try:
            obj = file.get(path)
        except (KeyError, OSError):  # dangling or broken link: treat as absent
            obj = None
        if obj is None:
            continue
        if not isinstance(obj, h5py.Dataset):
            raise InputError(path, f"is a {type(obj).__name__}, expected a dataset")
        return path, obj
    return None


def _required(file: h5py.File, paths: tuple[str, ...]) -> tuple[str, h5py.Dataset]:
    """Like :func:`_find`, but a missing dataset is an error naming the first path."""
    found = _find(file, paths)
    if found is None:
        also = f" (nor {', '.join(paths[1:])})" if len(paths) > 1 else ""
        raise InputError(paths[0], f"missing dataset{also}")
    return found


def _check(ds: h5py.Dataset, path: str, ranks: tuple[int, ...], expected: str, kinds: str) -> None:
    """Refuse a dataset whose dtype kind is not in ``kinds`` or whose rank is not in ``ranks``."""
    if ds.dtype.kind not in NUMERIC_KINDS:
        raise InputError(path, f"has non-numeric dtype {ds.dtype}")
    if ds.dtype.kind not in kinds:
        raise InputError(path, f"has dtype {ds.dtype}, expected real numbers")
    if ds.shape is None:
        raise InputError(path, f"is an empty (null) dataset, expected {expected}")
    if ds.ndim not in ranks:
        raise InputError(path, f"has shape {ds.shape}, expected {expected}")


def _one_line(exc: BaseException) -> str:
    """The exception text collapsed to one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _count(count: int, noun: str) -> str:
    """'1 position' or 'k positions'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

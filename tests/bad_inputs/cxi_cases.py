"""Broken CXI (HDF5) inputs: a copy of the good scan edited with h5py, or bytes that are not one.

Field names in the expected error lines are the HDF5 paths of :mod:`ptychograph.io.cxi`, except
for whole-file problems (``data.path``) and checks made after reading (``frames``,
``positions``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ptychograph.io.cxi import DATA_PATHS, DETECTOR, ENERGY_PATH, MASK_PATH, TRANSLATION_PATHS
from ptychograph.io.cxi import SOURCE as SOURCE_PATH

from .case import CXI_NAME, FRAME_SIDE, N_FRAMES, Case, GoodScan, Make, base_config, write_config

FRAMES = f"{DETECTOR}/data"
TRANSLATION = TRANSLATION_PATHS[0]
DISTANCE = f"{DETECTOR}/distance"
X_PIXEL = f"{DETECTOR}/x_pixel_size"
Y_PIXEL = f"{DETECTOR}/y_pixel_size"
ILLUMINATION = f"{SOURCE_PATH}/illumination"
#: The frames are reported under the path read first (a soft link to FRAMES).
DATA = DATA_PATHS[0]

Edit = Callable[[Path], None]


def cxi(edit: Edit, name: str = CXI_NAME) -> Make:
    """Copy the good CXI file into the folder as ``name``, apply ``edit`` to it."""

    def make(folder: Path, good: GoodScan) -> Path:
        path = folder / name
        shutil.copyfile(good.cxi, path)
        edit(path)
        return write_config(folder, base_config(name))

    return make


# --- whole-file edits ---------------------------------------------------------------------


def content(data: bytes) -> Edit:
    def edit(path: Path) -> None:
        path.write_bytes(data)

    return edit


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble_header(path: Path) -> None:
    """Overwrite the superblock's addresses, keeping the HDF5 signature."""
    data = bytearray(path.read_bytes())
    data[16:400] = b"\xff" * 384
    path.write_bytes(bytes(data))


def empty_hdf5(path: Path) -> None:
    """A valid HDF5 file with no CXI content at all."""
    with h5py.File(path, "w"):
        pass


def corrupt_chunk(path: Path) -> None:
    """Zero the compressed bytes of frame 5's chunk: the file opens, the frames do not read."""
    with h5py.File(path, "r") as file:
        info = file[FRAMES].id.get_chunk_info(5)
    data = bytearray(path.read_bytes())
    data[info.byte_offset : info.byte_offset + info.size] = b"\0" * info.size
    path.write_bytes(bytes(data))


# --- dataset edits ------------------------------------------------------------------------


def delete(*names: str) -> Edit:
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            for name in names:
                del file[name]

    return edit


def replace(name: str, value: Callable[[h5py.File], object]) -> Edit:
    """Put ``value(file)`` at ``name`` (the old dataset is read before it is deleted)."""

    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            new = value(file)
            if name in file:
                del file[name]
            if isinstance(new, h5py.Empty):
                file.create_dataset(name, data=new)
            else:
                file[name] = new

    return edit


def set_value(name: str, number: float) -> Edit:
    return replace(name, lambda _: np.float64(number))


def frames(change: Callable[[np.ndarray], np.ndarray]) -> Edit:
    """Replace the frames (N, H, W) by ``change(frames)``."""
    return replace(FRAMES, lambda file: change(np.asarray(file[FRAMES][()])))


def edit_frames(change: Callable[[np.ndarray], None]) -> Edit:
    """Edit the frames (N, H, W) in place (same shape and dtype)."""

    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            values = np.asarray(file[FRAMES][()])
            change(values)
            file[FRAMES][...] = values

    return edit


def translation(change: Callable[[np.ndarray], np.ndarray]) -> Edit:
    """Replace the translation (N, 3) (x, y, z) metres by ``change(translation)``."""
    return replace(TRANSLATION, lambda file: change(np.asarray(file[TRANSLATION][()])))


def frames_as_group(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        del file[FRAMES]
        file.create_group(FRAMES)


def set_attr(name: str, **attrs: str) -> Edit:
    def edit(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            file[name].attrs.update(attrs)

    return edit


# --- frame and position contents ----------------------------------------------------------


def nan_in_three(values: np.ndarray) -> None:
    values[[3, 7, 20], 5, 5] = np.nan


def inf_in_first(values: np.ndarray) -> None:
    values[0, 1, 1] = np.inf


def all_nan(values: np.ndarray) -> None:
    values.fill(np.nan)


def negative_corner(values: np.ndarray) -> None:
    """Four negative pixels in frame 4 (a background subtraction gone too far)."""
    values[4, :2, :2] = -3.0


def all_zero(values: np.ndarray) -> None:
    values.fill(0.0)


def repeat_position(xyz: np.ndarray) -> np.ndarray:
    xyz[9] = xyz[2]
    return xyz


def with_value(row: int, col: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(xyz: np.ndarray) -> np.ndarray:
        xyz[row, col] = value
        return xyz

    return change


def times(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Positions scaled by ``factor``, as by a unit mix-up; 1e4 spans > 100k pixels a side."""
    return lambda xyz: xyz * factor


def span(metres: float) -> Callable[[np.ndarray], np.ndarray]:
    """Positions (x, y) squeezed to span ``metres`` (as if given in the wrong units)."""

    def change(xyz: np.ndarray) -> np.ndarray:
        xy = xyz[:, :2] - xyz[:, :2].min(axis=0)
        xyz[:, :2] = xy * (metres / np.ptp(xy, axis=0).max())
        return xyz

    return change


def more_rows(xyz: np.ndarray) -> np.ndarray:
    return np.concatenate([xyz, xyz[:3] + 1e-7])


def shape_of(shape: tuple[int, ...]) -> Callable[[h5py.File], object]:
    return lambda _: np.zeros(shape, dtype=np.uint32)


def frames_from_missing_file(path: Path) -> None:
    """Make the frames a virtual dataset of two files, then delete the second: HDF5 reads
    its frames as zeros, which pass for real (empty) frames (issue 11, item 7)."""
    with h5py.File(path, "r+") as file:
        frames = np.asarray(file[FRAMES][()])
        half = len(frames) // 2
        layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
        for name, part in (("frames-a.h5", frames[:half]), ("frames-source.h5", frames[half:])):
            with h5py.File(path.with_name(name), "w") as src:
                src.create_dataset("data", data=part)
            start = 0 if name == "frames-a.h5" else half
            layout[start : start + len(part)] = h5py.VirtualSource(name, "data", shape=part.shape)
        del file[FRAMES]
        file.create_virtual_dataset(FRAMES, layout, fillvalue=0)
    path.with_name("frames-source.h5").unlink()


CASES = [
    # the file itself
    Case("cxi-not-hdf5", "cxi", cxi(content(b"not HDF5 at all\n")), ("data.path", "HDF5")),
    Case("cxi-empty-file", "cxi", cxi(content(b"")), ("data.path", "HDF5")),
    Case("cxi-truncated", "cxi", cxi(truncate), ("data.path", "truncated")),
    Case("cxi-garbled-header", "cxi", cxi(garble_header), ("data.path", "HDF5")),
    Case(
        "cxi-unknown-format", "cxi", cxi(content(b"1 2 3\n"), "scan.txt"), ("data.path", "format")
    ),
    Case("cxi-hdf5-without-cxi", "cxi", cxi(empty_hdf5), (DATA, "missing")),
    Case("cxi-corrupt-chunk", "cxi", cxi(corrupt_chunk), (DATA, "could not be read")),
    # missing datasets
    Case("cxi-missing-frames", "cxi", cxi(delete(DATA, FRAMES)), (DATA, "missing")),
    Case(
        "cxi-missing-translation", "cxi", cxi(delete(*TRANSLATION_PATHS)), (TRANSLATION, "missing")
    ),
    Case("cxi-missing-energy", "cxi", cxi(delete(ENERGY_PATH)), (ENERGY_PATH, "missing")),
    Case("cxi-missing-pixel-size", "cxi", cxi(delete(X_PIXEL)), (X_PIXEL, "missing")),
    Case("cxi-frames-is-a-group", "cxi", cxi(frames_as_group), (DATA, "dataset")),
    # wrong ranks and dtypes
    Case(
        "cxi-frames-rank-2",
        "cxi",
        cxi(frames(lambda f: f.reshape(f.shape[0], -1))),
        (DATA, "(N, H, W)"),
    ),
    Case("cxi-frames-rank-4", "cxi", cxi(frames(lambda f: f[None])), (DATA, "(N, H, W)")),
    Case(
        "cxi-frames-text",
        "cxi",
        cxi(frames(lambda f: np.full(f.shape, b"7", "S1"))),
        (DATA, "non-numeric"),
    ),
    Case(
        "cxi-frames-complex",
        "cxi",
        cxi(frames(lambda f: f.astype(np.complex64))),
        (DATA, "real numbers"),
    ),
    Case(
        "cxi-translation-rank-1",
        "cxi",
        cxi(translation(lambda t: t[:, 0])),
        (TRANSLATION, "(N, 3)"),
    ),
    Case(
        "cxi-translation-2-columns",
        "cxi",
        cxi(translation(lambda t: t[:, :2])),
        (TRANSLATION, "(N, 3)"),
    ),
    Case(
        "cxi-energy-vector",
        "cxi",
        cxi(replace(ENERGY_PATH, lambda _: np.ones(2))),
        (ENERGY_PATH, "scalar"),
    ),
    Case(
        "cxi-energy-null",
        "cxi",
        cxi(replace(ENERGY_PATH, lambda _: h5py.Empty("f8"))),
        (ENERGY_PATH, "empty"),
    ),
    # how many frames
    Case("cxi-zero-frames", "cxi", cxi(frames(lambda f: f[:0])), (DATA, "zero frames")),
    Case(
        "cxi-zero-width-frames", "cxi", cxi(frames(lambda f: f[:, :, :0])), (DATA, "empty frames")
    ),
    Case(
        "cxi-fewer-positions",
        "cxi",
        cxi(translation(lambda t: t[:-2])),
        (TRANSLATION, f"{N_FRAMES - 2} positions", f"{N_FRAMES} frames"),
    ),
    Case(
        "cxi-more-positions",
        "cxi",
        cxi(translation(more_rows)),
        (TRANSLATION, f"{N_FRAMES + 3} positions", f"{N_FRAMES} frames"),
    ),
    # intensities
    Case(
        "cxi-nan-frames",
        "cxi",
        cxi(edit_frames(nan_in_three)),
        ("frames", "3 frames", "NaN", "data.nonfinite"),
        recover=("data.nonfinite=drop",),
        recovered=("dropped 3 frames", "[3, 7, 20]"),
        frames_kept=N_FRAMES - 3,
    ),
    Case("cxi-inf-frame", "cxi", cxi(edit_frames(inf_in_first)), ("frames", "frame 0", "Inf")),
    Case(
        "cxi-all-nan-dropped",
        "cxi",
        cxi(edit_frames(all_nan)),
        ("frames", "nothing is left"),
        args=("--set", "data.nonfinite=drop"),
    ),
    Case(
        "cxi-negative-counts",
        "cxi",
        cxi(edit_frames(negative_corner)),
        ("frames", "negative", "frame 4", "data.negative"),
        recover=("data.negative=clip",),
        recovered=("clipped 4 negative pixels in 1 frame",),
    ),
    Case("cxi-all-zero-frames", "cxi", cxi(edit_frames(all_zero)), ("frames", "zero")),
    # positions
    Case(
        "cxi-duplicate-positions", "cxi", cxi(translation(repeat_position)), (TRANSLATION, "repeat")
    ),
    Case(
        "cxi-nan-position", "cxi", cxi(translation(with_value(6, 1, np.nan))), (TRANSLATION, "NaN")
    ),
    Case(
        "cxi-inf-position", "cxi", cxi(translation(with_value(6, 0, -np.inf))), (TRANSLATION, "Inf")
    ),
    Case("cxi-absurd-object", "cxi", cxi(translation(times(1e4))), ("positions", "100000")),
    # geometry
    Case("cxi-zero-energy", "cxi", cxi(set_value(ENERGY_PATH, 0.0)), (ENERGY_PATH, "positive")),
    Case(
        "cxi-negative-energy",
        "cxi",
        cxi(set_value(ENERGY_PATH, -1.3e-15)),
        (ENERGY_PATH, "positive"),
    ),
    Case("cxi-nan-energy", "cxi", cxi(set_value(ENERGY_PATH, np.nan)), (ENERGY_PATH, "nan")),
    Case(
        "cxi-energy-unknown-units",
        "cxi",
        cxi(set_attr(ENERGY_PATH, units="furlong")),
        (ENERGY_PATH, "furlong"),
    ),
    Case("cxi-zero-distance", "cxi", cxi(set_value(DISTANCE, 0.0)), (DISTANCE, "positive")),
    Case("cxi-negative-distance", "cxi", cxi(set_value(DISTANCE, -2.0)), (DISTANCE, "positive")),
    Case("cxi-zero-pixel-size", "cxi", cxi(set_value(X_PIXEL, 0.0)), (X_PIXEL, "positive")),
    Case("cxi-negative-pixel-size", "cxi", cxi(set_value(Y_PIXEL, -75e-6)), (Y_PIXEL, "positive")),
    # masks and the illumination
    Case(
        "cxi-mask-wrong-shape",
        "cxi",
        cxi(replace(MASK_PATH, shape_of((16, 16)))),
        (MASK_PATH, "(16, 16)"),
    ),
    Case(
        "cxi-mask-rank-3",
        "cxi",
        cxi(replace(MASK_PATH, shape_of((1, FRAME_SIDE, FRAME_SIDE)))),
        (MASK_PATH, "(H, W)"),
    ),
    Case(
        "cxi-illumination-wrong-shape",
        "cxi",
        cxi(replace(ILLUMINATION, lambda _: np.ones((1, 16, 16), np.complex64))),
        (ILLUMINATION, "(1, 16, 16)"),
    ),
    Case(
        "cxi-illumination-nan",
        "cxi",
        cxi(replace(ILLUMINATION, lambda _: np.full((FRAME_SIDE,) * 2, np.nan, np.complex64))),
        (ILLUMINATION, "NaN"),
    ),
    Case(
        "cxi-virtual-source-missing",
        "cxi",
        cxi(frames_from_missing_file),
        (DATA, "frames-source.h5", "missing"),
    ),
    Case(
        "cxi-positions-within-one-pixel",
        "cxi",
        cxi(replace(TRANSLATION, lambda f: np.asarray(f[TRANSLATION][()]) * 1e-7)),
        ("positions", "one object pixel", "units"),
    ),
    # issue 11, item 7: each ran with every view at one origin, without a word
    Case(
        "cxi-energy-1e-30-joule",
        "cxi",
        cxi(set_value(ENERGY_PATH, 1e-30)),
        ("positions", "one object pixel", "energy"),
    ),
    Case(
        "cxi-distance-1e9-metres",
        "cxi",
        cxi(set_value(DISTANCE, 1e9)),
        ("positions", "one object pixel", "distance"),
    ),
    Case(
        "cxi-positions-span-1e-13-metres",
        "cxi",
        cxi(translation(span(1e-13))),
        ("positions", "one object pixel", "span 1e-13 m"),
    ),
]

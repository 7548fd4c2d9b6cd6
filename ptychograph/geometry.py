"""From sample positions in metres to view origins in object pixels
(docs/design.md, "Geometry and CXI input").

Default orientation: translation x -> object column, y -> object row. View j covers the object
from (y_j, x_j) / pixel after the smallest position is moved to a margin. ``swap_xy``,
``flip_x`` and ``flip_y`` adapt to beamlines whose stages are mounted otherwise.
"""

from __future__ import annotations

import numpy as np

from ptychograph.errors import InputError

#: Objects larger than this many pixels a side are refused as a sign of wrong units or geometry.
MAX_OBJECT_SIDE = 100_000


def view_origins(
    positions: np.ndarray,
    object_pixel: tuple[float, float],
    margin: int,
    swap_xy: bool = False,
    flip_x: bool = False,
    flip_y: bool = False,
) -> np.ndarray:
    """Top-left (row, column) of every view in object pixels.

    positions : (N, 2) float (y, x) metres. object_pixel : (y, x) metres. margin : pixels.
    Returns (N, 2) float64, with min over views equal to ``margin`` on both axes.
    """
    pos = np.asarray(positions, dtype=np.float64)
    if swap_xy:
        pos = pos[:, ::-1]
    rows = pos[:, 0] / object_pixel[0]
    cols = pos[:, 1] / object_pixel[1]
    if flip_y:
        rows = -rows
    if flip_x:
        cols = -cols
    origins = np.stack([rows - rows.min(), cols - cols.min()], axis=1) + margin
    return origins


def object_shape(origins: np.ndarray, frame_shape: tuple[int, int], margin: int) -> tuple[int, int]:
    """(Y, X) object size covering every view plus ``margin`` pixels (and one for sub-pixels)."""
    extent = np.ceil(origins.max(axis=0)).astype(int) + np.asarray(frame_shape) + margin + 1
    shape = (int(extent[0]), int(extent[1]))
    if max(shape) > MAX_OBJECT_SIDE:
        raise InputError(
            "positions",
            f"scan spans an object of {shape[0]} x {shape[1]} pixels (limit {MAX_OBJECT_SIDE}); "
            "check the position units, energy, distance and pixel size",
        )
    return shape

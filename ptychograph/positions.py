"""Per-view terms of position correction, and moving a chunk's views (docs/design.md,
"Position correction").

A view whose true corner is its origin plus a small d (object pixels) has, up to a translation
of the whole frame (which leaves the far-field intensity alone), the exit waves
phi_j + d_y P_j dO/dy + d_x P_j dO/dx with P_j = S_j P and the object's derivatives taken in
its window. The least-squares fit of the Fourier-projected model F^H F_c[F phi_j] - phi_j by
that change (the per-view step of Odstrcil et al., Opt. Express 26, 3108 (2018), eq. 28; in the
spirit of Dwivedi et al., Ultramicroscopy 192 (2018)) is the 2 x 2 system

    A_j d = b_j,  A_j[a, c] = Re sum conj(D_a) D_c,  b_j[a] = Re sum conj(D_a) (Pi phi_j - phi_j),
    D_a = sum over modes of (S_j P^(k)) (E_j dO^(l)/da).

Leave-one-out object. During DM the object in a view's window was built partly from that
view's own exit waves, at its current (wrong) position: where no other view reaches (the edge
of the scan) the object simply follows the view, and the fit cannot tell where the view
belongs. Given the illumination W = sum_j |S_j P|^2 (object-sized, :func:`illumination`,
summed over all views) and the view's exit waves,
the terms are instead formed with the object the other views make,

    O_-j = (W O - sum_k conj(S_j P^(k)) psi_j^(k)) / (W - |S_j P|^2),

and every pixel is weighted by the share of its illumination that comes from other views,
(W - |S_j P|^2) / W: pixels only this view lights count for nothing. On simulated scans with
2 px RMS errors this (with the moves' linear part kept, at a lower rate) took the corrected
positions from 0.49-0.83 px RMS to 0.32-0.65 (benchmarks/RESULTS.md, "Position correction,
simulated").

:func:`shift_terms` returns A_j and b_j of each view; the solve, the step limit and the global
constraint need every view and are done on the reduced terms
(:mod:`ptychograph.algorithms.positions`). :func:`follow_origins` moves a chunk's views to the
positions of the state before a task uses them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ptychograph.backend import Array, fft2, get_array_module, ifft2, to_host
from ptychograph.fourier import modulus_constraint
from ptychograph.operators import exit_waves, extract_views, insert_views, rotate_modes
from ptychograph.views import ViewChunk, batch_probe, shifted_probe


def _batches(n_views: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n_views, batch_size):
        yield slice(start, min(start + batch_size, n_views))


def object_derivatives(obj: Array) -> tuple[Array, Array]:
    """Central differences of the object along rows and columns: two (M_O, Y, X) arrays
    (one-sided at the border)."""
    xp = get_array_module(obj)
    d_row = xp.gradient(obj, axis=1)
    d_col = xp.gradient(obj, axis=2)
    return d_row, d_col


def shift_terms(
    chunk: ViewChunk,
    probe: Array,
    obj: Array,
    batch_size: int = 64,
    lit: Array | None = None,
    rotation: Array | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's per-view least-squares systems (module docstring).

    probe : (M_P, H, W), obj : (M_O, Y, X) complex. lit : (Y, X) real, the illumination W of
    all views (:func:`illumination`), or None: the terms are formed with the object itself,
    unweighted; given, with the leave-one-out object from the chunk's exit waves. rotation :
    (M_P, M_P) or None, the probe-mode rotation that has not reached the exit waves and the
    chunk's table of S_s P yet (S_j P comes from the table: views.shifted_probe). Returns
    ``system`` (N, 3) float64 holding A[0, 0], A[0, 1], A[1, 1] and ``rhs`` (N, 2) float64
    holding b, for (row, column) shifts in object pixels.
    """
    xp = get_array_module(probe)
    system = np.zeros((chunk.n_views, 3))
    rhs = np.zeros((chunk.n_views, 2))
    if lit is None:
        d_row, d_col = object_derivatives(obj)
    else:
        floor = FLOOR * float(xp.max(lit))
    held = shifted_probe(chunk, probe, rotation, batch_size)
    for sl in _batches(chunk.n_views, batch_size):
        corners = chunk.corners[sl]
        probe_views = batch_probe(chunk, held, sl, probe)
        window = extract_views(obj, corners, chunk.frame_shape)  # (n, M_O, H, W)
        weight = None
        if lit is None:
            slopes = [extract_views(d, corners, chunk.frame_shape) for d in (d_row, d_col)]
        else:
            window, weight = _leave_one_out(chunk, sl, probe_views, window, lit, floor, rotation)
            slopes = [xp.gradient(window, axis=axis) for axis in (-2, -1)]
        phi = exit_waves(probe_views, window)
        projected = modulus_constraint(fft2(phi), chunk.amplitudes[sl], chunk.good)
        residual = ifft2(projected, overwrite=True) - phi
        grads = [exit_waves(probe_views, slope) for slope in slopes]

        def inner(a: Array, b: Array, weight: Array | None = weight) -> np.ndarray:
            terms = (xp.conj(a) * b).real
            if weight is not None:
                terms *= weight[:, None, None]
            return to_host(xp.sum(terms, axis=(1, 2, 3, 4))).astype(np.float64)

        system[sl, 0] = inner(grads[0], grads[0])
        system[sl, 1] = inner(grads[0], grads[1])
        system[sl, 2] = inner(grads[1], grads[1])
        rhs[sl, 0] = inner(grads[0], residual)
        rhs[sl, 1] = inner(grads[1], residual)
    return system, rhs


def _leave_one_out(
    chunk: ViewChunk,
    sl: slice,
    probe_views: Array,
    window: Array,
    lit: Array,
    floor: float,
    rotation: Array | None,
) -> tuple[Array, Array]:
    """O_-j in the windows of the views ``sl`` and the weight of each pixel (module
    docstring): (n, M_O, H, W) complex and (n, H, W) real. Where other views bring less than
    ``floor`` (:data:`FLOOR` of the largest illumination) the window keeps O (weight ~0)."""
    xp = get_array_module(window)
    waves = chunk.exit_waves[sl]
    if rotation is not None:
        waves = rotate_modes(waves, rotation)
    own_part = xp.sum(xp.conj(probe_views)[:, :, None] * waves, axis=1)  # (n, M_O, H, W)
    total = extract_views(lit[None], chunk.corners[sl], chunk.frame_shape)[:, 0]  # (n, H, W)
    own = xp.sum(xp.abs(probe_views) ** 2, axis=1)  # (n or 1, H, W)
    rest = total - own
    others = (window * total[:, None] - own_part) / xp.maximum(rest, floor)[:, None]
    window = xp.where((rest > floor)[:, None], others, window)
    weight = xp.clip(rest / xp.maximum(total, floor), 0.0, 1.0)
    return window.astype(probe_views.dtype, copy=False), weight.astype(total.dtype, copy=False)


#: Illumination from other views below this fraction of the largest counts as none.
FLOOR = 1e-3


def illumination(
    chunk: ViewChunk,
    probe: Array,
    obj_shape: tuple[int, int],
    batch_size: int = 64,
    rotation: Array | None = None,
) -> Array:
    """W of the chunk's views: sum_j sum_k |S_j P^(k)|^2 added at each view's window, with
    the shifted probes the terms use (``rotation`` as for :func:`shift_terms`): (Y, X) real,
    on the probe's device. On NumPy the views are added in place, not with
    :func:`~ptychograph.operators.insert_views`, which makes an object-sized array per call."""
    xp = get_array_module(probe)
    total = xp.zeros(obj_shape, dtype=probe.real.dtype)
    held = shifted_probe(chunk, probe, rotation, batch_size)
    for sl in _batches(chunk.n_views, batch_size):
        probe_views = batch_probe(chunk, held, sl, probe)
        power = xp.sum(xp.abs(probe_views) ** 2, axis=1)  # (n or 1, H, W)
        power = xp.ascontiguousarray(xp.broadcast_to(power, (sl.stop - sl.start, *power.shape[1:])))
        corners = chunk.corners[sl]
        if xp is np:  # in place: no object-sized array per batch
            height, width = power.shape[1:]
            for view, (row, col) in zip(power, corners.tolist(), strict=True):
                total[row : row + height, col : col + width] += view
        else:
            total += insert_views(power[:, None], corners, obj_shape)[0]
    return total


def follow_all(chunks: list[ViewChunk], origins: np.ndarray | None) -> None:
    """:func:`follow_origins` for each chunk."""
    for chunk in chunks:
        follow_origins(chunk, origins)


def follow_origins(chunk: ViewChunk, origins: np.ndarray | None) -> None:
    """Move the chunk's views to rows ``first .. first + N - 1`` of ``origins`` ((N_scan, 2)
    float64 view corners) when they differ from where the views are; None: leave them.

    New arrays are assigned (never written in place), so anything cached for the old
    positions sees the change."""
    if origins is None:
        return
    xp = get_array_module(chunk.amplitudes)
    mine = np.asarray(origins[chunk.first : chunk.first + chunk.n_views], dtype=np.float64)
    corners = np.floor(mine).astype(np.int64)
    frac = mine - corners
    if np.array_equal(corners, to_host(chunk.corners)) and np.array_equal(
        frac.astype(to_host(chunk.frac).dtype), to_host(chunk.frac)
    ):
        return
    chunk.corners = xp.asarray(corners)
    chunk.frac = xp.asarray(frac.astype(chunk.frac.dtype))

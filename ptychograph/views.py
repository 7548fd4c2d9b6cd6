"""Per-chunk work of one DM iteration: exit-wave update and overlap partial sums.

A :class:`ViewChunk` holds what stays with a set of views between iterations (amplitudes,
positions, exit waves psi); the functions here are what a worker runs on it and return only
small values (error terms, :class:`~ptychograph.partials.OverlapPartials`), never psi. They cut
the views into batches (scratch memory: a small multiple of one batch), gather each batch's
S_j P and E_j O, spread the batches over threads and add up the sums; the batch bodies are the
ops of :mod:`ptychograph.ops` (NumPy, numba or CUDA kernels), passed as ``ops=``.
Equations: docs/design.md, "One DM iteration" (Dong et al., arXiv:1808.10375, eqs. 2-6).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, TypeVar

import numpy as np

from ptychograph.backend import (
    Array,
    empty_aligned,
    fft2,
    fft_workers,
    get_array_module,
    single_fft_worker,
)
from ptychograph.cpu_ops import spectra_buffer
from ptychograph.fourier import fourier_error
from ptychograph.operators import SubpixelShift, exit_waves, extract_views
from ptychograph.operators import rotate_modes as rotate_modes  # re-exported (growth.py)
from ptychograph.ops import BatchOps, NumpyOps
from ptychograph.partials import FourierError, OverlapPartials
from ptychograph.shifted_probe import ShiftTable, batch_slices, gather_rows, quantise

T = TypeVar("T")


@dataclass
class ViewChunk:
    """The resident state of a contiguous set of views.

    amplitudes : (N, H, W) real, sqrt of the measured intensities, held in FFT order (zero
    frequency at [0, 0]: the detector frames ifftshifted once at load) so that every iteration
    uses unshifted FFTs - the fftshift copies cost ~20 % of an iteration.
    good : (H, W) bool, False at bad detector pixels, or None (also in FFT order).
    corners : (N, 2) int64, integer (row, column) of each view's top-left corner.
    frac : (N, 2) real, sub-pixel part of each view's position, in [0, 1).
    exit_waves : (N, M_P, M_O, H, W) complex, psi.
    subpixel : ``"fourier"`` (the probe is Fourier-shifted by ``frac`` rounded to the
    table's grid, :func:`~ptychograph.shifted_probe.quantise`); positions rounded for ``"off"``
    have ``frac`` = 0.
    first : index in the whole scan of the chunk's first view (its views are
    ``first .. first + N - 1``); position correction moves views by these indices.
    table : the :class:`~ptychograph.shifted_probe.ShiftTable` of S_s P (shared by the chunks
    of one executor slot; its ``steps`` fix the rounding of the offsets for every path).
    spectra : (the psi it belongs to, F psi) kept by the CPU kernels between updates
    (:func:`ptychograph.cpu_ops.spectra_buffer`), or None; stale once psi is another array.
    """

    amplitudes: Array
    good: Array | None
    corners: Array
    frac: Array
    exit_waves: Array
    subpixel: str = "fourier"
    first: int = 0
    table: ShiftTable = field(default_factory=ShiftTable, repr=False)
    _slots: tuple[ShiftTable, Array, Array] | None = field(default=None, repr=False)
    _views: tuple[ShiftTable, int, Array, Array] | None = field(default=None, repr=False)
    spectra: tuple[Array, Array] | None = field(default=None, repr=False)

    def shifter(self, sl: slice, dtype: Any) -> SubpixelShift:
        """S_j for the views ``sl`` (offsets rounded to the table's grid)."""
        return SubpixelShift(quantise(self.frac[sl], self.table.steps), self.frame_shape, dtype)

    def slots(self) -> Array:
        """(N,) int64: each view's row in ``table`` (kept until the table or ``frac``
        change; position correction assigns a new ``frac``)."""
        held = self._slots
        if held is None or held[0] is not self.table or not np.array_equal(held[1], self.frac):
            frac = np.asarray(self.frac)
            held = self._slots = (self.table, frac.copy(), self.table.slots(frac))
        return held[2]

    def integer(self) -> bool:
        """True when every (rounded) offset is 0: S_j is the identity."""
        xp = get_array_module(self.frac)
        return not bool(xp.any(quantise(self.frac, self.table.steps) != 0))

    @property
    def n_views(self) -> int:
        return int(self.amplitudes.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.amplitudes.shape[1]), int(self.amplitudes.shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes of the chunk's amplitudes, positions, exit waves, S_j P (not the table)."""
        total = self.amplitudes.nbytes + self.corners.nbytes + self.frac.nbytes
        total += self.exit_waves.nbytes + (0 if self._views is None else self._views[3].nbytes)
        total += 0 if self.spectra is None else self.spectra[1].nbytes
        return int(total + (self.good.nbytes if self.good is not None else 0))


def shifted_probe(
    chunk: ViewChunk, probe: Array, rotation: Array | None = None, batch_size: int = 64
) -> Array | None:
    """S_j P of every view (N, M_P, H, W), gathered from the rows of ``chunk.table`` (made or
    rotated there when the probe changed; ``rotation`` : the mode rotation that may have turned
    the held probe into ``probe``), kept while the rows are the same: one copy per probe, not
    per sweep. The (1, M_P, H, W) probe itself when every offset is 0. Read-only. None on CuPy
    (GPU memory is planned without the table; each batch shifts the probe, :func:`batch_probe`)."""
    if chunk.integer():
        return probe[None]
    if get_array_module(probe) is not np:
        return None
    slots = chunk.slots()  # the table has rows for the chunk's offsets
    rows = chunk.table.get(probe, rotation, batch_size)
    held, table, shape = chunk._views, chunk.table, (len(slots), *rows.shape[1:])
    if held is None or held[0] is not table or held[1] != table.version or held[2] is not slots:
        out = None if held is None else held[3]
        if out is None or out.shape != shape or out.dtype != rows.dtype:
            out = empty_aligned(shape, rows.dtype)
        out = np.take(rows, slots, axis=0, out=out, mode="clip")  # "raise" buffers: 4x slower
        held = chunk._views = (table, table.version, slots, out)
    return held[3]


def batch_probe(chunk: ViewChunk, views: Array | None, sl: slice, probe: Array) -> Array:
    """S_j P for the views ``sl`` (n or 1, M_P, H, W): from :func:`shifted_probe`'s array, or
    computed."""
    if views is None:
        return chunk.shifter(sl, probe.dtype).shift(probe)
    return views if views.shape[0] == 1 else views[sl]


def current_views(chunk: ViewChunk, sl: slice, probe: Array, obj: Array) -> Array:
    """phi for the views ``sl`` of a chunk: (n, M_P, M_O, H, W) complex (eq. 2).

    S_j P comes from the chunk's table when it holds this probe, else it is computed for the
    views ``sl`` alone (the table is left as it is)."""
    held = None if chunk.integer() else chunk.table.lookup(probe)
    shifted = chunk.shifter(sl, probe.dtype).shift(probe) if held is None else None
    shifted = gather_rows(held, chunk.slots()[sl]) if shifted is None else shifted
    obj_views = extract_views(obj, chunk.corners[sl], chunk.frame_shape)
    return exit_waves(shifted, obj_views)


def model_error(chunk: ViewChunk, probe: Array, obj: Array, batch_size: int = 64) -> FourierError:
    """Fourier error terms of the model P O itself (not of psi) over the chunk's views:
    sum_q (sqrt(I_j) - |F phi_j|)^2 and sum_q I_j on good pixels (docs/design.md, "Step 5").

    probe : (M_P, H, W), obj : (M_O, Y, X). psi is not touched.
    """
    total = FourierError(0.0, 0.0)
    shifted_probe(chunk, probe, batch_size=batch_size)
    for sl in batch_slices(chunk.n_views, batch_size):
        spectrum = fft2(current_views(chunk, sl, probe, obj), overwrite=True)
        total = total + fourier_error(spectrum, chunk.amplitudes[sl], chunk.good)
    return total


def make_chunk(
    amplitudes: Array,
    good: Array | None,
    origins: Array,
    probe: Array,
    obj: Array,
    batch_size: int = 64,
    subpixel: str = "fourier",
    first: int = 0,
    table: ShiftTable | None = None,
) -> ViewChunk:
    """Build a chunk whose exit waves start at the current views, psi = phi = P O.

    amplitudes : (N, H, W) real, centred like the detector frames (stored in FFT order); origins
    : (N, 2) float view corners in object pixels; probe : (M_P, H, W); obj : (M_O, Y, X).
    subpixel : the sub-pixel method (``"fourier"``; kept with the chunk for the record).
    first : index in the scan of the first view (:attr:`ViewChunk.first`).
    table : the :class:`~ptychograph.shifted_probe.ShiftTable` to share (a new one if None).
    """
    xp = get_array_module(amplitudes, probe)
    corners = xp.floor(origins).astype(xp.int64)
    frac = (origins - corners).astype(amplitudes.dtype)
    n_views = amplitudes.shape[0]
    shape = (n_views, probe.shape[0], obj.shape[0], *amplitudes.shape[1:])
    psi = empty_aligned(shape, probe.dtype) if xp is np else xp.empty(shape, probe.dtype)
    amplitudes = xp.ascontiguousarray(xp.fft.ifftshift(amplitudes, axes=(-2, -1)))
    if good is not None:
        good = xp.ascontiguousarray(xp.fft.ifftshift(good, axes=(-2, -1)))
    chunk = ViewChunk(amplitudes, good, corners, frac, psi, subpixel, first)
    if table is not None:
        chunk.table = table
    reset_exit_waves(chunk, probe, obj, batch_size)
    return chunk


def reset_exit_waves(chunk: ViewChunk, probe: Array, obj: Array, batch_size: int = 64) -> None:
    """Set psi = phi = P O for every view of the chunk, in place (start or recovery)."""
    chunk.spectra = None
    shifted_probe(chunk, probe, batch_size=batch_size)
    for sl in batch_slices(chunk.n_views, batch_size):
        chunk.exit_waves[sl] = current_views(chunk, sl, probe, obj)


def update_views(
    chunk: ViewChunk,
    probe: Array,
    obj: Array,
    beta: float,
    batch_size: int = 64,
    rotation: Array | None = None,
    noise_bound: float = 0.0,
    with_object_partials: bool = True,
    *,
    ops: BatchOps | None = None,
) -> tuple[FourierError, OverlapPartials | None]:
    """One DM exit-wave update (eqs. 3-4) of every view in the chunk, in place, fused with the
    first :func:`object_partials` of the iteration.

    probe : (M_P, H, W), obj : (M_O, Y, X), the current estimates. rotation : (M_P, M_P), a
    probe-mode rotation the probe has had since the last update, or None; the batch ops apply it
    to psi (first, or within the fused kernels) so that psi stays consistent with the modes.
    noise_bound : Fourier-constraint relaxation (:func:`~ptychograph.fourier.modulus_constraint`).
    Fused with the object update (same probe): psi is read once, while hot in cache, and a
    worker answers one task with the error and the object partials. ops : the batch ops
    (:func:`ptychograph.ops.select_ops`); None is :class:`NumpyOps`. With the CPU kernels F psi
    is kept in ``chunk.spectra`` where memory allows (one FFT less per view and mode). Returns
    the Fourier error terms and (if ``with_object_partials``) the eq. 6 partials."""
    batch_ops = _ops(ops)
    xp = get_array_module(probe)
    obj_shape = (int(obj.shape[1]), int(obj.shape[2]))
    shifted = shifted_probe(chunk, probe, rotation, batch_size)
    held, chunk.spectra = chunk.spectra, None  # stale until every batch is updated
    fresh = held is not None and held[0] is chunk.exit_waves
    spectra = held[1] if fresh and held is not None else spectra_buffer(batch_ops, chunk.exit_waves)

    def work(batches: list[slice]) -> tuple[FourierError, OverlapPartials | None]:
        sums = None
        if with_object_partials:
            sums = _zero_partials(xp, (obj.shape[0], *obj_shape), probe.dtype, chunk)
        error = FourierError(0.0, 0.0)
        for sl in batches:
            obj_views = extract_views(obj, chunk.corners[sl], chunk.frame_shape)
            error = error + batch_ops.exit_wave_update(
                chunk.exit_waves[sl],
                batch_probe(chunk, shifted, sl, probe),
                obj_views,
                chunk.corners[sl],
                chunk.amplitudes[sl],
                chunk.good,
                beta,
                noise_bound,
                sums,
                rotation,
                None if spectra is None else (spectra[sl], fresh),
            )
        return error, sums

    parts = _in_threads(work, chunk.n_views, batch_size, xp)
    chunk.spectra = None if spectra is None else (chunk.exit_waves, spectra)
    error = sum((p[0] for p in parts[1:]), parts[0][0])
    if not with_object_partials:
        return error, None
    return error, _sum_parts([p[1] for p in parts])


def object_partials(
    chunk: ViewChunk,
    probe: Array,
    obj_shape: tuple[int, int],
    batch_size: int = 64,
    *,
    ops: BatchOps | None = None,
) -> OverlapPartials:
    """Eq. 6 partial sums over the chunk's views.

    numerator[l] = sum_{k,j} E_j^H( conj(S_j P^(k)) psi_j^(k,l) )  : (M_O, Y, X) complex
    denominator  = sum_{k,j} E_j^H( |S_j P^(k)|^2 )                 : (Y, X) real
    ops : the batch ops; None is :class:`NumpyOps`.
    """
    batch_ops = _ops(ops)
    xp = get_array_module(probe)
    n_obj_modes = chunk.exit_waves.shape[2]
    shifted = shifted_probe(chunk, probe, batch_size=batch_size)

    def work(batches: list[slice]) -> OverlapPartials:
        sums = _zero_partials(xp, (n_obj_modes, *obj_shape), probe.dtype, chunk)
        for sl in batches:
            views = batch_probe(chunk, shifted, sl, probe)
            batch_ops.object_partials(chunk.exit_waves[sl], views, chunk.corners[sl], sums)
        return sums

    return _sum_parts(_in_threads(work, chunk.n_views, batch_size, xp))


def probe_partials(
    chunk: ViewChunk,
    obj: Array,
    probe: Array,
    batch_size: int = 64,
    *,
    ops: BatchOps | None = None,
) -> OverlapPartials:
    """Eq. 5 partial sums over the chunk's views, in residual form.

    numerator[k] = sum_{l,j} S_j^H( conj(O_j^(l)) (psi_j^(k,l) - O_j^(l) S_j P^(k)) ) : (M_P, H, W)
    denominator  = sum_{l,j} |O_j^(l)|^2                                              : (H, W)
    with O_j^(l) = E_j O^(l). The update is P <- P + numerator / denominator
    (:func:`~ptychograph.partials.regularised_step`): for integer positions (S_j = 1) this is
    exactly eq. 5, and with sub-pixel shifts it is the diagonally preconditioned least-squares
    step whose fixed point is the exact least-squares probe (the plain ratio would be biased by
    the shifts and lets the probe drift). ops : the batch ops; None is :class:`NumpyOps`.
    """
    batch_ops = _ops(ops)
    xp = get_array_module(obj)
    n_probe_modes = chunk.exit_waves.shape[1]
    shifted = shifted_probe(chunk, probe, batch_size=batch_size)
    binned = shifted is not None and shifted.shape[0] > 1
    used, bins = chunk.table.bins(chunk.slots()) if binned else (None, None)
    shape = (n_probe_modes,) if used is None else (len(used), n_probe_modes)

    def work(batches: list[slice]) -> OverlapPartials:
        sums = _zero_partials(xp, (*shape, *chunk.frame_shape), obj.dtype, chunk)
        for sl in batches:
            obj_views = extract_views(obj, chunk.corners[sl], chunk.frame_shape)
            batch_ops.probe_partials(
                chunk.exit_waves[sl],
                batch_probe(chunk, shifted, sl, probe),
                obj_views,
                None if bins is not None else chunk.shifter(sl, obj.dtype).ramps,
                sums,
                bins=None if bins is None else bins[sl],
            )
        return sums

    total = _sum_parts(_in_threads(work, chunk.n_views, batch_size, xp))
    if used is None:
        return total
    return OverlapPartials(chunk.table.sum_adjoint(total.numerator, used), total.denominator)


def _ops(ops: BatchOps | None) -> BatchOps:
    return NumpyOps() if ops is None else ops


def _zero_partials(
    xp: Any, numerator_shape: tuple[int, ...], dtype: Any, chunk: ViewChunk
) -> OverlapPartials:
    """Zero sums to add batches into: the numerator in ``dtype``, the denominator (the
    numerator's last two axes) in the chunk's real dtype."""
    numerator = xp.zeros(numerator_shape, dtype=dtype)
    return OverlapPartials(numerator, xp.zeros(numerator_shape[-2:], dtype=chunk.amplitudes.dtype))


def _sum_parts(parts: list[Any]) -> OverlapPartials:
    """The threads' partials added in thread order (the result does not depend on timing)."""
    return reduce(operator.add, parts)


def _in_threads(
    work: Callable[[list[slice]], T], n_views: int, batch_size: int, xp: Any
) -> list[T]:
    """Run ``work`` over the chunk's batches, split between CPU threads: on NumPy dealt
    round-robin to ``backend.fft_workers()`` threads (NumPy and the FFTs release the GIL), each
    thread's FFTs on one worker, each thread with its own partial sums (added by the caller in
    thread order: no dependence on timing); on CuPy (one stream) all in order in one call."""
    batches = list(batch_slices(n_views, batch_size))
    threads = min(fft_workers(), len(batches)) if xp is np else 1
    if threads <= 1:
        return [work(batches)]
    groups = [batches[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda group: single_fft_worker(work, group), groups))

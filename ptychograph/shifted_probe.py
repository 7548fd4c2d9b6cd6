"""The shifted probe S_j P on a grid of sub-pixel offsets, kept until the probe changes.

S_j P^(k) (:class:`~ptychograph.operators.SubpixelShift`) is the probe moved by view j's
sub-pixel offset with a Fourier phase ramp: an inverse FFT per view and mode, and the adjoint
S_j^H of the probe pass a forward FFT per view and mode - together more FFTs than the exit-wave
update itself (benchmarks/RESULTS.md). But the offsets need not be exact to far below the
accuracy of any scan position: with the offsets rounded to a grid of 1/``steps`` pixel
(:func:`quantise`, :data:`SUBPIXEL_STEPS` = 8 by default: 1/16 px at most), the views share
at most (steps + 1)^2 = 81 distinct shifts, whatever their number. So :class:`ShiftTable` holds
S_s P for each distinct shift s in use on a worker (its views look their rows up), made again
only when the probe changes (docs/design.md, "Cost on CPU"):

* the forward S_j P is a gather of table rows (no FFT), once per probe
  (:func:`ptychograph.views.shifted_probe` keeps it with the chunk for the sweeps);
* the adjoint sum_j S_j^H t_j = sum_s S_s^H (sum_{j in s} t_j): the terms are added per shift
  and each shift's sum is transformed once (:meth:`ShiftTable.sum_adjoint`);
* a probe rotated by the orthogonalisation (P' = R P) rotates the rows (S_s is linear and acts
  on each mode alone), a small matrix product instead of the FFTs.

On simulated noise-free data (256 views of 64^2, 150 DM iterations) the rounding to 1/8 px
leaves a Fourier error of 7e-6 (1/16 px: 2e-6) where exact offsets reach 0 and integer
positions 6e-4 - far below the noise of measured data (1e-3 and more; docs/design.md, "Cost on
CPU"); ``steps = 0`` keeps the exact offsets (one row per distinct offset).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ptychograph.backend import Array, empty_aligned, fft2, get_array_module, ifft2, real_dtype
from ptychograph.operators import phase_ramps

#: Sub-pixel offsets are rounded to 1/SUBPIXEL_STEPS pixel (0: exact).
SUBPIXEL_STEPS = 8

#: Rotations applied to the table before it is made afresh (bounds the round-off drift).
MAX_ROTATIONS = 8


def quantise(frac: Array, steps: int) -> Array:
    """Offsets rounded to multiples of 1/steps (``frac`` itself for steps = 0): (N, 2) real in
    [0, 1] (an offset that rounds to 1 is a whole-pixel Fourier shift)."""
    if steps <= 0:
        return frac
    xp = get_array_module(frac)
    return (xp.rint(frac * steps) / steps).astype(frac.dtype)


@dataclass
class ShiftTable:
    """S_s P for every distinct (rounded) offset s in use, shared by the chunks of one worker.

    offsets : (S, 2) the distinct offsets, in the order rows were added (a row keeps its index
    while the table lives); rows : (S, M_P, H, W) S_s P; probe : the probe they were made from.
    made / rotated count full computations and rotations (for tests and profiles); version
    changes whenever the rows do (a chunk's gathered S_j P is kept for one version).
    Thread-safe: the calls that change the table hold a lock.
    """

    steps: int = SUBPIXEL_STEPS
    probe: Array | None = field(default=None, repr=False)
    offsets: Array | None = field(default=None, repr=False)
    rows: Array | None = field(default=None, repr=False)
    rotations: int = 0
    made: int = 0
    rotated: int = 0
    version: int = 0
    _index: dict[tuple[float, float], int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def slots(self, frac: Array) -> Array:
        """(N,) int64 row of each view's rounded offset, adding rows for new offsets (made from
        the held probe when there is one)."""
        rounded = np.asarray(quantise(frac, self.steps))
        with self._lock:
            keys = [tuple(pair) for pair in rounded.tolist()]
            new = sorted({k for k in keys if k not in self._index})
            if new:
                self._add_rows(np.asarray(new, dtype=rounded.dtype))
            return np.fromiter((self._index[k] for k in keys), np.int64, len(keys))

    def get(self, probe: Array, rotation: Array | None = None, batch_size: int = 64) -> Array:
        """The rows S_s P for ``probe`` (M_P, H, W): held, rotated by ``rotation`` (M_P, M_P)
        when the held probe times it is ``probe`` to round-off, or made afresh. The array is
        owned by the table and must not be written to."""
        with self._lock:
            assert self.offsets is not None, "slots() first"
            if self.rows is not None and _same(self.probe, probe):
                return self.rows
            if (
                rotation is not None
                and self.rows is not None
                and self.rotations < MAX_ROTATIONS
                and _is_rotation_of(probe, self.probe, rotation)
            ):
                _rotate_in_place(self.rows, rotation.astype(self.rows.dtype), batch_size)
                self.rotations += 1
                self.rotated += 1
            else:
                self.rows = shift_all(probe, self.offsets, batch_size, self.rows)
                self.rotations = 0
                self.made += 1
            self.probe = probe.copy()
            self.version += 1
            return self.rows

    def lookup(self, probe: Array) -> Array | None:
        """The rows if they are held for exactly this probe, else None."""
        with self._lock:
            return self.rows if self.rows is not None and _same(self.probe, probe) else None

    def sum_adjoint(self, sums: Array, rows: Array) -> Array:
        """sum_s S_s^H sums[i] over the table rows ``rows`` (n,) of ``sums`` (n, M, H, W):
        one forward FFT per row and mode, one inverse in all. Returns (M, H, W); ``sums`` is
        overwritten."""
        assert self.offsets is not None
        ramps = phase_ramps(self.offsets[rows], sums.shape[-2:], sums.dtype)
        if ramps is None:
            return sums.sum(axis=0)
        spectrum = fft2(sums, overwrite=True)
        ramp_y, ramp_x = ramps
        spectrum *= np.conj(ramp_y * ramp_x)[:, None]
        return ifft2(spectrum.sum(axis=0), overwrite=True)

    def bins(self, slots: Array) -> tuple[Array | None, Array | None]:
        """For the adjoint of views at rows ``slots`` (N,): the rows used (S',) and each
        view's index among them (N,), when adding the terms per row and transforming each
        row's sum once (:meth:`sum_adjoint`) pays: at most a quarter as many rows as views
        (the per-thread row sums cost memory traffic too; measured, docs/design.md); else
        (None, None): each batch applies S_j^H itself."""
        used, bins = np.unique(slots, return_inverse=True)
        if (
            self.offsets is None
            or len(used) == 0
            or 4 * len(used) > len(slots)
            or not np.any(self.offsets[used])
        ):
            return None, None
        return used, bins.reshape(-1)

    @property
    def nbytes(self) -> int:
        return 0 if self.rows is None else int(self.rows.nbytes)

    def _add_rows(self, new: Array) -> None:
        start = 0 if self.offsets is None else len(self.offsets)
        for i, key in enumerate(new.tolist()):
            self._index[tuple(key)] = start + i
        self.offsets = new if self.offsets is None else np.concatenate([self.offsets, new])
        if self.rows is None or self.probe is None:
            self.rows = None
            return
        added = shift_all(self.probe, new, 64)
        self.rows = np.concatenate([self.rows, added])
        self.version += 1


def gather_rows(rows: Array, slots: Array) -> Array:
    """rows[slots] into an array aligned for the FFT: (S, M, H, W), (n,) -> (n, M, H, W)."""
    out = empty_aligned((len(slots), *rows.shape[1:]), rows.dtype)
    return np.take(rows, slots, axis=0, out=out)


def shift_all(probe: Array, frac: Array, batch_size: int, out: Array | None = None) -> Array:
    """S_j P for every offset: one FFT of the probe, then a ramp and an inverse FFT per batch.

    probe : (M_P, H, W); frac : (N, 2). Returns (N, M_P, H, W), written into ``out`` when it
    has that shape and dtype.
    """
    xp = get_array_module(probe)
    n_views = int(frac.shape[0])
    shape = (n_views, *probe.shape)
    if out is None or out.shape != shape or out.dtype != probe.dtype:
        out = empty_aligned(shape, probe.dtype) if xp is np else xp.empty(shape, probe.dtype)
    spectrum = fft2(probe)
    frame = (int(probe.shape[1]), int(probe.shape[2]))
    for sl in batch_slices(n_views, batch_size):
        ramps = phase_ramps(frac[sl], frame, probe.dtype)
        if ramps is None:
            out[sl] = probe[None]
            continue
        ramp_y, ramp_x = ramps
        shifted = empty_aligned(out[sl].shape, out.dtype) if xp is np else None
        shifted = xp.multiply(spectrum[None], (ramp_y * ramp_x)[:, None], out=shifted)
        out[sl] = ifft2(shifted, overwrite=True)
    return out


def _same(held: Array | None, new: Array) -> bool:
    xp = get_array_module(new)
    return (
        held is not None
        and held.shape == new.shape
        and held.dtype == new.dtype
        and bool(xp.array_equal(held, new))
    )


def _is_rotation_of(probe: Array, held: Array | None, rotation: Array) -> bool:
    """True when probe = rotation @ held (over the mode axis) to a few units of round-off."""
    if held is None or held.shape != probe.shape or rotation.shape != (len(held), len(held)):
        return False
    xp = get_array_module(probe)
    modes = held.shape[0]
    expected = (rotation.astype(held.dtype) @ held.reshape(modes, -1)).reshape(held.shape)
    scale = float(xp.abs(probe).max())
    eps = float(np.finfo(real_dtype(probe.dtype)).eps)
    return float(xp.abs(expected - probe).max()) <= 16 * modes * eps * scale


def _rotate_in_place(rows: Array, rotation: Array, batch_size: int) -> None:
    """rows[s] <- rotation @ rows[s] over the mode axis: (S, M, H, W), batch by batch."""
    xp = get_array_module(rows)
    for sl in batch_slices(int(rows.shape[0]), batch_size):
        rows[sl] = xp.moveaxis(xp.tensordot(rotation, rows[sl], axes=([1], [1])), 0, 1)


def batch_slices(n_views: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` of ``n_views`` views."""
    for start in range(0, n_views, batch_size):
        yield slice(start, min(start + batch_size, n_views))

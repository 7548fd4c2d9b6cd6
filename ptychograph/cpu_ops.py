"""The batch ops of :mod:`ptychograph.ops` rewritten for NumPy on CPU: fewer passes over memory.

:class:`CpuOps` computes what :class:`ptychograph.ops.NumpyOps` (the one NumPy reference)
computes, to round-off (tests/test_kernels.py checks both against the equations and each other
on random inputs); only the order of the element-wise work differs. Away from its FFTs a CPU
iteration is bound by memory traffic, and the reference's broadcast reductions write psi-sized
temporaries read once; here the mode sums accumulate mode by mode into one frame-sized buffer
per view, mode powers come from ``abs`` and the DM update and probe terms work frame by frame in
preallocated buffers. With numba (the ``numba`` extra), unless ``PTYCHOGRAPH_NUMBA=0`` (or
``CpuOps(fused=False)``), that work runs in the kernels of :mod:`ptychograph.cpu_fused`
(:func:`fused_kernels`), which also keep F psi between updates (:func:`spectra_buffer`). Shapes
and equations: :mod:`ptychograph.ops`; docs/design.md, "One DM iteration", "Cost on CPU".
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from types import ModuleType

import numpy as np
import psutil

from ptychograph.backend import Array, empty_aligned, fft2, ifft2
from ptychograph.fourier import fourier_error, modulus_constraint
from ptychograph.operators import add_binned, insert_views, rotate_modes
from ptychograph.partials import FourierError, OverlapPartials


class CpuOps:
    """NumPy batch ops with fewer temporaries (NumPy arrays only; CuPy has
    :class:`ptychograph.gpu.ops.CupyOps`). The methods of :class:`ptychograph.ops.BatchOps`."""

    name = "numpy"

    def __init__(self, fused: bool | None = None) -> None:
        """fused : use :mod:`ptychograph.cpu_fused` (True: required; None: as
        :func:`fused_kernels` says; False: the NumPy code)."""
        kernels = None if fused is False else fused_kernels() if fused is None else _kernels()
        if fused and kernels is None:
            raise ImportError("CpuOps(fused=True) needs numba (pip install ptychograph[numba])")
        self.kernels = kernels

    def exit_wave_update(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        corners: Array,
        amplitudes: Array,
        good: Array | None,
        beta: float,
        noise_bound: float = 0.0,
        out: OverlapPartials | None = None,
        rotation: Array | None = None,
        spectra: tuple[Array, bool] | None = None,
    ) -> FourierError:
        """See :meth:`ptychograph.ops.BatchOps.exit_wave_update`, in sub-batches of
        :data:`SUB_BATCH` views (:meth:`_exit_wave_update`); ``spectra`` (buffer, fresh): the
        buffer of :func:`spectra_buffer` for the views, holding F psi if fresh, or None."""
        error = FourierError(0.0, 0.0)
        for sl in _sub_batches(exit_waves.shape[0]):
            error = error + self._exit_wave_update(
                exit_waves[sl],
                _part(probe_views, sl),
                obj_views[sl],
                corners[sl],
                amplitudes[sl],
                good,
                beta,
                noise_bound,
                out,
                rotation,
                None if spectra is None else (spectra[0][sl], spectra[1]),
            )
        return error

    def object_partials(
        self, exit_waves: Array, probe_views: Array, corners: Array, out: OverlapPartials
    ) -> OverlapPartials:
        """See :meth:`ptychograph.ops.BatchOps.object_partials`, in sub-batches."""
        for sl in _sub_batches(exit_waves.shape[0]):
            self._object_partials(exit_waves[sl], _part(probe_views, sl), corners[sl], out)
        return out

    def probe_partials(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        ramps: tuple[Array, Array] | None,
        out: OverlapPartials,
        bins: Array | None = None,
    ) -> OverlapPartials:
        """See :meth:`ptychograph.ops.BatchOps.probe_partials`, in sub-batches."""
        for sl in _sub_batches(exit_waves.shape[0]):
            self._probe_partials(
                exit_waves[sl],
                _part(probe_views, sl),
                obj_views[sl],
                None if ramps is None else (ramps[0][sl], ramps[1][sl]),
                out,
                None if bins is None else bins[sl],
            )
        return out

    def _exit_wave_update(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        corners: Array,
        amplitudes: Array,
        good: Array | None,
        beta: float,
        noise_bound: float = 0.0,
        out: OverlapPartials | None = None,
        rotation: Array | None = None,
        spectra: tuple[Array, bool] | None = None,
    ) -> FourierError:
        """See :meth:`ptychograph.ops.BatchOps.exit_wave_update`: phi, F phi (its mode power
        gives the error), X = 2 F phi - F psi in F psi's buffer, F_c X, and
        psi += beta (F^-1 F_c X - phi), after psi <- R psi given a ``rotation`` R. The kernels
        form X = 2 F phi - R F psi (F R psi = R F psi) and, as R F psi = 2 F phi - X, the new psi
        as (2 - beta) phi + F^-1[beta F_c X - X]: neither rotating nor reading the old psi.
        Given ``spectra`` (kernels only), F psi is read from it when fresh instead of
        transformed, and the new F psi = (2 - beta) F phi + beta F_c X - X is written to it."""
        views = _form_views(probe_views, obj_views)
        model = fft2(views)
        if self.kernels is not None:
            cache, fresh = (None, False) if spectra is None else spectra
            spectrum = empty_aligned(model.shape, model.dtype) if fresh else fft2(exit_waves)
            source = cache if fresh else None
            error = FourierError(
                *self.kernels.fourier_step(
                    model, spectrum, amplitudes, good, noise_bound, rotation, beta, source, cache
                )
            )
            del model
            projected = ifft2(spectrum, overwrite=True)
            self.kernels.update_object_terms(
                exit_waves,
                projected,
                views,
                beta,
                probe_views,
                corners,
                None if out is None else out.numerator,
                None if out is None else out.denominator,
            )
            return error
        if rotation is not None:
            rotate_modes(exit_waves, rotation, in_place=True)
        error = fourier_error(model, amplitudes, good, power=mode_power(model))
        spectrum = fft2(exit_waves)
        model *= 2
        np.subtract(model, spectrum, out=spectrum)
        del model
        spectrum = modulus_constraint(
            spectrum, amplitudes, good, noise_bound, power=mode_power(spectrum)
        )
        projected = ifft2(spectrum, overwrite=True)
        np.subtract(projected, views, out=projected)
        projected *= beta
        exit_waves += projected
        if out is not None:
            self._object_partials(exit_waves, probe_views, corners, out)
        return error

    def _object_partials(
        self, exit_waves: Array, probe_views: Array, corners: Array, out: OverlapPartials
    ) -> OverlapPartials:
        """See :meth:`ptychograph.ops.BatchOps.object_partials`."""
        if self.kernels is not None:
            self.kernels.update_object_terms(
                exit_waves, None, None, 0.0, probe_views, corners, out.numerator, out.denominator
            )
            return out
        obj_shape = tuple(out.denominator.shape)
        conj_probe = np.conj(probe_views)
        numerator = _mode_sum(conj_probe, exit_waves)  # (n, M_O, H, W)
        power = mode_power(probe_views, axes=1)  # (n or 1, H, W)
        power = np.broadcast_to(power, (exit_waves.shape[0], *power.shape[1:]))[:, None]
        np.add(out.numerator, insert_views(numerator, corners, obj_shape), out=out.numerator)
        denominator = insert_views(power, corners, obj_shape)[0]
        np.add(out.denominator, denominator, out=out.denominator)
        return out

    def _probe_partials(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        ramps: tuple[Array, Array] | None,
        out: OverlapPartials,
        bins: Array | None = None,
    ) -> OverlapPartials:
        """See :meth:`ptychograph.ops.BatchOps.probe_partials`: the terms
        sum_l conj(O_l) (psi_kl - O_l S_j P_k) formed frame by frame, without psi-sized
        temporaries."""
        n_views, n_probe, n_obj = exit_waves.shape[:3]
        if self.kernels is not None:
            self._fused_probe_partials(exit_waves, probe_views, obj_views, ramps, out, bins)
            return out
        conj_obj = np.conj(obj_views)  # (n, M_O, H, W)
        terms = empty_aligned((n_views, n_probe, *exit_waves.shape[-2:]), exit_waves.dtype)
        scratch = np.empty((n_views, *exit_waves.shape[-2:]), exit_waves.dtype)
        probe = np.broadcast_to(probe_views, (n_views, *probe_views.shape[1:]))
        for k in range(n_probe):
            term = terms[:, k]
            for mode in range(n_obj):
                residual = term if mode == 0 else scratch
                np.multiply(probe[:, k], obj_views[:, mode], out=residual)
                np.subtract(exit_waves[:, k, mode], residual, out=residual)
                residual *= conj_obj[:, mode]
                if mode > 0:
                    term += scratch
        if bins is not None:
            add_binned(out.numerator, bins, terms)
        else:
            np.add(out.numerator, _sum_unshifted(terms, ramps), out=out.numerator)
        obj_power = mode_power(obj_views, axes=1)  # (n, H, W)
        np.add(out.denominator, obj_power.sum(axis=0), out=out.denominator)
        return out

    def _fused_probe_partials(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        ramps: tuple[Array, Array] | None,
        out: OverlapPartials,
        bins: Array | None,
    ) -> None:
        """:meth:`_probe_partials` with :func:`ptychograph.cpu_fused.probe_terms`: the terms
        added straight into their bin (or into the one numerator without shifts)."""
        kernels = self.kernels
        assert kernels is not None
        if bins is None and ramps is None:
            rows = np.zeros(exit_waves.shape[0], np.int64)
            kernels.probe_terms(
                exit_waves, probe_views, obj_views, out.numerator[None], rows, out.denominator
            )
        elif bins is not None:
            kernels.probe_terms(
                exit_waves, probe_views, obj_views, out.numerator, bins, out.denominator
            )
        else:
            shape = (exit_waves.shape[0], *out.numerator.shape)
            terms = empty_aligned(shape, exit_waves.dtype)
            kernels.probe_terms(exit_waves, probe_views, obj_views, terms, None, out.denominator)
            np.add(out.numerator, _sum_unshifted(terms, ramps), out=out.numerator)


#: Views per sub-batch: a batch's passes and FFTs run on this many views at a time, hot in the
#: CPU caches (10 % less CPU time than 64 at 512 x 128^2, 3 modes; benchmarks/RESULTS.md).
SUB_BATCH = 16

#: Largest share of the memory available when a chunk's first update runs that its kept F psi
#: (the size of its psi) may take; beyond it the chunk transforms psi each update instead.
SPECTRA_FRACTION = 0.25
#: A Dask worker's share of its memory limit in all with them (it spills from 0.6, pauses at 0.8).
WORKER_FRACTION = 0.6

#: Whether CpuOps uses the numba kernels when ``PTYCHOGRAPH_NUMBA`` is unset (and numba is
#: installed). Results as NumpyOps' to round-off (tests/test_cpu_fused.py), which DM amplifies
#: (double precision: 1e-15 after 3 iterations, 2e-10 after 30): runs sensitive to it differ as
#: NumPy runs with other thread counts would (position correction, tests/test_positions.py).
FUSED_BY_DEFAULT = True


@functools.cache
def fused_kernels() -> ModuleType | None:
    """:mod:`ptychograph.cpu_fused` when numba is importable and ``PTYCHOGRAPH_NUMBA`` is ``1``
    (unset: as :data:`FUSED_BY_DEFAULT` says), else None (imported on first use:
    ``import ptychograph`` does not load numba)."""
    if os.environ.get("PTYCHOGRAPH_NUMBA", "1" if FUSED_BY_DEFAULT else "0") != "1":
        return None
    return _kernels()


def _kernels() -> ModuleType | None:
    """:mod:`ptychograph.cpu_fused`, or None without numba."""
    try:
        return importlib.import_module("ptychograph.cpu_fused")
    except ImportError:
        return None


def spectra_buffer(ops: object, exit_waves: Array) -> Array | None:
    """An uninitialised array like ``exit_waves`` ((N, M_P, M_O, H, W)) for the F psi that the
    fused kernels keep between updates, or None: not ``CpuOps`` with kernels, turned off
    (``PTYCHOGRAPH_SPECTRA=0``), more than :data:`SPECTRA_FRACTION` of the memory available
    now, or (in a Dask worker) beyond :func:`_worker_room` (docs/design.md, "Cost on CPU")."""
    if not isinstance(ops, CpuOps) or ops.kernels is None or not isinstance(exit_waves, np.ndarray):
        return None
    if os.environ.get("PTYCHOGRAPH_SPECTRA", "1") != "1":
        return None
    if exit_waves.nbytes > SPECTRA_FRACTION * psutil.virtual_memory().available:
        return None
    if exit_waves.nbytes > _worker_room():
        return None
    return empty_aligned(exit_waves.shape, exit_waves.dtype)


def _worker_room() -> float:
    """Bytes a Dask worker may still take: :data:`WORKER_FRACTION` of its memory limit less
    what the process holds now (infinite outside a worker or without a limit), so that kept
    spectra never push a worker towards Dask's pause and kill thresholds."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return math.inf
    if not limit:
        return math.inf
    return WORKER_FRACTION * float(limit) - psutil.Process().memory_info().rss


def _sub_batches(n_views: int) -> list[slice]:
    return [slice(i, min(i + SUB_BATCH, n_views)) for i in range(0, n_views, SUB_BATCH)]


def _part(probe_views: Array, sl: slice) -> Array:
    """S_j P of the views ``sl``: (n or 1, M_P, H, W) -> (len or 1, M_P, H, W)."""
    return probe_views if probe_views.shape[0] == 1 else probe_views[sl]


def mode_power(spectrum: Array, axes: int | tuple[int, ...] = (1, 2)) -> Array:
    """sum over the mode ``axes`` of |x|^2, accumulated mode by mode: (N, ..., H, W) -> (N, H, W)
    real (with float overflow to inf for huge values, like the reference)."""
    axes = (axes,) if isinstance(axes, int) else axes
    moved = np.moveaxis(spectrum, axes, tuple(range(1, 1 + len(axes))))
    flat = moved.reshape(moved.shape[0], -1, *moved.shape[-2:])
    total = np.abs(flat[:, 0])
    with np.errstate(over="ignore"):
        total *= total
        scratch = np.empty_like(total)
        for mode in range(1, flat.shape[1]):
            np.abs(flat[:, mode], out=scratch)
            scratch *= scratch
            total += scratch
    return total


def _form_views(probe_views: Array, obj_views: Array) -> Array:
    """phi = (S_j P)(E_j O) (:func:`ptychograph.operators.exit_waves`) in an array aligned for
    the FFT: (n or 1, M_P, H, W), (n, M_O, H, W) -> (n, M_P, M_O, H, W)."""
    n_views, n_obj = obj_views.shape[:2]
    shape = (n_views, probe_views.shape[1], n_obj, *obj_views.shape[-2:])
    views = empty_aligned(shape, np.result_type(probe_views, obj_views))
    return np.multiply(probe_views[:, :, None], obj_views[:, None, :], out=views)


def _mode_sum(conj_probe: Array, exit_waves: Array) -> Array:
    """sum_k conj_probe[:, k] psi[:, k, l]: (n or 1, M_P, H, W), (n, M_P, M_O, H, W) ->
    (n, M_O, H, W)."""
    n_views, n_probe, n_obj = exit_waves.shape[:3]
    total = np.empty((n_views, n_obj, *exit_waves.shape[-2:]), exit_waves.dtype)
    scratch = np.empty_like(total)
    np.multiply(conj_probe[:, 0, None], exit_waves[:, 0], out=total)
    for k in range(1, n_probe):
        np.multiply(conj_probe[:, k, None], exit_waves[:, k], out=scratch)
        total += scratch
    return total


def _sum_unshifted(terms: Array, ramps: tuple[Array, Array] | None) -> Array:
    """sum_j S_j^H terms_j (:func:`ptychograph.operators.sum_unshifted`), transforming
    ``terms`` in place: (n, M, H, W) -> (M, H, W)."""
    if ramps is None:
        return terms.sum(axis=0)
    ramp_y, ramp_x = ramps
    spectrum = fft2(terms, overwrite=True)
    unramp = np.conj(ramp_y * ramp_x)[:, None]  # (n, 1, H, W)
    spectrum *= unramp
    return ifft2(spectrum.sum(axis=0), overwrite=True)

"""The per-batch bodies of a DM iteration behind named ops, one implementation per backend.

:mod:`ptychograph.views` owns a chunk's batching, threading and summing; for each batch of views
it gathers the shifted probe S_j P and the object views E_j O and calls one of the three methods
of :class:`BatchOps`. A worker picks its ops once (:func:`select_ops`); nothing else knows which
backend runs:

* :class:`NumpyOps` - the one NumPy reference of every batch step, written with the array module
  of its inputs (so it also runs, unfused, on CuPy arrays). The CUDA kernels are tested against
  it (tests/test_kernels.py).
* :class:`ptychograph.cpu_ops.CpuOps` - what a NumPy worker runs: NumpyOps' results with fewer
  temporaries (tested against NumpyOps).
* :class:`ptychograph.gpu.ops.CupyOps` - the same methods with the fused CUDA kernels of
  :mod:`ptychograph.gpu.kernels`; imported only when asked for, so ``import ptychograph`` needs
  neither CuPy nor a GPU.

Shapes, for a batch of ``n`` views with ``M_P`` probe and ``M_O`` object modes, frames H x W and
an object Y x X: exit waves psi : (n, M_P, M_O, H, W) complex (updated in place, so a C-contiguous
slice of the chunk's array); probe views S_j P : (n or 1, M_P, H, W) (1: one probe for every
view, integer positions); object views E_j O : (n, M_O, H, W); corners : (n, 2) int64;
amplitudes sqrt(I) : (n, H, W) real and the mask ``good`` : (H, W) bool or None, both in FFT
order (zero frequency at [0, 0]); ramps : the batch's sub-pixel phase ramps
(:attr:`ptychograph.operators.SubpixelShift.ramps`), None for integer positions.
The ``out`` partials are added into in place (their arrays; the value itself is frozen) and
returned. Equations: docs/design.md, "One DM iteration" (Dong et al., arXiv:1808.10375,
eqs. 2-6); the layer: docs/design.md, "Seams".
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ptychograph.backend import Array, get_array_module
from ptychograph.fourier import dm_exit_wave_update
from ptychograph.operators import add_binned, insert_views, rotate_modes, sum_unshifted
from ptychograph.operators import exit_waves as form_views
from ptychograph.partials import FourierError, OverlapPartials

BACKENDS = ("numpy", "cupy")


@runtime_checkable
class BatchOps(Protocol):
    """What a worker runs on one batch of its resident views."""

    name: str

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
        """Eqs. 3-4 in place: psi <- psi + beta (F^-1 F_c[2 phi - psi] - phi), phi = (S_j P)(E_j O).

        noise_bound : the relaxation of :func:`ptychograph.fourier.modulus_constraint`.
        rotation : (M_P, M_P) or None, a probe-mode rotation the probe has had since psi was
        last updated: psi <- rotation psi over the mode axis first
        (:func:`ptychograph.operators.rotate_modes`; the fused CPU kernels fold it in).
        Given ``out`` (object partials: numerator (M_O, Y, X), denominator (Y, X)), the eq. 6
        terms of the new psi are added into it, fused with the update (:meth:`object_partials`).
        spectra : (buffer, fresh) for the F psi that :class:`ptychograph.cpu_ops.CpuOps`'
        kernels keep between updates (:func:`ptychograph.cpu_ops.spectra_buffer`); other ops
        are never given one and ignore it. Returns the Fourier error terms of phi (before the
        update).
        """
        ...

    def object_partials(
        self, exit_waves: Array, probe_views: Array, corners: Array, out: OverlapPartials
    ) -> OverlapPartials:
        """Eq. 6 terms of the batch, added into ``out``:
        numerator[l] += sum_j E_j^H sum_k conj(S_j P^(k)) psi_j^(k,l) : (M_O, Y, X) complex,
        denominator  += sum_j E_j^H sum_k |S_j P^(k)|^2                : (Y, X) real.
        """
        ...

    def probe_partials(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        ramps: tuple[Array, Array] | None,
        out: OverlapPartials,
        bins: Array | None = None,
    ) -> OverlapPartials:
        """Eq. 5 terms of the batch in residual form, added into ``out``:
        numerator[k] += sum_j S_j^H sum_l conj(O_j^(l)) (psi_j^(k,l) - O_j^(l) S_j P^(k))
        : (M_P, H, W) complex; denominator += sum_{j,l} |O_j^(l)|^2 : (H, W) real,
        with O_j^(l) = E_j O^(l).

        bins : (n,) int, or None. Given, S_j^H is left to the caller (``ramps`` is None) and
        view j's terms are added into ``numerator[bins[j]]`` of a (B, M_P, H, W) numerator
        (the views that share a shift share a bin; :mod:`ptychograph.shifted_probe`).
        """
        ...


class NumpyOps:
    """The NumPy reference of every batch step (array-module generic, unfused)."""

    name = "numpy"

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
        """See :meth:`BatchOps.exit_wave_update`."""
        if rotation is not None:
            rotate_modes(exit_waves, rotation, in_place=True)
        views = form_views(probe_views, obj_views)
        error = dm_exit_wave_update(
            exit_waves, views, amplitudes, good, beta, noise_bound, centred=False
        )
        if out is not None:
            self.object_partials(exit_waves, probe_views, corners, out)
        return error

    def object_partials(
        self, exit_waves: Array, probe_views: Array, corners: Array, out: OverlapPartials
    ) -> OverlapPartials:
        """See :meth:`BatchOps.object_partials`."""
        xp = get_array_module(exit_waves)
        obj_shape = tuple(out.denominator.shape)
        numerator = xp.sum(xp.conj(probe_views)[:, :, None] * exit_waves, axis=1)
        power = xp.sum(probe_views.real**2 + probe_views.imag**2, axis=1)  # (n or 1, H, W)
        power = xp.broadcast_to(power, (exit_waves.shape[0], *power.shape[1:]))[:, None]
        _add_into(out.numerator, insert_views(numerator, corners, obj_shape))
        _add_into(out.denominator, insert_views(power, corners, obj_shape)[0])
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
        """See :meth:`BatchOps.probe_partials`."""
        xp = get_array_module(exit_waves)
        residual = exit_waves - form_views(probe_views, obj_views)
        terms = xp.sum(xp.conj(obj_views)[:, None] * residual, axis=2)  # (n, M_P, H, W)
        if bins is not None:
            add_binned(out.numerator, bins, terms)
        else:
            _add_into(out.numerator, sum_unshifted(terms, ramps))
        _add_into(out.denominator, xp.sum(obj_views.real**2 + obj_views.imag**2, axis=(0, 1)))
        return out


def select_ops(backend: str) -> BatchOps:
    """The batch ops of a backend: ``"numpy"`` -> :class:`ptychograph.cpu_ops.CpuOps` (the
    results of :class:`NumpyOps` with fewer passes over memory), ``"cupy"`` ->
    :class:`ptychograph.gpu.ops.CupyOps` (imported here, on first use; constructing it needs
    neither CuPy nor a device, running it needs both)."""
    if backend == "numpy":
        from ptychograph.cpu_ops import CpuOps

        return CpuOps()
    if backend == "cupy":
        from ptychograph.gpu.ops import CupyOps

        return CupyOps()
    raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")


def _add_into(total: Array, batch: Array) -> None:
    """total += batch, in place (``total`` is an array held by frozen partials)."""
    get_array_module(total).add(total, batch, out=total)

"""Linear operators of the multi-mode forward model (Dong et al. eqs. 1-2; docs/design.md,
"Forward model").

Each operator is a pure function over arrays with its adjoint beside it, so that the
inner-product identity ``<A x, y> = <x, A^H y>`` can be (and is) tested:

* :func:`extract_views` / :func:`insert_views` - integer-pixel view extraction E_j from the
  object and its adjoint, insertion by addition.
* :func:`shift_modes` / :func:`unshift_modes` - the unitary sub-pixel Fourier shift S_j of the
  probe to the fractional part of view j's position, and its inverse (= adjoint).
* :func:`ptychograph.backend.fft2c` / :func:`~ptychograph.backend.ifft2c` - far-field
  propagation F and F^H.

Sub-pixel positions: the top-left corner of view j in object pixels, ``origin_j``, is split into
an integer part (used by E_j) and a fractional part ``frac_j`` in [0, 1), by which the probe is
shifted with a Fourier phase ramp. The exit wave of view j (eq. 2) is therefore

    phi_j^(k,l) = (S_j P^(k)) * (E_j O^(l)),

which is exact for integer positions (S_j is then the identity).

Shapes use the dimension names of the output Dataset: ``frame`` (N), ``probe_mode`` (M_P),
``obj_mode`` (M_O), ``py``/``px`` (frame pixels H, W) and ``y``/``x`` (object pixels Y, X).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychograph.backend import Array, fft2, get_array_module, ifft2


def split_origins(origins: Array) -> tuple[Array, Array]:
    """Split view origins into integer corners and fractional shifts.

    origins : (N, 2) float, (row, column) of each view's top-left corner in object pixels.
    Returns ``(corners, frac)``: (N, 2) int64 and (N, 2) float in [0, 1).
    """
    xp = get_array_module(origins)
    corners = xp.floor(origins)
    frac = origins - corners
    return corners.astype(xp.int64), frac


def phase_ramps(frac: Array, shape: tuple[int, int], dtype: Any) -> tuple[Array, Array] | None:
    """Separable Fourier phase ramps that shift a frame by ``frac`` pixels.

    frac : (N, 2) float, (row, column) shifts. Returns ``(ramp_y, ramp_x)`` with shapes
    (N, H, 1) and (N, 1, W) in ``dtype`` (complex), or ``None`` when every shift is zero.
    The ramp for frequency q (cycles / pixel, unshifted FFT order) is exp(-2 pi i q frac).
    """
    xp = get_array_module(frac)
    if not bool(xp.any(frac != 0)):
        return None
    height, width = shape
    qy = xp.fft.fftfreq(height).astype(frac.dtype)
    qx = xp.fft.fftfreq(width).astype(frac.dtype)
    ramp_y = xp.exp(-2j * np.pi * frac[:, 0:1] * qy[None, :]).astype(dtype)
    ramp_x = xp.exp(-2j * np.pi * frac[:, 1:2] * qx[None, :]).astype(dtype)
    return ramp_y[:, :, None], ramp_x[:, None, :]


def shift_modes(modes: Array, ramps: tuple[Array, Array] | None) -> Array:
    """S_j: shift every mode by each view's fractional offset.

    modes : (M, H, W) complex (e.g. the probe). ramps : from :func:`phase_ramps` for N views.
    Returns (N, M, H, W) complex, ``out[j, k](r) = modes[k](r - frac_j)`` (periodic), or a
    broadcast view of shape (1, M, H, W) when ``ramps`` is None (integer positions).
    """
    if ramps is None:
        return modes[None]
    ramp_y, ramp_x = ramps
    spectrum = fft2(modes)
    ramp = (ramp_y * ramp_x)[:, None]  # (n, 1, H, W)
    return ifft2(spectrum[None] * ramp, overwrite=True)


def unshift_modes(waves: Array, ramps: tuple[Array, Array] | None) -> Array:
    """S_j^H (= S_j^-1): undo each view's fractional shift.

    waves : (N, M, H, W) complex. Returns (N, M, H, W) complex (``waves`` itself when
    ``ramps`` is None).
    """
    if ramps is None:
        return waves
    xp = get_array_module(waves)
    ramp_y, ramp_x = ramps
    return ifft2(fft2(waves) * xp.conj(ramp_y[:, None]) * xp.conj(ramp_x[:, None]))


def sum_unshifted(waves: Array, ramps: tuple[Array, Array] | None) -> Array:
    """sum_j S_j^H waves_j, with one inverse FFT in total (S_j^H is linear).

    waves : (N, M, H, W) complex. Returns (M, H, W) complex.
    """
    if ramps is None:
        return waves.sum(axis=0)
    xp = get_array_module(waves)
    ramp_y, ramp_x = ramps
    spectrum = fft2(waves)
    spectrum *= xp.conj(ramp_y * ramp_x)[:, None]
    return ifft2(spectrum.sum(axis=0), overwrite=True)


def extract_views(obj: Array, corners: Array, shape: tuple[int, int]) -> Array:
    """E_j: cut each view's window out of the object.

    obj : (M_O, Y, X) complex. corners : (N, 2) int, top-left (row, column) of each view.
    Returns (N, M_O, H, W), a new array.
    """
    xp = get_array_module(obj)
    height, width = shape
    windows = xp.lib.stride_tricks.sliding_window_view(obj, (height, width), axis=(-2, -1))
    views = windows[:, corners[:, 0], corners[:, 1]]  # (M_O, N, H, W)
    return xp.ascontiguousarray(xp.moveaxis(views, 0, 1))


def _flat_indices(corners: Array, shape: tuple[int, int], obj_shape: tuple[int, int]) -> Array:
    """(N, H, W) flat indices into a (Y, X) object of every pixel of every view."""
    xp = get_array_module(corners)
    height, width = shape
    rows = corners[:, 0, None, None] + xp.arange(height)[None, :, None]
    cols = corners[:, 1, None, None] + xp.arange(width)[None, None, :]
    return rows * obj_shape[1] + cols


def insert_views(views: Array, corners: Array, obj_shape: tuple[int, int]) -> Array:
    """E_j^H summed over views: add every view into an object-sized array.

    views : (N, M, H, W) real or complex. corners : (N, 2) int. obj_shape : (Y, X).
    Returns (M, Y, X) with the dtype of ``views``; overlapping views add up.

    On CuPy this is one atomic scatter-add over all views. On NumPy it adds each view's
    (M, H, W) block into its window with one in-place slice addition: overlapping windows make
    a single vectorised scatter impossible without atomics, and the measured alternatives
    (``np.bincount`` on flat indices: 5.8x slower; a cached sparse matrix: 2.5x slower and
    ~8 bytes per view pixel of extra memory) lose to it (benchmarks/RESULTS.md).
    """
    xp = get_array_module(views)
    n_views, n_modes, height, width = views.shape
    out = xp.zeros((n_modes, *obj_shape), dtype=views.dtype)
    if xp is np:
        for view, (row, col) in zip(views, corners.tolist(), strict=True):
            out[:, row : row + height, col : col + width] += view
        return out
    import cupyx  # pragma: no cover - exercised on GPU machines

    indices = _flat_indices(corners, (height, width), obj_shape)  # pragma: no cover
    flat_out = out.reshape(n_modes, -1)  # pragma: no cover
    for mode in range(n_modes):  # pragma: no cover
        cupyx.scatter_add(flat_out[mode], indices.reshape(-1), views[:, mode].reshape(-1))
    return out  # pragma: no cover


def add_binned(total: Array, bins: Array, terms: Array) -> None:
    """sum_j over the views of each bin: total[bins[j]] += terms[j], in place (bins may
    repeat; the adjoint of a gather rows[bins]): (B, ...), (n,) int, (n, ...)."""
    xp = get_array_module(total)
    if xp is not np:  # pragma: no cover - exercised on GPU machines
        import cupyx

        cupyx.scatter_add(total, bins, terms)
        return
    for j, row in enumerate(bins.tolist()):
        np.add(total[row], terms[j], out=total[row])


def rotate_modes(waves: Array, rotation: Array, in_place: bool = False) -> Array:
    """Apply a probe-mode rotation to exit waves: psi'^(k) = sum_m R[k, m] psi^(m).

    waves : (n, M_P, M_O, H, W); rotation : (M_P, M_P). Returns a new array, or ``waves``
    rotated in place (16 views at a time, so that each rotated copy is still in the CPU caches
    when it is written back: 40 % faster than one copy of a 64-view batch, measured).
    Accumulated mode by mode (M_P^2 scaled adds of (n, M_O, H, W) frames), which on CPU takes
    about 60 % of the time of a tensordot and its transposing copies.
    """
    if in_place:
        for start in range(0, int(waves.shape[0]), 16):
            part = waves[start : start + 16]
            part[...] = rotate_modes(part, rotation)
        return waves
    xp = get_array_module(waves)
    rotation = rotation.astype(waves.dtype)
    if xp is not np:
        rotated = xp.tensordot(rotation, waves, axes=([1], [1]))
        return xp.ascontiguousarray(xp.moveaxis(rotated, 0, 1))
    out = np.empty_like(waves)
    scratch = np.empty_like(waves[:, 0])
    for k in range(waves.shape[1]):
        np.multiply(waves[:, 0], rotation[k, 0], out=out[:, k])
        for m in range(1, waves.shape[1]):
            np.multiply(waves[:, m], rotation[k, m], out=scratch)
            out[:, k] += scratch
    return out


def exit_waves(probe_views: Array, obj_views: Array) -> Array:
    """Eq. 2: phi_j^(k,l) = (S_j P^(k)) (E_j O^(l)) for every probe/object mode pair.

    probe_views : (N or 1, M_P, H, W); obj_views : (N, M_O, H, W).
    Returns (N, M_P, M_O, H, W).
    """
    return probe_views[:, :, None] * obj_views[:, None, :]


def far_field_intensity(waves: Array) -> Array:
    """Eq. 1: I_j(q) = sum_{k,l} |F psi_j^(k,l)(q)|^2.

    waves : (N, M_P, M_O, H, W) complex. Returns (N, H, W) real.
    """
    from ptychograph.backend import fft2c

    xp = get_array_module(waves)
    spectrum = fft2c(waves)
    power = spectrum.real**2 + spectrum.imag**2
    return xp.sum(power, axis=(1, 2))


class SubpixelShift:
    """S_j for a batch of views: the probe moved by each view's fractional offset with a
    unitary Fourier phase ramp (exact band-limited interpolation; the identity for integer
    offsets). A bilinear alternative was measured and dropped: on simulated 1e6-photon data it
    fitted worse (Fourier error 2.4e-3) than rounding the positions (1.9e-3), against 1.2e-3
    for the Fourier shift, because its smoothing of the probe is a model error.
    frac : (n, 2) real (row, column) offsets in [0, 1).
    """

    def __init__(self, frac: Array, shape: tuple[int, int], dtype: Any) -> None:
        self.ramps = phase_ramps(frac, shape, dtype)

    def shift(self, modes: Array) -> Array:
        """(M, H, W) -> (n, M, H, W), or a (1, M, H, W) view when every offset is 0."""
        return shift_modes(modes, self.ramps)

    def sum_adjoint(self, waves: Array) -> Array:
        """sum_j S_j^H waves_j: (n, M, H, W) -> (M, H, W)."""
        return sum_unshifted(waves, self.ramps)

"""Plain NumPy references of the CUDA kernels in ``kernels/*.cu``.

Every kernel wrapper in :mod:`ptychograph.gpu.kernels` has a function of the same name and
signature here, written in whole-array NumPy (the array module is taken from the inputs, so
these also run on CuPy arrays, unfused). The references are what the kernels are tested
against on a GPU; on any machine they are tested against the package's own NumPy path
(:func:`ptychograph.fourier.dm_exit_wave_update`, :func:`ptychograph.views.object_partials`,
:func:`ptychograph.views.probe_partials`), so kernel == reference == package.

Differences from the kernels, by design: references return new arrays where the kernels
overwrite their first argument (``modulus_constraint``, ``exit_wave_update``), and the per-view
sums are float64 in both.

Shapes: ``n`` views of a batch, ``M_P`` probe and ``M_O`` object modes, frames ``H x W``,
object ``Y x X``. Exit waves psi : (n, M_P, M_O, H, W) complex; probe views S_j P :
(n or 1, M_P, H, W); object views E_j O : (n, M_O, H, W); amplitudes sqrt(I) : (n, H, W) real
and the mask ``good`` : (H, W) bool in the spectra's frequency order (the package keeps them in
FFT order, zero frequency at [0, 0]). Equations: DESIGN.md, Dong et al. arXiv:1808.10375.
"""

from __future__ import annotations

from ptychograph.backend import Array, fft2, get_array_module, ifft2
from ptychograph.operators import exit_waves as form_views
from ptychograph.operators import insert_views
from ptychograph.partials import FourierError, OverlapPartials


def views_and_iterate(
    probe_views: Array, obj_views: Array, exit_waves: Array
) -> tuple[Array, Array]:
    """phi = (S_j P^(k)) (E_j O^(l)) (eq. 2) and the DM iterate 2 phi - psi (eq. 3).

    Returns ``(views, iterate)``, both (n, M_P, M_O, H, W) like ``exit_waves``.
    """
    views = form_views(probe_views, obj_views)
    return views, 2 * views - exit_waves


def fourier_residuals(
    iterate_spectrum: Array, model_spectrum: Array, amplitudes: Array, good: Array | None
) -> tuple[Array, Array, Array]:
    """Per-view sums over good pixels of the iterate's and the model's misfit (eq. 4, step 5).

    iterate_spectrum : F(2 phi - psi), model_spectrum : F phi, both (n, M_P, M_O, H, W).
    Returns ``(iterate_residual, model_residual, total)``, each (n,) float64:
    sum_q (|F(2 phi - psi)| - a)^2 (the noise-bound relaxation's D_j), sum_q (a - |F phi|)^2 and
    sum_q a^2 (the Fourier error terms), with |.| the root of the sum over all modes.
    """
    weights = _weights(good, amplitudes)
    iterate_diff = _mode_norm(iterate_spectrum) - amplitudes
    model_diff = amplitudes - _mode_norm(model_spectrum)
    return (
        _view_sum(iterate_diff * iterate_diff * weights),
        _view_sum(model_diff * model_diff * weights),
        _view_sum(amplitudes * amplitudes * weights),
    )


def modulus_constraint(
    spectrum: Array,
    amplitudes: Array,
    good: Array | None,
    model_spectrum: Array | None = None,
    step: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Eq. 4 on all modes at once, optionally relaxed per view and with the error terms.

    F_c[X]^(k,l) = r X^(k,l), r = a / max(sqrt(sum_{k,l} |X^(k,l)|^2), tiny), r = 1 at bad
    pixels, and with ``step`` (n,) real r <- 1 + step_j (r - 1) (:func:`noise_steps`).
    spectrum : X = F(2 phi - psi), (n, M_P, M_O, H, W). model_spectrum : F phi or None.
    Returns ``(constrained, model_residual, total)``: a new (n, M_P, M_O, H, W) array and the
    (n,) float64 error terms of ``model_spectrum`` (zeros when it is None).
    """
    xp = get_array_module(spectrum)
    norm = _mode_norm(spectrum)
    ratio = amplitudes / xp.maximum(norm, xp.finfo(norm.dtype).tiny)
    if good is not None:
        ratio = xp.where(good[None], ratio, 1)
    if step is not None:
        ratio = 1 + step.astype(norm.dtype)[:, None, None] * (ratio - 1)
    constrained = spectrum * ratio[:, None, None].astype(norm.dtype)
    n_views = spectrum.shape[0]
    if model_spectrum is None:
        zeros = xp.zeros(n_views, dtype=xp.float64)
        return constrained, zeros, zeros.copy()
    weights = _weights(good, amplitudes)
    diff = amplitudes - _mode_norm(model_spectrum)
    residual = _view_sum(diff * diff * weights)
    return constrained, residual, _view_sum(amplitudes * amplitudes * weights)


def noise_steps(
    iterate_residual: Array, good: Array | None, noise_bound: float, frame_shape: tuple[int, int]
) -> Array:
    """Per-view relaxation of eq. 4 for noisy data (:func:`ptychograph.fourier.modulus_constraint`).

    step_j = 1 - sqrt(B / max(D_j, B)), B = noise_bound * 0.25 * (number of good pixels):
    0 leaves a view that already fits within the noise, 1 is plain eq. 4.
    iterate_residual : (n,) D_j from :func:`fourier_residuals`. Returns (n,) float64. Works on
    NumPy and CuPy arrays without a host synchronisation.
    """
    xp = get_array_module(iterate_residual)
    n_good = good.sum() if good is not None else frame_shape[0] * frame_shape[1]
    bound = noise_bound * 0.25 * n_good
    return 1 - xp.sqrt(bound / xp.maximum(iterate_residual, bound))


def exit_wave_update(
    exit_waves: Array, projected: Array, probe_views: Array, obj_views: Array, beta: float
) -> Array:
    """Eq. 3's last step: psi + beta (F^-1 F_c[2 phi - psi] - phi), phi = (S_j P)(E_j O).

    projected : F^-1 F_c[2 phi - psi], (n, M_P, M_O, H, W). Returns the new psi (a new array).
    """
    return exit_waves + beta * (projected - form_views(probe_views, obj_views))


def object_partials(
    exit_waves: Array,
    probe_views: Array,
    corners: Array,
    obj_shape: tuple[int, int],
    out: OverlapPartials | None = None,
) -> OverlapPartials:
    """Eq. 6 partial sums of a batch of views.

    numerator[l] = sum_j E_j^H sum_k conj(S_j P^(k)) psi_j^(k,l) : (M_O, Y, X) complex
    denominator  = sum_j E_j^H sum_k |S_j P^(k)|^2               : (Y, X) real
    corners : (n, 2) int, each view's top-left (row, column); windows must lie inside the
    object. out : partials to add into (in place, and returned) instead of new arrays.
    """
    xp = get_array_module(exit_waves)
    n_views = exit_waves.shape[0]
    numerator_views = xp.sum(xp.conj(probe_views)[:, :, None] * exit_waves, axis=1)
    power = xp.sum(probe_views.real**2 + probe_views.imag**2, axis=1)  # (n or 1, H, W)
    power = xp.broadcast_to(power, (n_views, *power.shape[1:]))[:, None]
    numerator = insert_views(numerator_views, corners, obj_shape)
    denominator = insert_views(power, corners, obj_shape)[0]
    if out is None:
        return OverlapPartials(numerator, denominator)
    out.numerator[...] += numerator  # in place: the partials value itself is frozen
    out.denominator[...] += denominator
    return out


def update_and_object_partials(
    exit_waves: Array,
    projected: Array,
    probe_views: Array,
    obj_views: Array,
    beta: float,
    corners: Array,
    obj_shape: tuple[int, int],
    out: OverlapPartials | None = None,
) -> tuple[Array, OverlapPartials]:
    """:func:`exit_wave_update` followed by :func:`object_partials` of the new psi.

    Returns ``(new psi, partials)``; ``out`` as in :func:`object_partials`.
    """
    psi = exit_wave_update(exit_waves, projected, probe_views, obj_views, beta)
    return psi, object_partials(psi, probe_views, corners, obj_shape, out)


def probe_terms(exit_waves: Array, probe_views: Array, obj_views: Array) -> Array:
    """Per-view eq. 5 terms in residual form, before S_j^H:
    t_j^(k) = sum_l conj(O_j^(l)) (psi_j^(k,l) - O_j^(l) S_j P^(k)). Returns (n, M_P, H, W).
    """
    xp = get_array_module(exit_waves)
    residual = exit_waves - form_views(probe_views, obj_views)
    return xp.sum(xp.conj(obj_views)[:, None] * residual, axis=2)


def sum_over_views(
    waves: Array, ramps: tuple[Array, Array] | None = None, out: Array | None = None
) -> Array:
    """sum_j waves_j, or sum_j waves_j conj(ramp_y_j ramp_x_j) given the phase ramps.

    waves : (n, M, H, W) complex (spectra when ``ramps`` is given). ramps : ``(ramp_y, ramp_x)``
    as from :func:`ptychograph.operators.phase_ramps`, (n, H, 1) and (n, 1, W) (or (n, H) and
    (n, W)). Returns (M, H, W), added into ``out`` when given.
    """
    xp = get_array_module(waves)
    if ramps is not None:
        ramp_y, ramp_x = (r.reshape(waves.shape[0], -1) for r in ramps)
        weights = xp.conj(ramp_y[:, :, None] * ramp_x[:, None, :])
        waves = waves * weights[:, None]
    total = waves.sum(axis=0)
    if out is None:
        return total
    out += total
    return out


def object_power(obj_views: Array, out: Array | None = None) -> Array:
    """Eq. 5 denominator of a batch: sum_{j,l} |O_j^(l)|^2, (H, W) real (added into ``out``)."""
    xp = get_array_module(obj_views)
    total = xp.sum(obj_views.real**2 + obj_views.imag**2, axis=(0, 1))
    if out is None:
        return total
    out += total
    return out


def probe_partials(
    exit_waves: Array,
    probe_views: Array,
    obj_views: Array,
    ramps: tuple[Array, Array] | None = None,
) -> OverlapPartials:
    """Eq. 5 partial sums of a batch (as :func:`ptychograph.views.probe_partials`):
    numerator[k] = sum_j S_j^H t_j^(k) (:func:`probe_terms`) : (M_P, H, W) complex,
    denominator = :func:`object_power` : (H, W) real. ramps : the batch's phase ramps, or None
    for integer positions (S_j = 1).
    """
    terms = probe_terms(exit_waves, probe_views, obj_views)
    if ramps is None:
        numerator = sum_over_views(terms)
    else:
        numerator = ifft2(sum_over_views(fft2(terms, overwrite=True), ramps), overwrite=True)
    return OverlapPartials(numerator, object_power(obj_views))


def dm_update(
    exit_waves: Array,
    probe_views: Array,
    obj_views: Array,
    amplitudes: Array,
    good: Array | None,
    beta: float,
    noise_bound: float = 0.0,
    corners: Array | None = None,
    obj_shape: tuple[int, int] | None = None,
) -> tuple[Array, FourierError, OverlapPartials | None]:
    """One exit-wave update (eqs. 3-4) of a batch, composed of the references above in the
    order the GPU runs the kernels (:func:`ptychograph.gpu.kernels.dm_update`):
    views_and_iterate -> FFTs -> [fourier_residuals, noise_steps] -> modulus_constraint ->
    inverse FFT -> exit_wave_update (or update_and_object_partials, given ``corners`` and
    ``obj_shape``). Equals :func:`ptychograph.fourier.dm_exit_wave_update` with
    ``centred=False`` (and, with the partials, :func:`ptychograph.views.update_views`).
    Returns the new psi, the Fourier error terms of phi and the eq. 6 partials (or None).
    """
    views, iterate = views_and_iterate(probe_views, obj_views, exit_waves)
    model = fft2(views)
    spectrum = fft2(iterate, overwrite=True)
    step = None
    if noise_bound > 0:
        iterate_residual, residual, total = fourier_residuals(spectrum, model, amplitudes, good)
        step = noise_steps(iterate_residual, good, noise_bound, amplitudes.shape[1:])
        spectrum, _, _ = modulus_constraint(spectrum, amplitudes, good, step=step)
    else:
        spectrum, residual, total = modulus_constraint(spectrum, amplitudes, good, model)
    projected = ifft2(spectrum, overwrite=True)
    error = FourierError(float(residual.sum()), float(total.sum()))
    if corners is None or obj_shape is None:
        return exit_wave_update(exit_waves, projected, probe_views, obj_views, beta), error, None
    psi, partials = update_and_object_partials(
        exit_waves, projected, probe_views, obj_views, beta, corners, obj_shape
    )
    return psi, error, partials


# ------------------------------------------------------------------------------ helpers
def _mode_norm(spectrum: Array) -> Array:
    """sqrt(sum over both mode axes of |spectrum|^2): (n, M_P, M_O, H, W) -> (n, H, W)."""
    xp = get_array_module(spectrum)
    return xp.sqrt(xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2)))


def _weights(good: Array | None, amplitudes: Array) -> Array:
    """(1, H, W) 1 at good and 0 at bad pixels, in the amplitudes' dtype (1 with no mask)."""
    if good is None:
        return amplitudes.dtype.type(1)
    return good[None].astype(amplitudes.dtype)


def _view_sum(values: Array) -> Array:
    """(n, H, W) -> (n,) float64 sums per view."""
    return values.astype("float64").sum(axis=(1, 2))

"""Whole-pixel search for views that the gradient step cannot bring home (docs/design.md,
"Position correction").

The per-view least-squares step (:mod:`ptychograph.positions`) sees as far as the object's
structure reaches: on an object whose features are ~2 px across, a view that starts 6-7 px
from the truth can settle ~10 px from it, where its data fit far worse than every other
view's (benchmarks/RESULTS.md, "Science: position correction through ML"). Once the ML
refinement has nearly converged the object from all the other views, the model error of such
a view, tried at every whole-pixel offset around where it is, is lowest within about a pixel
of its true place (measured on three of four such views: 0.5-1.8 px from the truth, at
0.19-0.75 of the error where the view was; the fourth, beside another wrong view, fitted best
where it was).

:func:`view_errors` gives each view's relative model error; :func:`search_views` tries a
view at whole-pixel offsets (its own sub-pixel shifted probe S_j P, so the fraction stays)
and returns the best. Which views are tried and whether they move is decided on the gathered
errors (:mod:`ptychograph.algorithms.positions`).
"""

from __future__ import annotations

import numpy as np

from ptychograph.backend import Array, fft2, get_array_module, to_host
from ptychograph.noise import amplitude_noise
from ptychograph.operators import exit_waves, extract_views
from ptychograph.shifted_probe import batch_slices
from ptychograph.views import ViewChunk, batch_probe, current_views, shifted_probe


def relative_errors(
    spectrum: Array, amplitudes: Array, good: Array | None, unit: float = 0.0
) -> np.ndarray:
    """Per view, sum_q (sqrt(I) - |F phi|)^2 over good pixels, divided by what Poisson noise
    alone leaves, sum_q unit g(|F phi|^2 / unit) (:func:`ptychograph.noise.amplitude_noise`:
    about 1 for a view that fits to the noise, however bright) when one photon is ``unit`` > 0
    in the frames' units; by sum_q I when ``unit`` is 0 (photon scale unknown): (N,) float64.

    spectrum : (N, M_P, M_O, H, W) complex, F phi. amplitudes : (N or 1, H, W). good : (H, W)
    bool or None. NaN for a view without counts on its good pixels (it says nothing)."""
    xp = get_array_module(spectrum)
    power = xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2))
    diff = (amplitudes - xp.sqrt(power)) ** 2
    intensity = xp.broadcast_to(amplitudes**2, diff.shape)
    noise = amplitude_noise(power, unit) if unit > 0 else intensity
    if good is not None:
        diff, intensity, noise = (term * good[None] for term in (diff, intensity, noise))

    def sums(term: Array) -> np.ndarray:
        return to_host(xp.sum(term, axis=(1, 2))).astype(np.float64)

    residual, counts, divisor = sums(diff), sums(intensity), sums(noise)
    usable = (counts > 0) & (divisor > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(usable, residual / np.where(usable, divisor, 1.0), np.nan)


def view_errors(
    chunk: ViewChunk, probe: Array, obj: Array, batch_size: int = 64, unit: float = 0.0
) -> np.ndarray:
    """Relative model error of each of the chunk's views (:func:`relative_errors`, against
    the Poisson noise when one photon is ``unit`` > 0 in the frames' units): (N,). The
    per-view counterpart of :func:`ptychograph.views.model_error`.

    probe : (M_P, H, W), obj : (M_O, Y, X)."""
    errors = np.zeros(chunk.n_views)
    shifted_probe(chunk, probe, batch_size=batch_size)
    for sl in batch_slices(chunk.n_views, batch_size):
        spectrum = fft2(current_views(chunk, sl, probe, obj), overwrite=True)
        errors[sl] = relative_errors(spectrum, chunk.amplitudes[sl], chunk.good, unit)
    return errors


def offsets(radius: int) -> np.ndarray:
    """Whole-pixel offsets (K, 2) int64 within ``radius`` along each axis, (0, 0) first."""
    steps = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1).reshape(-1, 2)
    order = np.argsort(np.abs(grid).sum(axis=1), kind="stable")
    return grid[order].astype(np.int64)


def search_views(
    chunk: ViewChunk,
    probe: Array,
    obj: Array,
    local: np.ndarray,
    radius: int,
    lower: np.ndarray,
    upper: np.ndarray,
    batch_size: int = 64,
    rotation: Array | None = None,
    origins: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Try the views ``local`` (n,) (indices into the chunk) at every whole-pixel offset
    within ``radius`` that keeps their origin within [``lower``, ``upper``] (n, 2).
    ``origins`` : (n, 2) float64 their origins (the chunk's corners and fractions, in the
    run's precision, if None).

    Returns the best offset (n, 2) float64 (0 where nothing does better or the view has no
    counts), its relative error (n,) and the error where the view is (n,)."""
    xp = get_array_module(probe)
    held = shifted_probe(chunk, probe, rotation, batch_size)
    grid = offsets(radius)
    corners = to_host(chunk.corners)
    if origins is None:
        origins = (corners + to_host(chunk.frac).astype(np.float64))[local]
    best = np.zeros((len(local), 2))
    best_error = np.zeros(len(local))
    here = np.zeros(len(local))
    for row, j in enumerate(np.asarray(local, dtype=np.int64).tolist()):
        moved = origins[row] + grid
        inside = np.all((moved >= lower[row]) & (moved <= upper[row]), axis=1)
        inside[0] = True  # where the view is, always
        tried = grid[inside]
        probe_view = batch_probe(chunk, held, slice(j, j + 1), probe)
        errors = np.empty(len(tried))
        for sl in batch_slices(len(tried), batch_size):
            window = extract_views(obj, xp.asarray(corners[j] + tried[sl]), chunk.frame_shape)
            spectrum = fft2(exit_waves(probe_view, window), overwrite=True)
            errors[sl] = relative_errors(spectrum, chunk.amplitudes[j : j + 1], chunk.good)
        if not np.all(np.isfinite(errors)):  # no counts: nowhere is better
            best_error[row] = here[row] = errors[0]
            continue
        k = int(np.argmin(errors))
        best[row], best_error[row], here[row] = tried[k], errors[k], errors[0]
    return best, best_error, here

"""The table of shifted probes (:mod:`ptychograph.shifted_probe`) against the exact operators.

* the rows gathered for each view equal :class:`~ptychograph.operators.SubpixelShift` of the
  rounded offsets, and the exact offsets with ``steps = 0``;
* the table is reused while the probe is the same, rotated with the probe modes, made afresh
  when the probe changes, and a chunk follows positions changed by position correction;
* the binned adjoint of the probe pass equals the per-view S_j^H sum of the NumPy reference;
* the rounding to the default grid moves a probe by at most the bound of its band limit.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_cpu_fast_paths import DTYPES, FRAME, TOL, close, crandom, sums_close

from ptychograph.modes import orthogonalise
from ptychograph.operators import SubpixelShift, extract_views, phase_ramps
from ptychograph.ops import NumpyOps
from ptychograph.partials import OverlapPartials
from ptychograph.shifted_probe import SUBPIXEL_STEPS, ShiftTable, quantise
from ptychograph.views import (
    current_views,
    make_chunk,
    model_error,
    object_partials,
    probe_partials,
    shifted_probe,
    update_views,
)


def chunk_and_estimates(dtype: type, seed: int = 0, n_views: int = 11, steps: int = SUBPIXEL_STEPS):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    origins = rng.uniform(0, 14, (n_views, 2))
    real = np.empty(0, dtype).real.dtype
    amplitudes = np.abs(rng.standard_normal((n_views, *FRAME))).astype(real)
    probe = crandom(rng, (2, *FRAME), dtype)
    obj = crandom(rng, (1, 40, 40), dtype)
    chunk = make_chunk(amplitudes, None, origins, probe, obj, 4, table=ShiftTable(steps))
    return chunk, probe, obj


def reference(chunk, probe, steps: int | None = None):  # type: ignore[no-untyped-def]
    """S_j P of every view by the exact operator at the (rounded) offsets."""
    frac = quantise(chunk.frac, chunk.table.steps if steps is None else steps)
    return SubpixelShift(frac, chunk.frame_shape, probe.dtype).shift(probe)


def gathered(chunk, probe):  # type: ignore[no-untyped-def]
    """S_j P of every view as the sweeps use it (gathered from the table rows)."""
    views = shifted_probe(chunk, probe, batch_size=4)
    assert views is not None and views.shape == (chunk.n_views, *probe.shape)
    return views


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [0, 4, SUBPIXEL_STEPS])
def test_table_rows_are_the_shifts_of_rounded_offsets(dtype, steps):
    chunk, probe, _ = chunk_and_estimates(dtype, steps=steps)
    close(gathered(chunk, probe), reference(chunk, probe), TOL[dtype])
    if steps == 0:  # exact offsets: one row per view
        assert len(chunk.table.offsets) == chunk.n_views
    else:
        assert np.all(chunk.table.offsets * steps == np.rint(chunk.table.offsets * steps))
    # the per-batch path (CuPy's) rounds the same way
    close(chunk.shifter(slice(3, 8), dtype).shift(probe), reference(chunk, probe)[3:8], 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_table_is_reused_and_made_afresh_for_a_new_probe(dtype):
    chunk, probe, _ = chunk_and_estimates(dtype)
    held = shifted_probe(chunk, probe, batch_size=4)
    assert shifted_probe(chunk, probe.copy(), batch_size=4) is held and chunk.table.made == 1
    rows = chunk.table.rows
    np.testing.assert_array_equal(held, rows[chunk.slots()])
    assert chunk.table.lookup(probe * 2) is None
    close(gathered(chunk, probe * 2), reference(chunk, probe * 2), TOL[dtype])
    assert chunk.table.made == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_table_follows_a_mode_rotation(dtype):
    chunk, probe, _ = chunk_and_estimates(dtype)
    shifted_probe(chunk, probe)
    rotated, rotation = orthogonalise(probe)
    views = shifted_probe(chunk, rotated, rotation)
    assert views is not None and (chunk.table.made, chunk.table.rotated) == (1, 1)
    close(views, reference(chunk, rotated), 10 * TOL[dtype])
    other = rotated + 0.1  # a rotation that does not explain the new probe is not applied
    close(gathered(chunk, other), reference(chunk, other), TOL[dtype])
    assert (chunk.table.made, chunk.table.rotated) == (2, 1)


def test_shared_table_grows_for_another_chunk():
    """Chunks of one slot share the table; a chunk with new offsets adds rows, made from the
    held probe, and the first chunk's rows keep their places."""
    first, probe, _ = chunk_and_estimates(np.complex128, seed=0)
    second, _, _ = chunk_and_estimates(np.complex128, seed=1)
    second.table = first.table
    before = gathered(first, probe).copy()
    close(gathered(second, probe), reference(second, probe), 1e-12)
    np.testing.assert_array_equal(gathered(first, probe), before)
    assert first.table.made == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_follow_positions_changed_in_place(dtype):
    """Position correction moves chunk.corners and chunk.frac between iterations: the next
    sweep uses the new positions, as a chunk made at them does."""
    chunk, probe, obj = chunk_and_estimates(dtype)
    object_partials(chunk, probe, (40, 40), batch_size=4)  # fills the table
    moved = chunk.corners + chunk.frac + np.random.default_rng(9).uniform(-0.4, 0.4, (11, 2))
    moved = np.clip(moved, 0, 14)
    chunk.corners[...] = np.floor(moved).astype(np.int64)
    chunk.frac[...] = moved - chunk.corners
    fresh, _, _ = chunk_and_estimates(dtype)
    fresh.corners[...], fresh.frac[...] = chunk.corners, chunk.frac
    fresh.exit_waves[...] = chunk.exit_waves
    for sweep in (object_partials, probe_partials):
        args = (probe, (40, 40)) if sweep is object_partials else (obj, probe)
        got, want = sweep(chunk, *args, batch_size=4), sweep(fresh, *args, batch_size=4)
        sums_close(got, want, TOL[dtype])
    close(
        current_views(chunk, slice(2, 7), probe, obj),
        current_views(fresh, slice(2, 7), probe, obj),
        TOL[dtype],
    )
    got_error = model_error(chunk, probe, obj, batch_size=4)
    assert got_error.value == pytest.approx(model_error(fresh, probe, obj, 4).value, rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_with_rotation_equals_update_shifted_afresh(dtype):
    chunk, probe, obj = chunk_and_estimates(dtype)
    twin, _, _ = chunk_and_estimates(dtype)
    object_partials(chunk, probe, (40, 40), batch_size=4)
    rotated, rotation = orthogonalise(probe)
    error, sums = update_views(chunk, rotated, obj, 0.8, 4, rotation)
    assert chunk.table.rotated == 1
    twin.table = ShiftTable()  # nothing held: S_s P made afresh
    want_error, want_sums = update_views(twin, rotated, obj, 0.8, 4, rotation)
    assert (twin.table.made, twin.table.rotated) == (1, 0)
    close(chunk.exit_waves, twin.exit_waves, 10 * TOL[dtype])
    assert error.value == pytest.approx(want_error.value, rel=1e-4)
    assert sums is not None and want_sums is not None
    sums_close(sums, want_sums, 10 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [2, SUBPIXEL_STEPS])
def test_probe_pass_equals_per_view_reference(dtype, steps):
    """The probe partials of a chunk (binned adjoint when views share shifts: 40 views on a
    1/2 px grid; per batch otherwise) equal NumpyOps with the per-view S_j^H of the rounded
    offsets."""
    chunk, probe, obj = chunk_and_estimates(dtype, seed=2, n_views=40, steps=steps)
    psi = chunk.exit_waves
    psi += crandom(np.random.default_rng(3), psi.shape, dtype) * 0.1
    shifted_probe(chunk, probe)
    used, _ = chunk.table.bins(chunk.slots())
    assert (used is not None) == (steps == 2)
    got = probe_partials(chunk, obj, probe, batch_size=7)
    want = OverlapPartials(np.zeros_like(probe), np.zeros(FRAME, chunk.amplitudes.dtype))
    frac = quantise(chunk.frac, steps)
    NumpyOps().probe_partials(
        psi,
        reference(chunk, probe),
        extract_views(obj, chunk.corners, FRAME),
        phase_ramps(frac, FRAME, dtype),
        want,
    )
    sums_close(got, want, 10 * TOL[dtype])


def test_integer_positions_use_the_probe_itself():
    chunk, probe, _ = chunk_and_estimates(np.complex128)
    chunk.frac[...] = 0.01  # rounds to 0 on the default grid
    chunk.table = ShiftTable()
    rows = shifted_probe(chunk, probe)
    assert rows is not None and rows.shape == (1, *probe.shape)
    assert chunk.table.made == 0


def test_rounding_error_is_within_the_band_limit_bound():
    """|S_q P - S P| <= 2 pi (|q_y| + |q_x|) max|delta| |P^| summed over frequencies (over the
    frame size, unitary FFT): for a probe band-limited to a quarter of Nyquist, rounding to the
    default grid (delta <= 1/16 px) moves it by under 10 % of its peak."""
    size, rng, steps = 64, np.random.default_rng(7), SUBPIXEL_STEPS
    qy, qx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    band = np.hypot(qy, qx) <= 0.125
    spectrum = crandom(rng, (1, size, size), np.complex128) * band
    probe = np.fft.ifft2(spectrum, norm="ortho")
    frac = rng.uniform(0, 1, (50, 2))
    exact = SubpixelShift(frac, (size, size), np.complex128).shift(probe)
    rounded = SubpixelShift(quantise(frac, steps), (size, size), np.complex128).shift(probe)
    weights = 2 * np.pi * (np.abs(qy) + np.abs(qx)) * band * np.abs(spectrum[0])
    bound = np.sum(weights) / (2 * steps) / size
    error = np.abs(rounded - exact).max()
    assert error <= bound
    assert error <= 0.1 * np.abs(probe).max()

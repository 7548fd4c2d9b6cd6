"""Chunked partial sums combine in any order to the one-shot sums; the Fourier constraint and
mode orthogonalisation behave as the equations say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ptychograph.backend import fft2c
from ptychograph.fourier import dm_exit_wave_update, fourier_error, modulus_constraint
from ptychograph.modes import orthogonalise, power_shares
from ptychograph.partials import FourierError, OverlapPartials, regularised_divide, tree_sum
from ptychograph.views import (
    make_chunk,
    object_partials,
    probe_partials,
    rotate_modes,
    update_views,
)


def crandn(rng, shape, dtype=np.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def random_problem(rng, n=24, size=16, probe_modes=2, obj_modes=2, dtype=np.complex128):
    probe = crandn(rng, (probe_modes, size, size), dtype)
    obj = crandn(rng, (obj_modes, 48, 50), dtype)
    origins = rng.uniform(0, 30, size=(n, 2))
    real = np.float32 if dtype == np.complex64 else np.float64
    amplitudes = rng.uniform(0, 3, size=(n, size, size)).astype(real)
    return amplitudes, origins, probe, obj


@pytest.mark.parametrize("dtype,rtol", [(np.complex64, 1e-4), (np.complex128, 1e-11)])
@pytest.mark.parametrize("splits", [[24], [10, 14], [5, 5, 7, 7], [1] * 24])
def test_chunked_partials_equal_one_shot(dtype, rtol, splits) -> None:
    rng = np.random.default_rng(0)
    amplitudes, origins, probe, obj = random_problem(rng, dtype=dtype)
    whole = make_chunk(amplitudes, None, origins, probe, obj, batch_size=7)
    whole.exit_waves[:] = crandn(rng, whole.exit_waves.shape, dtype)
    edges = np.cumsum([0, *splits])
    chunks = []
    for a, b in itertools.pairwise(edges):
        chunk = make_chunk(amplitudes[a:b], None, origins[a:b], probe, obj, batch_size=3)
        chunk.exit_waves[:] = whole.exit_waves[a:b]
        chunks.append(chunk)
    ref_o = object_partials(whole, probe, obj.shape[1:], batch_size=7)
    ref_p = probe_partials(whole, obj, probe, batch_size=7)
    parts_o = [object_partials(c, probe, obj.shape[1:], 5) for c in chunks]
    parts_p = [probe_partials(c, obj, probe, 5) for c in chunks]
    rng.shuffle(parts_o)
    rng.shuffle(parts_p)
    for ref, parts in ((ref_o, parts_o), (ref_p, parts_p)):
        for combined in (tree_sum(parts), sum(parts[1:], parts[0]), tree_sum(parts[::-1])):
            scale = np.abs(ref.numerator).max()
            np.testing.assert_allclose(combined.numerator, ref.numerator, atol=rtol * scale)
            np.testing.assert_allclose(
                combined.denominator, ref.denominator, atol=rtol * ref.denominator.max()
            )


def test_fourier_error_terms_add() -> None:
    a, b, c = FourierError(1.0, 4.0), FourierError(2.0, 6.0), FourierError(0.5, 2.0)
    assert (a + b) + c == a + (b + c)
    assert (a + b + c).value == pytest.approx(3.5 / 12.0)
    assert FourierError(0.0, 0.0).value == 0.0


def test_regularised_divide_is_ratio_where_lit_and_keeps_previous_where_dark() -> None:
    den = np.array([[100.0, 0.0]])
    num = np.array([[[200.0 + 100j, 0.0]]])
    prev = np.array([[[1.0, 5.0 + 5j]]])
    out = regularised_divide(OverlapPartials(num, den), prev, 1e-6)
    np.testing.assert_allclose(out[0, 0, 0], 2 + 1j, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 1], 5 + 5j)
    assert np.all(np.isfinite(out))


def test_modulus_constraint_matches_data_and_keeps_masked_pixels() -> None:
    rng = np.random.default_rng(1)
    spectrum = crandn(rng, (3, 2, 1, 8, 8))
    amplitudes = rng.uniform(0.5, 2, size=(3, 8, 8))
    good = np.ones((8, 8), bool)
    good[2, 3] = False
    out = modulus_constraint(spectrum.copy(), amplitudes, good)
    model = np.sqrt((np.abs(out) ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(model[:, good], amplitudes[:, good], rtol=1e-12)
    np.testing.assert_allclose(out[..., 2, 3], spectrum[..., 2, 3])
    # mode ratios are kept: the phase and relative weight of each mode survive
    np.testing.assert_allclose(out[:, 0] / out[:, 1], spectrum[:, 0] / spectrum[:, 1])


def test_modulus_constraint_guards_zero_model() -> None:
    spectrum = np.zeros((1, 1, 1, 4, 4), complex)
    out = modulus_constraint(spectrum, np.ones((1, 4, 4)), None)
    assert np.all(np.isfinite(out))


def test_noise_bound_leaves_views_within_noise_alone() -> None:
    rng = np.random.default_rng(2)
    amplitudes = rng.uniform(5, 6, size=(2, 8, 8))
    spectrum = amplitudes[:, None, None].astype(complex) * 1.0
    spectrum[1] *= 1.5  # far from the data
    spectrum[0] += 0.1  # within the noise
    out = modulus_constraint(spectrum.copy(), amplitudes, None, noise_bound=1.0)
    np.testing.assert_allclose(out[0], spectrum[0])
    residual = ((np.abs(out[1, 0, 0]) - amplitudes[1]) ** 2).sum()
    assert residual == pytest.approx(0.25 * 64, rel=0.05)


def test_fourier_error_of_exact_model_is_zero() -> None:
    rng = np.random.default_rng(3)
    waves = crandn(rng, (4, 2, 1, 8, 8))
    amplitudes = np.sqrt((np.abs(fft2c(waves)) ** 2).sum(axis=(1, 2)))
    err = fourier_error(fft2c(waves), amplitudes, None)
    assert err.residual < 1e-20 * err.total
    psi = waves.copy()
    err = dm_exit_wave_update(psi, waves, amplitudes, None, beta=0.8)
    np.testing.assert_allclose(psi, waves, atol=1e-12)  # a solution is a fixed point


def test_orthogonalise_rotation_is_unitary_and_consistent_with_exit_waves() -> None:
    rng = np.random.default_rng(4)
    probe = crandn(rng, (3, 16, 16))
    rotated, rotation = orthogonalise(probe)
    np.testing.assert_allclose(rotation @ rotation.conj().T, np.eye(3), atol=1e-12)
    gram = rotated.reshape(3, -1) @ rotated.reshape(3, -1).conj().T
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-9 * np.abs(gram).max())
    assert np.all(np.diff(np.diag(gram).real) <= 0)
    again, identity = orthogonalise(rotated)
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-9)
    # rotating psi = P O like the probe keeps psi equal to the new views
    amplitudes, origins, _, obj = random_problem(rng, probe_modes=3, obj_modes=1)
    chunk = make_chunk(amplitudes, None, origins, probe, obj)
    expected = make_chunk(amplitudes, None, origins, rotated, obj).exit_waves
    np.testing.assert_allclose(rotate_modes(chunk.exit_waves, rotation), expected, atol=1e-9)
    shares = power_shares(probe)
    assert shares.sum() == pytest.approx(1.0)
    assert np.all(np.diff(shares) <= 0)


def test_exit_wave_update_batches_do_not_change_result() -> None:
    rng = np.random.default_rng(5)
    amplitudes, origins, probe, obj = random_problem(rng)
    results = []
    for batch in (1, 5, 64):
        chunk = make_chunk(amplitudes, None, origins, probe, obj, batch_size=batch)
        err, _ = update_views(
            chunk, probe * 1.1, obj, 0.8, batch_size=batch, with_object_partials=False
        )
        results.append((chunk.exit_waves, err.value))
    for psi, value in results[1:]:
        np.testing.assert_allclose(psi, results[0][0], atol=1e-10)
        assert value == pytest.approx(results[0][1], rel=1e-10)


def test_fused_update_equals_update_then_object_partials() -> None:
    rng = np.random.default_rng(6)
    amplitudes, origins, probe, obj = random_problem(rng)
    a = make_chunk(amplitudes, None, origins, probe, obj, batch_size=5)
    b = make_chunk(amplitudes, None, origins, probe, obj, batch_size=5)
    err_a, none = update_views(
        a, probe * 1.1, obj, 0.8, batch_size=5, noise_bound=0.5, with_object_partials=False
    )
    assert none is None
    part_a = object_partials(a, probe * 1.1, obj.shape[1:], batch_size=5)
    err_b, part_b = update_views(b, probe * 1.1, obj, 0.8, batch_size=5, noise_bound=0.5)
    assert part_b is not None
    np.testing.assert_allclose(b.exit_waves, a.exit_waves, atol=1e-12)
    assert err_b.value == pytest.approx(err_a.value, rel=1e-12)
    np.testing.assert_allclose(part_b.numerator, part_a.numerator, atol=1e-10)
    np.testing.assert_allclose(part_b.denominator, part_a.denominator, atol=1e-10)

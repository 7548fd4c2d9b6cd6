"""Adjoint identities of every forward/adjoint pair and basic properties of the operators."""

from __future__ import annotations

import numpy as np
import pytest

from ptychograph.backend import fft2c, ifft2c
from ptychograph.operators import (
    exit_waves,
    extract_views,
    far_field_intensity,
    insert_views,
    phase_ramps,
    shift_modes,
    split_origins,
    sum_unshifted,
    unshift_modes,
)

RTOL = {np.complex64: 2e-5, np.complex128: 1e-12}


def crandn(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.complex128) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def inner(a: np.ndarray, b: np.ndarray) -> complex:
    return complex(np.vdot(a.astype(np.complex128), b.astype(np.complex128)))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (15, 9)])
def test_propagator_adjoint_and_unitary(dtype, shape) -> None:
    rng = np.random.default_rng(0)
    x = crandn(rng, (3, *shape), dtype)
    y = crandn(rng, (3, *shape), dtype)
    lhs, rhs = inner(fft2c(x), y), inner(x, ifft2c(y))
    assert abs(lhs - rhs) <= RTOL[dtype] * abs(lhs) * 10
    np.testing.assert_allclose(np.linalg.norm(fft2c(x)), np.linalg.norm(x), rtol=RTOL[dtype])
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=RTOL[dtype] * 10)


def test_propagator_centres_zero_frequency() -> None:
    x = np.ones((1, 8, 10), dtype=np.complex128)
    spectrum = fft2c(x)
    assert np.argmax(np.abs(spectrum[0])) == 4 * 10 + 5


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_extract_insert_adjoint(dtype) -> None:
    rng = np.random.default_rng(1)
    obj = crandn(rng, (2, 40, 37), dtype)
    corners = rng.integers(0, 20, size=(11, 2))
    views = crandn(rng, (11, 2, 16, 17), dtype)
    lhs = inner(extract_views(obj, corners, (16, 17)), views)
    rhs = inner(obj, insert_views(views, corners, (40, 37)))
    assert abs(lhs - rhs) <= RTOL[dtype] * abs(lhs) * 10


def test_extract_views_matches_slicing() -> None:
    rng = np.random.default_rng(2)
    obj = crandn(rng, (1, 30, 30))
    corners = np.array([[0, 0], [5, 7], [14, 14]])
    views = extract_views(obj, corners, (16, 16))
    for j, (r, c) in enumerate(corners):
        np.testing.assert_array_equal(views[j, 0], obj[0, r : r + 16, c : c + 16])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_shift_adjoint_and_inverse(dtype) -> None:
    rng = np.random.default_rng(3)
    modes = crandn(rng, (3, 18, 14), dtype)
    frac = rng.uniform(0, 1, size=(5, 2))
    ramps = phase_ramps(frac, (18, 14), dtype)
    waves = crandn(rng, (5, 3, 18, 14), dtype)
    shifted = shift_modes(modes, ramps)
    lhs = inner(shifted, waves)
    rhs = inner(np.broadcast_to(modes, shifted.shape), unshift_modes(waves, ramps))
    assert abs(lhs - rhs) <= RTOL[dtype] * abs(lhs) * 10
    np.testing.assert_allclose(
        unshift_modes(shifted, ramps), np.broadcast_to(modes, shifted.shape), atol=1e-4
    )
    np.testing.assert_allclose(
        sum_unshifted(waves, ramps), unshift_modes(waves, ramps).sum(axis=0), atol=1e-4
    )


def test_integer_shift_is_exact_roll() -> None:
    rng = np.random.default_rng(4)
    modes = crandn(rng, (1, 16, 16))
    ramps = phase_ramps(np.array([[1.0, 3.0]]), (16, 16), np.complex128)
    shifted = shift_modes(modes, ramps)
    np.testing.assert_allclose(shifted[0, 0], np.roll(modes[0], (1, 3), axis=(0, 1)), atol=1e-12)
    assert phase_ramps(np.zeros((4, 2)), (16, 16), np.complex128) is None


def test_split_origins() -> None:
    corners, frac = split_origins(np.array([[3.25, 7.0], [0.0, 2.999]]))
    np.testing.assert_array_equal(corners, [[3, 7], [0, 2]])
    np.testing.assert_allclose(frac, [[0.25, 0.0], [0.0, 0.999]])


def test_intensity_is_incoherent_mode_sum_and_conserves_power() -> None:
    rng = np.random.default_rng(5)
    probe = crandn(rng, (3, 16, 16))
    obj_views = crandn(rng, (4, 2, 16, 16))
    waves = exit_waves(probe[None], obj_views)
    assert waves.shape == (4, 3, 2, 16, 16)
    intensity = far_field_intensity(waves)
    expected = sum(
        np.abs(fft2c(probe[k] * obj_views[:, m])) ** 2 for k in range(3) for m in range(2)
    )
    np.testing.assert_allclose(intensity, expected, rtol=1e-12)
    np.testing.assert_allclose(
        intensity.sum(axis=(1, 2)), (np.abs(waves) ** 2).sum(axis=(1, 2, 3, 4)), rtol=1e-12
    )


def test_subpixel_shift_adjoint_and_integer_exactness() -> None:
    from ptychograph.operators import SubpixelShift

    rng = np.random.default_rng(8)
    modes = crandn(rng, (2, 12, 10))
    frac = rng.uniform(0, 1, size=(5, 2))
    shift = SubpixelShift(frac, (12, 10), np.complex128)
    waves = crandn(rng, (5, 2, 12, 10))
    shifted = shift.shift(modes)
    assert shifted.shape == (5, 2, 12, 10)
    # <S_j P, w_j> summed over j equals <P, sum_j S_j^H w_j>
    lhs = inner(shifted, waves)
    rhs = inner(modes, shift.sum_adjoint(waves))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    integer = SubpixelShift(np.zeros((3, 2)), (12, 10), np.complex128)
    np.testing.assert_array_equal(integer.shift(modes)[0], modes)

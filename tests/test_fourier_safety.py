"""The Fourier-modulus constraint stays finite for any model, and masks that leave no data.

Issue 10: ``ratio = a / max(|F psi|, tiny)`` overflowed float32 where the model's far field is
(nearly) zero and the data are not, so a band-limited probe guess (zero outside a pupil disc)
with a flat object gave NaN exit waves at the second iteration. Here: the constraint on spectra
that are exactly zero, denormal, underflowing, negligible next to the data and huge, against an
independent complex128 reference of eq. 4; a whole reconstruction from a band-limited probe; and
a detector mask that marks every pixel bad, refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult, Workspace

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct_in_process
from ptychograph.errors import InputError
from ptychograph.fourier import modulus_constraint
from ptychograph.io.cxi import MASK_PATH, read_cxi, write_cxi
from ptychograph.io.validate import validate_frames, validate_mask
from ptychograph.simulate import SimulationConfig, simulate

DTYPES = (np.complex64, np.complex128)
PROBE_MODES = (1, 3)
FRAME = 8
#: Modulus of the extreme pixels per precision: exactly zero, denormal, squares that underflow,
#: normal but a / |X| beyond ratio_limit, and squares that overflow.
EXTREMES = {
    np.complex64: {
        "zero": 0.0,
        "denormal": 1e-42,
        "underflow": 1e-21,
        "negligible": 1e-18,
        "huge": 1e30,
    },
    np.complex128: {
        "zero": 0.0,
        "denormal": 1e-315,
        "underflow": 1e-160,
        "negligible": 1e-153,
        "huge": 1e200,
    },
}
KINDS = tuple(EXTREMES[np.complex64])


# --- the constraint on extreme spectra ----------------------------------------------------


def extreme_case(
    dtype: type, probe_modes: int, kind: str, masked: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Spectrum (2, M_P, 1, 8, 8) of unit-scale random modes, rows 0-3 of view 0 and row 0 of
    view 1 scaled to the extreme; amplitudes (2, 8, 8) in [0.5, 50]; mask or None; and the
    (2, 8, 8) bool map of extreme pixels."""
    rng = np.random.default_rng(10)
    real = np.finfo(dtype).dtype
    shape = (2, probe_modes, 1, FRAME, FRAME)
    spectrum: np.ndarray = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    extreme = np.zeros((2, FRAME, FRAME), bool)
    extreme[0, :4] = True
    extreme[1, 0] = True
    views, rows, cols = extreme.nonzero()
    spectrum[views, :, :, rows, cols] *= real.type(EXTREMES[dtype][kind])
    amplitudes = rng.uniform(0.5, 50.0, size=(2, FRAME, FRAME)).astype(real)
    good = None
    if masked:
        good = np.ones((FRAME, FRAME), bool)
        good[0, 1] = False  # an extreme pixel in both views
        good[5, 5] = False  # an ordinary one
    return spectrum, amplitudes, good, extreme


def reference(
    spectrum: np.ndarray,
    amplitudes: np.ndarray,
    good: np.ndarray | None,
    noise_bound: float,
    extreme: np.ndarray,
    modulus: float,
    step: np.ndarray | None = None,
) -> np.ndarray:
    """Eq. 4 with its relaxation in complex128, away from under- and overflow.

    The direction u = X / |X| of an extreme pixel is taken from X 2^k, k fixed by the modulus
    the case scaled it to (exact: no rounding, no square out of range), not from the package's
    own per-pixel scaling. Returns (1 - s_j) X + s_j a u at good pixels with some non-zero
    mode, X elsewhere; s_j = 1 without relaxation, from ``noise_bound`` or given as ``step``.
    """
    x = spectrum.astype(np.complex128)
    shift = 0 if modulus == 0 else -int(np.round(np.log2(modulus)))
    shifts = np.where(extreme, shift, 0)[:, None, None]
    scaled = np.ldexp(x.real, shifts) + 1j * np.ldexp(x.imag, shifts)
    scaled_norm = np.sqrt(np.sum(np.abs(scaled) ** 2, axis=(1, 2)))
    nonzero = scaled_norm > 0
    unit = scaled / np.where(nonzero, scaled_norm, 1)[:, None, None]
    target = amplitudes.astype(np.float64)[:, None, None] * unit
    good_map = np.ones(amplitudes.shape[1:], bool) if good is None else good
    if step is None:
        step = np.ones(x.shape[0])
    if noise_bound > 0:
        with np.errstate(over="ignore"):
            model = np.sqrt(np.sum(np.abs(x) ** 2, axis=(1, 2)))
            diff = np.where(good_map, model - amplitudes, 0)
            residual = np.sum(diff * diff, axis=(1, 2))
        bound = noise_bound * 0.25 * good_map.sum()
        step = 1 - np.sqrt(bound / np.maximum(residual, bound))
    relax = step[:, None, None, None, None]
    relaxed = (1 - relax) * x + relax * target
    changes = (nonzero & good_map[None])[:, None, None]
    return np.where(changes, relaxed, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probe_modes", PROBE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("noise_bound", [0.0, 1.0], ids=["plain", "relaxed"])
def test_extreme_model_gives_finite_projection(
    dtype: type, probe_modes: int, kind: str, masked: bool, noise_bound: float
) -> None:
    spectrum, amplitudes, good, extreme = extreme_case(dtype, probe_modes, kind, masked)
    modulus = EXTREMES[dtype][kind]
    out = modulus_constraint(spectrum.copy(), amplitudes, good, noise_bound)

    assert out.dtype == dtype and out.shape == spectrum.shape
    assert np.all(np.isfinite(out))
    expected = reference(spectrum, amplitudes, good, noise_bound, extreme, modulus)
    tol = 4 * np.finfo(amplitudes.dtype).eps * (1 if noise_bound == 0 else 8)
    # per pixel and mode, relative to the larger of the data and the model there
    size = np.maximum(np.abs(expected), np.abs(spectrum.astype(np.complex128)))
    size = np.maximum(size, amplitudes[:, None, None])
    assert np.all(np.abs(out - expected) <= tol * size)
    if good is not None:  # bad pixels keep their computed value, bit for bit
        np.testing.assert_array_equal(out[..., ~good], spectrum[..., ~good])
    if kind == "zero":  # no phase or mode split to keep: left at zero
        views, rows, cols = extreme.nonzero()
        assert np.all(out[views, :, :, rows, cols] == 0)


@pytest.mark.parametrize("probe_modes", PROBE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ordinary_pixels_use_the_plain_ratio(dtype: type, probe_modes: int) -> None:
    """Where the model is nonzero and normal the result is a / |X| times X, bit for bit."""
    for kind in KINDS:
        spectrum, amplitudes, _, extreme = extreme_case(dtype, probe_modes, kind, False)
        out = modulus_constraint(spectrum.copy(), amplitudes, None)
        with np.errstate(over="ignore"):
            model = np.sqrt(np.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2)))
        plain = spectrum * (amplitudes / np.where(extreme, 1, model))[:, None, None]
        ordinary = ~extreme
        np.testing.assert_array_equal(
            np.moveaxis(out, (1, 2), (3, 4))[ordinary], np.moveaxis(plain, (1, 2), (3, 4))[ordinary]
        )
        # the constrained modulus is the data's wherever some mode was not zero
        modulus = np.sqrt(np.sum(np.abs(out.astype(np.complex128)) ** 2, axis=(1, 2)))
        defined = ordinary | (kind != "zero")
        eps = np.finfo(amplitudes.dtype).eps
        np.testing.assert_allclose(modulus[defined], amplitudes[defined], rtol=8 * eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relaxation_without_good_pixels_or_residual_is_finite(dtype: type) -> None:
    """B = 0 (every pixel bad) and D_j = 0 (a view that fits exactly) are not 0 / 0."""
    rng = np.random.default_rng(11)
    real = np.finfo(dtype).dtype
    amplitudes = rng.uniform(1, 2, size=(2, FRAME, FRAME)).astype(real)
    spectrum: np.ndarray = amplitudes[:, None, None].astype(dtype)  # |X| = a exactly: D_j = 0
    none_good = np.zeros((FRAME, FRAME), bool)
    out = modulus_constraint(spectrum.copy(), amplitudes, none_good, noise_bound=1.0)
    np.testing.assert_array_equal(out, spectrum)
    out = modulus_constraint(spectrum.copy(), amplitudes, None, noise_bound=1.0)
    np.testing.assert_array_equal(out, spectrum)
    zero = np.zeros_like(spectrum)
    out = modulus_constraint(zero.copy(), amplitudes, none_good, noise_bound=1.0)
    np.testing.assert_array_equal(out, zero)


def cuda_device() -> bool:
    """True when CuPy is installed and a CUDA device answers (a device check, not an import)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - any CUDA/driver failure means no usable device
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_device(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probe_modes", PROBE_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("relaxed", [False, True], ids=["plain", "relaxed"])
def test_cuda_kernel_guard_equals_numpy(
    dtype: type, probe_modes: int, kind: str, masked: bool, relaxed: bool
) -> None:
    """gpu/cuda/fourier_modulus.cu takes the same safe and extreme paths as the package."""
    import cupy

    from ptychograph.gpu import kernels

    spectrum, amplitudes, good, extreme = extreme_case(dtype, probe_modes, kind, masked)
    step = np.array([0.7, 0.3]) if relaxed else None
    on_device = cupy.asarray(spectrum)
    kernels.modulus_constraint(
        on_device,
        cupy.asarray(amplitudes),
        None if good is None else cupy.asarray(good),
        step=None if step is None else cupy.asarray(step),
    )
    out = cupy.asnumpy(on_device)

    assert np.all(np.isfinite(out))
    expected = reference(spectrum, amplitudes, good, 0.0, extreme, EXTREMES[dtype][kind], step)
    if step is None:
        expected = modulus_constraint(spectrum.copy(), amplitudes, good)
    tol = 16 * np.finfo(amplitudes.dtype).eps
    size = np.maximum(np.abs(expected), np.abs(spectrum.astype(np.complex128)))
    size = np.maximum(size, amplitudes[:, None, None])
    assert np.all(np.abs(out - expected) <= tol * size)
    if kind == "zero":
        views, rows, cols = extreme.nonzero()
        assert np.all(out[views, :, :, rows, cols] == 0)


# --- a whole reconstruction from a band-limited probe -------------------------------------


def pupil_probe(size: int, power: float) -> np.ndarray:
    """(size, size) complex128 probe whose far field is a flat disc of radius size / 4 and zero
    outside (a pinhole/zone-plate pupil seen at the sample plane), with total power ``power``."""
    u = np.arange(size) - size // 2
    rho = np.hypot(*np.meshgrid(u, u, indexing="ij"))
    pupil = (rho < size / 4).astype(np.complex128)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    return probe * np.sqrt(power / np.sum(np.abs(probe) ** 2))


@pytest.fixture(scope="module")
def pupil_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A simulated 50-frame 64 x 64 scan (CXI) and a band-limited probe guess (.npy)."""
    sim = simulate(SimulationConfig(n_frames=50, frame_size=64, photons=1e6, seed=2))
    folder = tmp_path_factory.mktemp("pupil")
    write_cxi(folder / "scan.cxi", sim.scan)
    probe = pupil_probe(64, float(np.sum(np.abs(sim.probe) ** 2)))
    np.save(folder / "probe.npy", probe.astype(np.complex64))
    return folder / "scan.cxi", folder / "probe.npy"


@pytest.mark.parametrize("probe_modes", PROBE_MODES)
@pytest.mark.parametrize("precision", ["single", "double"])
def test_band_limited_probe_guess_reconstructs(
    pupil_scan: tuple[Path, Path], precision: str, probe_modes: int
) -> None:
    scan, probe = pupil_scan
    config = parse_config(
        {
            "data": {"path": str(scan)},
            "reconstruction": {
                "iterations": 10,
                "precision": precision,
                "probe_modes": probe_modes,
            },
            "initial": {"probe": "file", "probe_path": str(probe), "object": "flat"},
            "output": {"path": str(scan.with_suffix(".zarr"))},
        }
    )
    result = reconstruct_in_process(config)
    errors = np.asarray(result.history.fourier_error)

    assert result.state.probe.dtype == (np.complex64 if precision == "single" else np.complex128)
    assert np.all(np.isfinite(result.state.probe))
    assert np.all(np.isfinite(result.state.obj))
    assert errors.shape == (10,) and np.all(np.isfinite(errors))
    # measured (single, 1 mode): 0.242 -> 0.041; (3 modes) 0.253 -> 0.039
    assert errors[-1] < 0.3 * errors[0]
    # falls from the start (DM is not monotonic: with one overlap pass per iteration the
    # error rose once, at iteration 4, 0.145 -> 0.156, 1 mode; 0.154 -> 0.191, 3 modes)
    assert np.all(errors[1:] < errors[0]) and errors[5] < 0.5 * errors[0]
    assert float(np.sum(np.abs(result.state.obj) ** 2)) > 0


# --- a mask that leaves no good pixel ------------------------------------------------------


def test_validate_mask_refuses_all_bad_and_accepts_one_good() -> None:
    with pytest.raises(InputError, match="every detector pixel is masked bad") as info:
        validate_mask(np.ones((4, 4), bool))
    assert info.value.field == "mask"
    one_good = np.ones((4, 4), bool)
    one_good[2, 2] = False
    validate_mask(one_good)
    validate_mask(None)


def test_all_bad_mask_is_refused_in_process(tmp_path: Path, simulated_scan: Path) -> None:
    scan = read_cxi(simulated_scan)
    masked = dataclasses.replace(scan, mask=np.ones(scan.frames.shape[1:], bool))
    with pytest.raises(InputError, match="every detector pixel is masked bad") as info:
        validate_frames(masked)
    assert info.value.field == "mask"
    write_cxi(tmp_path / "scan.cxi", masked)
    config = parse_config(
        {
            "data": {"path": str(tmp_path / "scan.cxi")},
            "reconstruction": {"iterations": 2},
            "output": {"path": str(tmp_path / "out.zarr")},
        }
    )
    with pytest.raises(InputError, match="^mask: every detector pixel is masked bad"):
        reconstruct_in_process(config)


def test_all_bad_mask_is_refused_by_the_cli(
    workspace: Workspace, cli: Callable[..., CliResult]
) -> None:
    with workspace.edit_scan() as file:
        shape = file[f"{MASK_PATH.rsplit('/', 1)[0]}/data"].shape[1:]
        file.create_dataset(MASK_PATH, data=np.ones(shape, np.uint32))
    result = cli("run", workspace.config_path, "--overwrite")
    result.assert_input_error("mask", "every detector pixel is masked bad")
    assert not workspace.store.exists()

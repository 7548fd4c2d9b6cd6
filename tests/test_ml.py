"""Maximum-likelihood refinement: exact gradients and line terms, reductions that do not depend
on the chunking, the Poisson floor on a noisy scan, both precisions and several modes, and the
same result through Dask as in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from ptychograph.algorithms import plan_from
from ptychograph.algorithms.ml import MaximumLikelihood
from ptychograph.config import ReconstructionConfig, parse_config
from ptychograph.engine import reconstruct, reconstruct_in_process
from ptychograph.errors import InputError
from ptychograph.io.cxi import write_cxi
from ptychograph.likelihood import gradient, line_terms
from ptychograph.metrics import illumination, relative_error
from ptychograph.partials import tree_sum
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.views import make_chunk, model_error


def _problem(seed: int = 0, modes: tuple[int, int] = (2, 2), masked: bool = True):  # type: ignore[no-untyped-def]
    """A random chunk (sub-pixel origins, masked pixels) with random estimates, double."""
    rng = np.random.default_rng(seed)
    n, size, (n_p, n_o) = 5, 12, modes
    origins = rng.uniform(0, 8, (n, 2))
    probe = rng.normal(size=(n_p, size, size)) + 1j * rng.normal(size=(n_p, size, size))
    obj = rng.normal(size=(n_o, 22, 22)) + 1j * rng.normal(size=(n_o, 22, 22))
    counts = rng.poisson(50.0, (n, size, size)).astype(np.float64)
    good = rng.random((size, size)) > 0.1 if masked else None
    chunk = make_chunk(np.sqrt(counts), good, origins, probe, obj, batch_size=2)
    return chunk, probe, obj, rng


def _nll(chunk, probe, obj, floor):  # type: ignore[no-untyped-def]
    return gradient(chunk, probe, obj, floor, batch_size=2).nll


def test_gradient_matches_finite_differences() -> None:
    chunk, probe, obj, rng = _problem()
    floor = 0.5
    grad = gradient(chunk, probe, obj, floor, batch_size=2)
    for name in ("probe", "obj"):
        direction = rng.normal(size=(probe if name == "probe" else obj).shape) * (1 + 1j)
        step = 1e-6
        if name == "probe":
            plus = _nll(chunk, probe + step * direction, obj, floor)
            minus = _nll(chunk, probe - step * direction, obj, floor)
            g = grad.probe.numerator
        else:
            plus = _nll(chunk, probe, obj + step * direction, floor)
            minus = _nll(chunk, probe, obj - step * direction, floor)
            g = grad.obj.numerator
        numeric = (plus - minus) / (2 * step)
        # dL = 2 Re <g, d> for the Wirtinger gradient g = dL/d conj(x)
        analytic = 2 * np.vdot(g, direction).real
        assert analytic == pytest.approx(numeric, rel=1e-6)


def test_line_terms_are_the_derivatives_along_the_direction() -> None:
    chunk, probe, obj, rng = _problem(seed=1, modes=(3, 1))
    floor = 0.2
    step_p = 0.05 * (rng.normal(size=probe.shape) + 1j * rng.normal(size=probe.shape))
    step_o = 0.05 * (rng.normal(size=obj.shape) + 1j * rng.normal(size=obj.shape))
    terms = line_terms(chunk, probe, obj, step_p, step_o, floor, batch_size=2)

    def along(a: float) -> float:
        return _nll(chunk, probe + a * step_p, obj + a * step_o, floor)

    h = 1e-4
    slope = (along(h) - along(-h)) / (2 * h)
    curvature = (along(h) - 2 * along(0.0) + along(-h)) / h**2
    assert terms.slope == pytest.approx(slope, rel=1e-6)
    assert terms.curvature == pytest.approx(curvature, rel=1e-4)


def test_partials_do_not_depend_on_the_chunking() -> None:
    chunk, probe, obj, _ = _problem(seed=2)
    whole = gradient(chunk, probe, obj, 0.3, batch_size=5)
    amplitudes = np.fft.fftshift(chunk.amplitudes, axes=(-2, -1))
    good = np.fft.fftshift(chunk.good)
    origins = chunk.corners + chunk.frac
    parts = [
        gradient(make_chunk(amplitudes[sl], good, origins[sl], probe, obj, 2), probe, obj, 0.3, 2)
        for sl in (slice(0, 2), slice(2, 5))
    ]
    split = tree_sum(parts)
    np.testing.assert_allclose(split.obj.numerator, whole.obj.numerator, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(split.probe.numerator, whole.probe.numerator, rtol=1e-10)
    np.testing.assert_allclose(split.obj.denominator, whole.obj.denominator, rtol=1e-10)
    assert split.nll == pytest.approx(whole.nll, rel=1e-12)


def test_plan_and_config() -> None:
    assert ReconstructionConfig().ml_iterations == 0
    plan = plan_from(ReconstructionConfig(iterations=10, ml_iterations=4))
    assert [(type(s.algorithm).__name__, s.start, s.stop) for s in plan] == [
        ("DifferenceMap", 0, 10),
        ("MaximumLikelihood", 10, 14),
    ]
    assert isinstance(plan[1].algorithm, MaximumLikelihood)
    assert plan[1].algorithm.options.stop == 14
    with pytest.raises(InputError, match="reconstruction.ml_iterations"):
        parse_config({"data": {"path": "x.cxi"}, "reconstruction": {"ml_iterations": -1}})


@pytest.fixture(scope="module")
def noisy_scan(tmp_path_factory):  # type: ignore[no-untyped-def]
    """200 frames of 64^2 with 1e5 photons per frame: noisy enough that DM stalls above the
    Poisson floor."""
    sim = simulate(SimulationConfig(n_frames=200, frame_size=64, photons=1e5, seed=3))
    path = tmp_path_factory.mktemp("noisy") / "scan.cxi"
    write_cxi(path, sim.scan)
    amplitudes = np.sqrt(sim.scan.frames.astype(np.float64))
    truth = make_chunk(amplitudes, None, sim.origins, sim.probe, sim.obj.astype(complex))
    truth_r = model_error(truth, sim.probe, sim.obj.astype(complex)).value
    return sim, path, truth_r


def _run(path: Path, **rec):  # type: ignore[no-untyped-def]
    config = parse_config(
        {
            "data": {"path": str(path)},
            "reconstruction": rec,
            "output": {"path": str(path.with_suffix(".zarr"))},
        }
    )
    return reconstruct_in_process(config)


def _object_error(result, sim) -> float:  # type: ignore[no-untyped-def]
    weight = illumination(sim.probe, sim.origins, sim.obj.shape[1:])
    lit = (weight > 0.3 * weight.max()).astype(float)
    return relative_error(result.state.obj[0], sim.obj[0], lit)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "modes"), [("single", 1), ("double", 3)])
def test_dm_then_ml_reaches_the_poisson_floor(noisy_scan, precision, modes) -> None:  # type: ignore[no-untyped-def]
    sim, path, truth_r = noisy_scan
    dm_only = _run(path, iterations=60, probe_modes=modes, precision=precision)
    refined = _run(path, iterations=60, ml_iterations=30, probe_modes=modes, precision=precision)
    final_r = refined.history.fourier_error[-1]
    # measured: truth R 6.39e-3; DM alone 8.5-8.7e-3; DM + ML 5.87e-3 (single, 1 mode) and
    # 5.91e-3 (double, 3 modes)
    assert abs(final_r - truth_r) < 0.1 * truth_r
    assert dm_only.history.fourier_error[-1] > 1.2 * truth_r
    # measured: object error 0.156 / 0.151 (DM) against 0.031 / 0.032 (DM + ML)
    assert _object_error(refined, sim) < 0.5 * _object_error(dm_only, sim)
    assert refined.chosen.startswith("refined from the DM")
    assert set(refined.model_error) == {"dm_average", "dm_last"}
    assert refined.state.obj.dtype == (np.complex64 if precision == "single" else np.complex128)
    assert np.isfinite(refined.state.probe).all() and np.isfinite(refined.state.obj).all()


def test_ml_through_dask_matches_in_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=40, frame_size=32, photons=1e5, seed=5))
    path = tmp_path / "scan.cxi"
    write_cxi(path, sim.scan)
    raw = {
        "data": {"path": str(path)},
        "reconstruction": {
            "iterations": 6,
            "ml_iterations": 5,
            "probe_modes": 2,
            "precision": "double",
        },
        "output": {"path": str(tmp_path / "r.zarr"), "figure": False},
        "cluster": {"sync_every": 3},
    }
    config = parse_config(raw)
    local = reconstruct_in_process(config, n_chunks=2)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        distributed = reconstruct(config, client=client, write=False)
    np.testing.assert_allclose(
        distributed.history.fourier_error, local.history.fourier_error, rtol=1e-8
    )
    np.testing.assert_allclose(distributed.state.obj, local.state.obj, rtol=1e-7, atol=1e-9)
    # the ML iterations lower the model's error below where DM left it
    assert local.history.fourier_error[-1] < local.history.fourier_error[5]


def test_averaging_is_invariant_to_mode_mixing_and_global_phase() -> None:
    from ptychograph.modes import align_modes
    from ptychograph.state import State, SyncPoint, accumulate

    rng = np.random.default_rng(4)
    probe = rng.normal(size=(3, 8, 8)) + 1j * rng.normal(size=(3, 8, 8))
    obj = rng.normal(size=(2, 12, 12)) + 1j * rng.normal(size=(2, 12, 12))

    def unitary(n: int) -> np.ndarray:
        q, _ = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
        return q

    mixed = State(np.tensordot(unitary(3), probe, axes=1), np.tensordot(unitary(2), obj, axes=1), 1)
    np.testing.assert_allclose(align_modes(mixed.probe, probe), probe, atol=1e-12)
    total = accumulate(accumulate(None, State(probe, obj, 0)), mixed)
    averaged = SyncPoint(State(probe, obj, 1), total, 2).averaged()
    assert averaged is not None
    # a plain sum of the two would cancel most of the modes; aligned, the mean is the state
    np.testing.assert_allclose(averaged.probe, probe, atol=1e-12)
    np.testing.assert_allclose(averaged.obj, obj, atol=1e-12)

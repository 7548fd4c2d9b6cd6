"""The whole-pixel search of views far from their place (ptychograph.position_search and its
steps in ptychograph.algorithms.positions)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from ptychograph.algorithms import plan_from
from ptychograph.algorithms.positions import (
    ACCEPT,
    LINEAR_GAIN,
    OUTLIER,
    SEARCH_SHARE,
    PositionOptions,
    ViewRows,
    jump_step,
    pick_outliers,
    stuck_views,
)
from ptychograph.config import Config, ReconstructionConfig, parse_config
from ptychograph.engine import reconstruct, reconstruct_in_process
from ptychograph.io.cxi import write_cxi
from ptychograph.noise import amplitude_noise
from ptychograph.operators import exit_waves, extract_views, far_field_intensity
from ptychograph.position_search import offsets, search_views, view_errors
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.state import State
from ptychograph.views import make_chunk


def _config(data: Path, rec: dict[str, object]) -> Config:
    """A run of the scan at ``data`` with the ``reconstruction`` keys ``rec``, writing beside
    it without a figure."""
    output = {"path": str(data.parent / "r.zarr"), "figure": False}
    return parse_config({"data": {"path": str(data)}, "reconstruction": rec, "output": output})


def _scan(
    precision: type = np.complex128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A noise-free textured scan on whole-pixel positions: probe, object, true origins, frames
    (N, H, W)."""
    sim = simulate(
        SimulationConfig(n_frames=30, frame_size=32, photons=None, seed=5, phantom="texture")
    )
    probe, obj = sim.probe.astype(precision), sim.obj.astype(precision)
    origins = np.round(sim.origins)
    views = exit_waves(probe[None], extract_views(obj, origins.astype(np.int64), (32, 32)))
    return probe, obj, origins, far_field_intensity(views)


@pytest.mark.parametrize("precision", [np.complex64, np.complex128])
def test_a_view_far_off_is_found_where_its_data_belong(precision: type) -> None:
    probe, obj, truth, frames = _scan(precision)
    given = truth.copy()
    given[4] += (6.0, -7.0)  # far beyond the reach of a gradient step on a 2 px texture
    given[9] += (0.25, 0.5)  # a small error, same fraction kept by the search
    amplitudes = np.sqrt(frames).astype(probe.real.dtype)
    chunk = make_chunk(amplitudes, None, given, probe, obj, batch_size=7)
    errors = view_errors(chunk, probe, obj, batch_size=7)
    others = np.delete(errors, [4, 9])
    assert errors[4] > 10 * OUTLIER * np.median(errors) and np.all(others < 1e-5)
    # at most 5 % of 30 views: the worst alone
    assert pick_outliers(ViewRows(np.arange(30), errors[:, None])).tolist() == [4]
    lower = np.zeros((2, 2))
    upper = np.full((2, 2), 1e9)
    best, error, here = search_views(chunk, probe, obj, np.array([4, 9]), 10, lower, upper, 7)
    np.testing.assert_array_equal(best[0], [-6.0, 7.0])
    assert error[0] < 1e-5 < ACCEPT * here[0]
    np.testing.assert_allclose(here, errors[[4, 9]], rtol=1e-4)
    # the half-pixel view has no whole-pixel offset that fits: it stays
    np.testing.assert_array_equal(best[1], [0.0, 0.0])


def test_the_search_keeps_within_the_bounds() -> None:
    probe, obj, truth, frames = _scan()
    given = truth.copy()
    given[4] += (6.0, -7.0)
    chunk = make_chunk(np.sqrt(frames), None, given, probe, obj)
    lower, upper = given[[4]] - 3.0, given[[4]] + 3.0
    best, error, here = search_views(chunk, probe, obj, np.array([4]), 10, lower, upper)
    assert np.all(np.abs(best) <= 3.0) and error[0] <= here[0]
    options = PositionOptions(0, 0.5, 3.0, given, searches=(1,), radius=10)
    low, high = options.bounds(np.array([4]), obj.shape, probe.shape)
    np.testing.assert_allclose(low, lower)
    np.testing.assert_allclose(high, np.minimum(upper, np.array(obj.shape[1:]) - 32 - 1))


def test_views_without_counts_are_never_searched_nor_named() -> None:
    probe, obj, truth, frames = _scan()
    frames[3] = 0.0
    chunk = make_chunk(np.sqrt(frames), None, truth + (2.0, 0.0) * (np.arange(30) == 5)[:, None],
                       probe, obj)  # fmt: skip
    with np.errstate(all="raise"):
        errors = view_errors(chunk, probe, obj)
        assert np.isnan(errors[3]) and np.all(np.isfinite(np.delete(errors, 3)))
        scores = view_errors(chunk, probe, obj, unit=1e-3)  # against the noise: the same
        assert np.isnan(scores[3]) and np.all(np.isfinite(np.delete(scores, 3)))
        rows = ViewRows(np.arange(30), errors[:, None])
        assert stuck_views(rows).tolist() == [5] and pick_outliers(rows).tolist() == [5]
        best, error, here = search_views(
            chunk, probe, obj, np.array([3, 5]), 3, np.zeros((2, 2)), np.full((2, 2), 1e9)
        )
    assert best[0].tolist() == [0.0, 0.0] and np.isnan(here[0])
    assert best[1].tolist() == [-2.0, 0.0]
    assert stuck_views(ViewRows(np.arange(2), np.full((2, 1), np.nan))).size == 0


def test_offsets_start_where_the_view_is() -> None:
    grid = offsets(2)
    assert grid.shape == (25, 2) and grid[0].tolist() == [0, 0]
    assert len({tuple(row) for row in grid.tolist()}) == 25 and np.abs(grid).max() == 2


def test_outliers_are_the_worst_few_far_above_the_median() -> None:
    errors = np.full(100, 1.0)
    errors[[3, 50, 70, 90, 91, 92, 93, 94]] = [2.9, 3.5, 4.0, 10, 11, 12, 13, 14]
    picks = pick_outliers(ViewRows(np.arange(100) + 1000, errors[:, None]))
    assert len(picks) == int(SEARCH_SHARE * 100) == 5
    assert picks.tolist() == [1090, 1091, 1092, 1093, 1094]
    few = np.ones(100)
    few[[3, 50]] = 0.99 * OUTLIER, 1.01 * OUTLIER  # the first below the threshold
    assert pick_outliers(ViewRows(np.arange(100), few[:, None])).tolist() == [50]
    assert pick_outliers(ViewRows(np.zeros(0, np.int64), np.zeros((0, 1)))).size == 0
    assert pick_outliers(ViewRows(np.arange(10), np.ones((10, 1)))).size == 0


def test_a_view_jumps_only_where_its_error_drops_enough() -> None:
    origins = np.arange(8.0).reshape(4, 2) + 10
    state = State(np.ones((1, 4, 4), complex), np.ones((1, 40, 40), complex), origins=origins)
    state = state.replace(memory="direction")
    found = ViewRows(
        np.array([1, 3]), np.array([[2.0, -3.0, 0.1, 1.0], [5.0, 5.0, 1.01 * ACCEPT, 1.0]])
    )
    moved = jump_step(found, state)
    assert moved.origins is not None
    np.testing.assert_array_equal(moved.origins[1], origins[1] + (2.0, -3.0))
    np.testing.assert_array_equal(np.delete(moved.origins, 1, axis=0), np.delete(origins, 1, 0))
    assert moved.memory is None  # ML restarts from steepest descent
    none = ViewRows(np.array([1]), np.array([[2.0, 2.0, 0.9, 1.0]]))
    assert jump_step(none, state) is state


def test_searches_run_after_each_quarter_of_ml_but_the_last() -> None:
    rec = ReconstructionConfig(iterations=20, position_correction=True)
    options = plan_from(rec, origins=np.zeros((4, 2)))[1].algorithm.options  # type: ignore[attr-defined]
    assert options.searches == (20 + 24, 20 + 49, 20 + 74) and options.radius == 10
    for update in ({"ml_iterations": 0}, {"position_search": 0}):
        other = rec.model_copy(update=update)
        plan = plan_from(other, origins=np.zeros((4, 2)))
        assert all(stage.algorithm.options.searches == () for stage in plan)  # type: ignore[attr-defined]
    assert options.linear_gain(19) == 0.0 and options.linear_gain(20) == LINEAR_GAIN > 0
    dm_only = plan_from(rec.model_copy(update={"ml_iterations": 0}), origins=np.zeros((4, 2)))
    assert dm_only[0].algorithm.options.linear_gain(5) == LINEAR_GAIN  # type: ignore[attr-defined]
    for ml, searches in ((1, ()), (2, (20,)), (3, (20, 21))):  # never after the last
        short = plan_from(rec.model_copy(update={"ml_iterations": ml}), origins=np.zeros((4, 2)))
        assert short[1].algorithm.options.searches == searches  # type: ignore[attr-defined]


def test_a_live_runs_final_plan_moves_every_iteration_number() -> None:
    """A live run's final plan starts at iteration ``first``: position correction's start,
    stop, ML refinement and searches move with it (the linear part then left to ML)."""
    from ptychograph.follow import final_plan
    from ptychograph.problem import ScanSummary

    rec = ReconstructionConfig(iterations=20, position_correction=True)
    options = plan_from(rec, origins=np.zeros((4, 2)))[1].algorithm.options  # type: ignore[attr-defined]
    moved = options.moved(500)
    assert (moved.start, moved.stop, moved.refine) == (502, 510, 520)
    assert moved.searches == (544, 569, 594) and moved.radius == options.radius
    assert moved.linear_gain(519) == 0.0 and moved.linear_gain(520) == LINEAR_GAIN
    config = parse_config(
        {
            "data": {"path": "x.cxi"},
            "reconstruction": {"position_correction": True},
            "follow": {"final_iterations": 20},
        }
    )
    scan = simulate(SimulationConfig(n_frames=4, frame_size=16, photons=None, seed=1)).scan
    plan = final_plan(config, ScanSummary.of(scan), np.zeros((4, 2)), 500)
    assert plan[1].algorithm.options.searches == (544, 569, 594)  # type: ignore[attr-defined]


def test_the_search_runs_alike_in_process_and_on_dask(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The search's gathers and per-worker tries give the same positions on a Dask cluster of
    two workers as in process; every search tries the worst view (no outlier threshold), and
    the worst views do move; DM's position steps leave the scan's linear part, ML's take it."""
    import ptychograph.algorithms.positions as positions

    monkeypatch.setattr(positions, "OUTLIER", 0.0)
    monkeypatch.setattr(positions, "SEARCH_SHARE", 0.1)
    sim = simulate(
        SimulationConfig(n_frames=30, frame_size=32, photons=1e6, seed=4, phantom="texture")
    )
    errors = np.random.default_rng(3).normal(0, 3.0, sim.scan.positions.shape)
    pixel = np.asarray(sim.scan.geometry.object_pixel)
    write_cxi(
        tmp_path / "bad.cxi", replace(sim.scan, positions=sim.scan.positions + errors * pixel)
    )
    rec = {"iterations": 6, "ml_iterations": 8, "position_correction": True}
    rec |= {"position_start": 0.0, "precision": "double"}
    config = _config(tmp_path / "bad.cxi", rec)
    tried: list[np.ndarray] = []
    jump = positions.jump_step

    def recording(found: ViewRows, state: State) -> State:
        tried.append(found.values.copy())
        return jump(found, state)

    gains: list[tuple[int, float]] = []
    step = positions.position_step

    def gain_of(systems: object, state: State, options: object, gain: float) -> State:
        gains.append((state.iteration, gain))
        return step(systems, state, options, gain)  # type: ignore[arg-type]

    monkeypatch.setattr(positions, "jump_step", recording)
    monkeypatch.setattr(positions, "position_step", gain_of)
    local = reconstruct_in_process(config, n_chunks=2)
    assert len(tried) == 3 and all(len(values) == 3 for values in tried)
    assert any(np.any(values[:, :2] != 0) for values in tried)  # some view found a better place
    # the scan's linear part: not moved by DM (ML follows), at LINEAR_GAIN in ML
    assert {gain for done, gain in gains if done <= 6} == {0.0}
    assert {gain for done, gain in gains if done > 6} == {LINEAR_GAIN}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        remote = reconstruct(config, client=client, write=False)
    assert local.state.origins is not None and remote.state.origins is not None
    np.testing.assert_allclose(remote.state.origins, local.state.origins, atol=1e-9)
    np.testing.assert_allclose(remote.state.obj, local.state.obj, rtol=1e-7, atol=1e-9)


def test_a_view_that_fits_nowhere_is_named(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """After position correction, a view whose frame no position explains (here a frame of
    another scan, of a textured object) is named first in a warning; a clean scan's run warns
    of nothing (its worst view measured 1.65 times the median's error; the foreign frame 56)."""
    sim = simulate(SimulationConfig(n_frames=30, frame_size=32, photons=1e6, seed=4))
    other = simulate(
        SimulationConfig(n_frames=30, frame_size=32, photons=1e6, seed=9, phantom="texture")
    )
    frames = sim.scan.frames.copy()
    frames[7] = other.scan.frames[20]
    write_cxi(tmp_path / "clean.cxi", sim.scan)
    write_cxi(tmp_path / "bad.cxi", replace(sim.scan, frames=frames))
    rec = {"iterations": 20, "ml_iterations": 8, "position_correction": True}
    for name in ("clean", "bad"):
        config = _config(tmp_path / f"{name}.cxi", rec)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ptychograph"):
            reconstruct_in_process(config)
        said = [r.getMessage() for r in caplog.records if "position correction" in r.getMessage()]
        if name == "clean":
            assert said == []
        else:
            # the frame spoils the object around it: its neighbours may be named after it
            assert len(said) == 1 and "(views 7," in said[0]


def test_a_failing_check_of_the_positions_never_fails_the_run(
    tmp_path, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    import ptychograph.solve as solve

    def broken(*args: object) -> None:
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(solve, "error_task", broken)
    sim = simulate(SimulationConfig(n_frames=12, frame_size=32, photons=1e6, seed=4))
    write_cxi(tmp_path / "s.cxi", sim.scan)
    rec = {"iterations": 4, "ml_iterations": 2, "position_correction": True}
    config = _config(tmp_path / "s.cxi", rec)
    with caplog.at_level("WARNING", logger="ptychograph"):
        result = reconstruct_in_process(config)
    assert result.state.origins is not None
    said = [r.getMessage() for r in caplog.records]
    assert "the corrected positions were not checked: RuntimeError" in said


@pytest.mark.parametrize("mean", [0.01, 0.3, 1.0, 5.0, 50.0, 3000.0])
def test_amplitude_noise_is_the_poisson_expectation(mean: float) -> None:
    counts = np.random.default_rng(1).poisson(mean, 400_000)
    sampled = float(np.mean((np.sqrt(counts) - np.sqrt(mean)) ** 2))
    expected = float(amplitude_noise(np.array([mean]), 1.0)[0])
    assert expected == pytest.approx(sampled, rel=0.02)
    # in frames of counts divided by 100: the same in those units
    scaled = float(amplitude_noise(np.array([mean / 100]), 0.01)[0])
    assert scaled == pytest.approx(expected / 100, rel=1e-9)
    assert float(amplitude_noise(np.array([0.0]), 1.0)[0]) == 0.0


def test_views_that_fit_to_the_noise_score_alike_however_bright() -> None:
    """Half the object transmits a fifth of the light: its views' relative errors stand 3-4x
    the median from noise alone (measured 3.95 at 1e6 photons), which would name them stuck;
    against the Poisson noise every view of the true model scores about 1, in counts and in
    counts divided by 100."""
    sim = simulate(SimulationConfig(n_frames=60, frame_size=32, photons=None, seed=5))
    probe, obj = sim.probe.astype(complex), sim.obj.astype(complex)
    origins = np.round(sim.origins)
    obj = obj * np.where(np.arange(obj.shape[2]) > obj.shape[2] // 2, 0.45, 1.0)
    views = exit_waves(probe[None], extract_views(obj, origins.astype(np.int64), (32, 32)))
    power = far_field_intensity(views)
    scale = 1e6 / power.sum(axis=(1, 2)).max()
    frames = np.random.default_rng(0).poisson(power * scale).astype(float)
    chunk = make_chunk(np.sqrt(frames), None, origins, probe * np.sqrt(scale), obj)
    relative = view_errors(chunk, probe * np.sqrt(scale), obj)
    assert relative.max() > OUTLIER * np.median(relative)
    for unit in (1.0, 0.01):
        probe_u = probe * np.sqrt(scale * unit)
        chunk = make_chunk(np.sqrt(frames * unit), None, origins, probe_u, obj)
        scores = view_errors(chunk, probe_u, obj, unit=unit)
        assert np.all(np.abs(scores - 1.0) < 0.25)
        assert stuck_views(ViewRows(np.arange(60), scores[:, None])).size == 0

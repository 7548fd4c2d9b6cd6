"""Following a growing scan (``run --follow``): the start rule, the growing object frame, new
views taken between iterations, placement of new chunks and workers that join."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import xarray as xr
from conftest import CliResult, Workspace, write_yaml

from ptychograph.config import parse_config
from ptychograph.config_live import FollowConfig
from ptychograph.executors.placement import n_views, rebalance, spread
from ptychograph.growth import ScanFrame, adopt_task, drop_task, fourier_shift, pad_object
from ptychograph.problem import layout
from ptychograph.resident import ResidentViews, reset_views
from ptychograph.scan import HC_EV_M, Geometry
from ptychograph.state import State
from ptychograph.views import current_views

GEOMETRY = Geometry(HC_EV_M / 8000.0, 2.0, (75e-6, 75e-6), (16, 16))
PIXEL = GEOMETRY.object_pixel


def _config(**rec: object) -> object:
    return parse_config({"data": {"path": "x.zarr"}, "reconstruction": rec})


def spiral(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) metres: a spiral from the centre outwards, jittered by fractions of a pixel."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    radius, angle = 1.5 * np.sqrt(k), 2.4 * k
    pixels = np.stack([radius * np.sin(angle), radius * np.cos(angle)], 1) + rng.random((n, 2))
    return pixels * np.asarray(PIXEL)


@pytest.mark.parametrize(
    ("expected", "frames"), [(None, 16), (1000, 200), (40, 16), (10, 10), (100, 20)]
)
def test_start_rule(expected: int | None, frames: int) -> None:
    """start_frames, or start_fraction of the expected frames when more, never more than all."""
    assert FollowConfig().frames_to_start(expected) == frames


def test_follow_keys_are_checked() -> None:
    raw = {"data": {"path": "x.zarr", "follow": True}, "follow": {"check_every": 0}}
    with pytest.raises(Exception, match="follow.check_every"):
        parse_config(raw)


def _views(obj: np.ndarray, origins: np.ndarray, size: int = 16) -> np.ndarray:
    corners = np.floor(origins + 1e-9).astype(int)
    return np.stack([obj[0, r : r + size, c : c + size] for r, c in corners])


@pytest.mark.parametrize("subpixel", ["fourier", "off"])
def test_a_growing_scan_pads_the_object_and_ends_in_the_batch_layout(subpixel: str) -> None:
    """Old views see the same object after the growth; new views fit in the object; at the end
    origins and object size are the batch layout's, the object moved with them."""
    config = _config(subpixel=subpixel)
    rec, data = config.reconstruction, config.data  # type: ignore[attr-defined]
    positions = spiral(60)
    first = layout(positions[:12], GEOMETRY, rec, data)
    frame = ScanFrame.start(positions[:12], GEOMETRY, rec, data)
    np.testing.assert_allclose(frame.origins(positions[:12]), first.origins, atol=1e-9)
    rng = np.random.default_rng(1)
    obj = np.exp(1j * rng.random((1, *first.obj_shape))).astype(np.complex64)
    state = State(np.ones((1, 16, 16), np.complex64), obj, 3, first.origins)
    for stop in (30, 45, 60):
        grown = frame.extend(state, positions[:stop])
        assert grown.origins is not None and len(grown.origins) == stop
        assert state.origins is not None
        held = len(state.origins)
        np.testing.assert_array_equal(
            _views(grown.obj, grown.origins[:held]), _views(state.obj, state.origins)
        )
        assert grown.origins.min() >= rec.object_margin - 1e-9
        assert np.all(grown.origins.max(axis=0) + 16 < grown.obj.shape[1:])
        state = grown
    final = frame.settle(state, positions)
    batch = layout(positions, GEOMETRY, rec, data)
    assert final.obj.shape[1:] == batch.obj_shape and final.origins is not None
    np.testing.assert_allclose(final.origins, batch.origins, atol=1e-6)
    assert final.obj.dtype == np.complex64


def test_settle_moves_the_object_by_the_fraction_of_a_pixel() -> None:
    obj = np.exp(1j * np.sin(np.arange(40)[:, None] / 3.0 + np.arange(32)[None] / 5.0))[None]
    moved = fourier_shift(obj, np.array([0.0, 1.0]))  # a whole pixel: exact
    np.testing.assert_allclose(moved[0, :, 1:], obj[0, :, :-1], atol=1e-9)
    half = fourier_shift(fourier_shift(obj, np.array([0.25, -0.5])), np.array([-0.25, 0.5]))
    np.testing.assert_allclose(half, obj, atol=1e-9)


def test_padding_fills_with_the_unlit_object() -> None:
    obj = np.full((2, 5, 6), 2.0 + 0j)
    obj[:, 2, 3] = 7.0  # lit pixels inside
    padded = pad_object(obj, np.array([2, 0]), np.array([1, 3]))
    assert padded.shape == (2, 8, 9)
    np.testing.assert_array_equal(padded[:, 2:7, :6], obj)
    assert np.all(padded[:, :2] == 2.0) and np.all(padded[:, :, 6:] == 2.0)


def test_new_views_start_at_p_o_and_resident_views_keep_their_exit_waves() -> None:
    rng = np.random.default_rng(2)
    frames = rng.random((20, 16, 16)).astype(np.float32)
    origins = rng.random((20, 2)) * 10 + 2
    probe = (rng.normal(size=(2, 16, 16)) + 1j * rng.normal(size=(2, 16, 16))).astype(np.complex64)
    obj = np.exp(1j * rng.random((1, 32, 32))).astype(np.complex64)
    views = ResidentViews()
    views.pending.append((frames[:12], origins[:12], 0))
    state = State(probe, obj, 0, origins[:12])
    reset_views(views, state)
    views.chunks[0].exit_waves += 0.5  # a DM iterate: no longer P O
    resident = views.chunks[0].exit_waves.copy()
    rotation = np.array([[0, 1], [1, 0]], dtype=np.complex64)  # the modes swap
    views.pending.append((frames[12:], origins[12:], 12))
    count = adopt_task(views, State(probe, obj, 4, origins, rotation))
    assert count == 20 and [c.first for c in views.chunks] == [0, 12]
    np.testing.assert_allclose(views.chunks[0].exit_waves, resident[:, ::-1], rtol=1e-6)
    new = views.chunks[1]
    np.testing.assert_allclose(
        new.exit_waves, current_views(new, slice(0, 8), probe, obj), rtol=1e-5, atol=1e-6
    )
    assert drop_task(views, [12]) == 12 and [c.first for c in views.chunks] == [0]


def test_new_chunks_go_to_the_least_loaded_and_joined_workers_take_views() -> None:
    placement = {"a": [(0, 10), (20, 30)], "b": [(10, 20)]}
    placement, new = spread(placement, ["a", "b"], [(30, 40), (40, 45)])
    assert new == {"b": [(30, 40)], "a": [(40, 45)]}
    placement, new = spread(placement, ["a", "b", "c"], [(45, 50)])
    assert new == {"c": [(45, 50)]}
    moves = rebalance(placement, ["c"])
    assert moves and all(target == "c" for _, target, _ in moves)
    loads = sorted(n_views(r) for r in placement.values())
    assert loads[-1] - loads[0] <= 10
    held = sorted(rng for ranges in placement.values() for rng in ranges)
    assert held == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 45), (45, 50)]


def test_follow_needs_a_frames_store(workspace: Workspace, cli: Callable[..., CliResult]) -> None:
    """A CXI file cannot be followed; probe_modes auto is refused; nothing is written."""
    result = cli("run", workspace.config_path, "--follow")
    result.assert_input_error("data.follow", "not a frames store")
    config = workspace.base_config()
    config["data"] = {"path": str(workspace.root / "scan.zarr"), "follow": True}
    config["reconstruction"]["probe_modes"] = "auto"
    write_yaml(workspace.config_path, config)
    cli("run", workspace.config_path).assert_input_error("reconstruction.probe_modes", "auto")
    assert list(workspace.out.iterdir()) == []


def test_run_follow_on_a_complete_store_runs_the_final_iterations(
    workspace: Workspace, cli: Callable[..., CliResult]
) -> None:
    """``--follow`` on a store whose scan is already complete: the final iterations only, and
    the result of a batch run's layout."""
    store = workspace.root / "live.zarr"
    made = cli("simulate", store, "--live", "--rate", "1000", "--frames", "30", "--size", "32")
    assert made.code == 0, made.stderr
    config = workspace.base_config()
    config["data"] = {"path": str(store)}
    config["follow"] = {"final_iterations": 3}
    config["cluster"] = {"n_workers": 1}
    write_yaml(workspace.config_path, config)
    result = cli("run", workspace.config_path, "--follow")
    assert result.code == 0, result.stderr
    assert "the scan is complete (30 of 30 frames) at iteration 0" in result.stderr
    with xr.open_zarr(workspace.store, consolidated=False) as ds:
        assert ds["fourier_error"].shape == (3,) and ds.attrs["config"]["data"]["follow"]
        assert ds["view_origin"].shape == (30, 2)

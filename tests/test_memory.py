"""Memory budget: estimates by kind, batch size lowered to fit, refusal with the numbers."""

from __future__ import annotations

import pytest

from ptychograph.config import parse_config
from ptychograph.errors import InputError
from ptychograph.executors.placement import plan_memory
from ptychograph.memory import SCRATCH_COPIES, estimate, fit_batch


def test_estimate_counts_each_part() -> None:
    need = estimate(1000, (188, 188), (2000, 2000), 5, 1, "double", 64)
    assert need.exit_waves == 1000 * 5 * 188 * 188 * 16
    assert need.frames == 1000 * 188 * 188 * 8
    assert need.scratch == SCRATCH_COPIES * 64 * 5 * 188 * 188 * 16
    assert need.total == need.exit_waves + need.frames + need.scratch + need.object_sums
    single = estimate(1000, (188, 188), (2000, 2000), 5, 1, "single", 64)
    assert single.exit_waves * 2 == need.exit_waves
    assert "GiB" in need.describe()


def test_batch_is_lowered_before_refusing() -> None:
    args = (1000, (128, 128), (1000, 1000), 3, 1, "single")
    full = estimate(*args, 64)
    room = (full.total - full.scratch // 2) / 0.8  # fits only with a smaller batch
    lowered = fit_batch(*args, 64, room)
    assert lowered.batch_size < 64
    assert lowered.total <= 0.8 * room
    assert fit_batch(*args, 64, 0).batch_size == 64  # unknown limit: no check
    with pytest.raises(InputError, match="memory") as err:
        fit_batch(*args, 64, full.exit_waves / 2)
    assert "exit waves" in str(err.value) and "GiB" in str(err.value)


class FakeClient:
    def __init__(self, limit: float) -> None:
        self.limit = limit

    def scheduler_info(self) -> dict:  # type: ignore[type-arg]
        return {"workers": {"w1": {"memory_limit": self.limit}, "w2": {"memory_limit": self.limit}}}


def test_plan_memory_checks_every_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = parse_config(
        {
            "data": {"path": str(tmp_path / "x.cxi")},
            "reconstruction": {"probe_modes": 5, "precision": "double", "batch_size": 64},
        }
    )
    placement = {"w1": [(0, 500)], "w2": [(500, 1000)]}
    assert plan_memory(FakeClient(64 * 2**30), placement, (128, 128), (900, 900), config) == 64
    with pytest.raises(InputError, match="memory"):
        plan_memory(FakeClient(2**28), placement, (128, 128), (900, 900), config)

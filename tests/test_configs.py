"""Every example in configs/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptychograph.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.output.path.suffix == ".zarr"
    assert config.data.path.is_absolute()

"""The bad-input corpus: every way a run's input can be wrong, generated, never committed.

Each :class:`Case` starts from a good simulated scan (:class:`GoodScan`) and writes one broken
input into an empty folder: a CXI file edited with h5py (:mod:`.cxi_cases`), a Zarr frames
store corrupted after ``write_frames_store`` (:mod:`.zarr_cases`), or a broken config or
``--set`` override (:mod:`.yaml_cases`). ``tests/test_bad_inputs.py`` runs them all.
"""

from __future__ import annotations

from .case import CONFIG_NAME, KINDS, OUTPUT, Case, GoodScan, Kind, base_config, write_config
from .cxi_cases import CASES as CXI_CASES
from .yaml_cases import CASES as YAML_CASES
from .zarr_cases import CASES as ZARR_CASES

CASES: list[Case] = [*CXI_CASES, *ZARR_CASES, *YAML_CASES]

__all__ = [
    "CASES",
    "CONFIG_NAME",
    "KINDS",
    "OUTPUT",
    "Case",
    "GoodScan",
    "Kind",
    "base_config",
    "write_config",
]

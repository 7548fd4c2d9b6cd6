"""Choosing the number of probe modes automatically (``reconstruction.probe_modes: auto``).

The seed paper's rule (Dong et al., arXiv:1808.10375; docs/design.md, "Automatic mode count"):
keep adding probe modes while the newest one carries at least a threshold share of the probe
power (default 1 %). With orthogonal modes sorted by power that rule keeps exactly the modes
whose share is at least the threshold, so it is applied in one run, without trial runs: the run
starts with ``max_probe_modes`` modes (extra ones as blurred, perturbed copies of the first); at
``mode_decision`` of the iterations (default 40 %, before the averaging window) the modes are
orthogonalised and those below the threshold are dropped. Every exit wave is then rebuilt from
the kept modes (psi = P O), which keeps DM consistent. Adding modes one at a time instead was
tried and rejected: a new mode needs far more iterations to grow than a schedule can give it.
"""

from __future__ import annotations

import logging

import numpy as np

from ptychograph.backend import to_host
from ptychograph.config import Config
from ptychograph.driver import SyncHook
from ptychograph.modes import orthogonalise, power_shares
from ptychograph.state import State, SyncPoint

log = logging.getLogger("ptychograph")


class ModeChooser:
    """Keeps the orthogonalised probe modes whose power share reaches the threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.chosen: int | None = None

    def __call__(self, sync: SyncPoint) -> State | None:
        probe = to_host(sync.state.probe)
        modes, _ = orthogonalise(probe)
        shares = power_shares(modes)
        keep = max(1, int(np.sum(shares >= self.threshold)))
        self.chosen = keep
        text = ", ".join(f"{100 * s:.2f} %" for s in shares)
        log.info(
            "iteration %d: probe mode power %s; %d mode(s) carry at least %.3g %%: keeping %d",
            sync.iteration,
            text,
            keep,
            100 * self.threshold,
            keep,
        )
        if keep == probe.shape[0]:
            return None
        return sync.state.replace(probe=modes[:keep].astype(probe.dtype), rotation=None)


def decision_iteration(config: Config) -> int:
    """The iteration after which the mode count is decided (at least 1)."""
    rec = config.reconstruction
    return max(1, int(round(rec.mode_decision * rec.iterations)))


def mode_hooks(config: Config) -> list[SyncHook]:
    """The sync hook that chooses the mode count, if ``probe_modes`` is auto."""
    if config.reconstruction.probe_modes != "auto":
        return []
    at = decision_iteration(config)
    return [SyncHook(at, ModeChooser(config.reconstruction.mode_threshold), until=at + 1)]

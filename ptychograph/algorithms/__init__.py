"""Reconstruction algorithms, each one iteration written once against an executor.

:func:`plan_from` turns the configuration into the run's plan: which algorithm does which
iterations. A new algorithm is a module here with its options and its
:class:`~ptychograph.algorithms.base.Algorithm`, plus its stage in :func:`plan_from`; the driver
and the executors do not change (docs/design.md, "Seams").
"""

from __future__ import annotations

from ptychograph.algorithms.base import Algorithm, Executor, IterationStats, Stage, stage_of
from ptychograph.algorithms.dm import DifferenceMap, DMOptions
from ptychograph.config import ReconstructionConfig


def dm_options(rec: ReconstructionConfig) -> DMOptions:
    """DM options from the ``reconstruction`` section."""
    return DMOptions(
        beta=rec.beta,
        overlap_passes=rec.overlap_passes,
        probe_update_start=rec.probe_update_start,
        regularisation=rec.regularisation,
        orthogonalise_probe=rec.orthogonalise_probe,
        noise_bound=rec.noise_bound,
    )


def plan_from(rec: ReconstructionConfig) -> list[Stage]:
    """The stages of a run: ``iterations`` of DM."""
    return [Stage(DifferenceMap(dm_options(rec)), 0, rec.iterations)]


__all__ = [
    "Algorithm",
    "DMOptions",
    "DifferenceMap",
    "Executor",
    "IterationStats",
    "Stage",
    "dm_options",
    "plan_from",
    "stage_of",
]

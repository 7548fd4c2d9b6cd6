"""Reconstruction algorithms, each one iteration written once against an executor.

:func:`plan_from` turns the configuration into the run's plan: which algorithm does which
iterations. A new algorithm is a module here with its options and its
:class:`~ptychograph.algorithms.base.Algorithm`, plus its stage in :func:`plan_from`; the driver
and the executors do not change (docs/design.md, "Seams").
"""

from __future__ import annotations

import numpy as np

from ptychograph.algorithms.base import Algorithm, Executor, IterationStats, Stage, stage_of
from ptychograph.algorithms.dm import DifferenceMap, DMOptions
from ptychograph.algorithms.ml import MaximumLikelihood, MLOptions
from ptychograph.algorithms.positions import PositionCorrection, PositionOptions
from ptychograph.config import ReconstructionConfig
from ptychograph.problem import ScanSummary

#: ML's intensity floor as a fraction of the mean measured intensity per good pixel.
ML_FLOOR = 1e-3


def dm_options(rec: ReconstructionConfig, summary: ScanSummary | None = None) -> DMOptions:
    """DM options from the ``reconstruction`` section. ``noise_bound`` is in photons: it is
    scaled to the frames' units by the scan's photon unit (0 when that is unknown, which turns
    the relaxation off; docs/design.md, "Noise")."""
    unit = 1.0 if summary is None else summary.photon_unit
    return DMOptions(
        beta=rec.beta,
        overlap_passes=rec.overlap_passes,
        probe_update_start=rec.probe_update_start,
        regularisation=rec.regularisation,
        orthogonalise_probe=rec.orthogonalise_probe,
        noise_bound=rec.noise_bound * unit,
    )


def ml_options(rec: ReconstructionConfig, summary: ScanSummary | None = None) -> MLOptions:
    """ML options: the intensity floor from the scan's mean frame (1 when unknown)."""
    mean = 1.0
    if summary is not None:
        frame = summary.mean_frame if summary.good is None else summary.mean_frame[summary.good]
        mean = float(np.mean(frame)) if frame.size else 1.0
    floor = ML_FLOOR * mean if mean > 0 else ML_FLOOR
    return MLOptions(floor, rec.regularisation, rec.iterations + rec.ml_iterations)


def position_options(
    rec: ReconstructionConfig, origins: np.ndarray, photon_unit: float = 0.0
) -> PositionOptions:
    """Position-correction options: during DM from ``position_start`` until ``position_stop``
    (fractions of the DM iterations), and through every ML iteration, with the whole-pixel
    search after each quarter of the ML iterations but the last; ``origins`` : (N, 2) measured
    view corners; ``photon_unit`` : one photon in the frames' units (0: unknown)."""
    start = int(round(rec.position_start * rec.iterations))
    stop = None if rec.position_stop >= 1.0 else int(round(rec.position_stop * rec.iterations))
    refine = rec.iterations if rec.ml_iterations else None
    searches: tuple[int, ...] = ()
    if rec.ml_iterations and rec.position_search:
        # after each quarter but the last (never after the last iteration: a jump needs ML)
        after = {rec.ml_iterations * quarter // 4 for quarter in (1, 2, 3)} - {0}
        searches = tuple(sorted(rec.iterations + n - 1 for n in after))
    initial = np.asarray(origins, dtype=np.float64)
    return PositionOptions(
        start, rec.position_max_step, rec.position_max_shift, initial, stop, refine,
        searches, rec.position_search, photon_unit,
    )  # fmt: skip


def plan_from(
    rec: ReconstructionConfig,
    summary: ScanSummary | None = None,
    origins: np.ndarray | None = None,
) -> list[Stage]:
    """The stages of a run: ``iterations`` of DM, then ``ml_iterations`` of ML refinement;
    with ``position_correction`` each followed by a position step (``origins`` : (N, 2) the
    measured view corners, required then)."""
    plan: list[Stage] = [Stage(DifferenceMap(dm_options(rec, summary)), 0, rec.iterations)]
    if rec.ml_iterations:
        stop = rec.iterations + rec.ml_iterations
        plan.append(Stage(MaximumLikelihood(ml_options(rec, summary)), rec.iterations, stop))
    if rec.position_correction:
        if origins is None:
            raise ValueError("position correction needs the measured view origins")
        unit = 0.0 if summary is None else summary.photon_unit
        options = position_options(rec, origins, unit)
        plan = [
            Stage(PositionCorrection(stage.algorithm, options), stage.start, stage.stop)
            for stage in plan
        ]
    return plan


__all__ = [
    "Algorithm",
    "DMOptions",
    "DifferenceMap",
    "Executor",
    "IterationStats",
    "MLOptions",
    "PositionCorrection",
    "PositionOptions",
    "MaximumLikelihood",
    "Stage",
    "dm_options",
    "ml_options",
    "position_options",
    "plan_from",
    "stage_of",
]

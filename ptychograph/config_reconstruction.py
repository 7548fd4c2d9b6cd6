"""The ``reconstruction`` section of a run's configuration: DM, ML refinement and position
correction (docs/design.md, "One DM iteration"). Re-exported by :mod:`ptychograph.config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ptychograph.config_cluster import Section as _Section

#: ML iterations by default with position correction (docstring of ``_defaults_for_positions``).
ML_WITH_POSITIONS = 100


class ReconstructionConfig(_Section):
    """The Difference Map iteration (docs/design.md, "One DM iteration")."""

    @field_validator("probe_modes")
    @classmethod
    def _mode_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 32:
            raise ValueError(f"must be between 1 and 32 or 'auto', got {value}")
        return value

    @property
    def total_iterations(self) -> int:
        """DM and ML iterations together: the length of the run."""
        return self.iterations + self.ml_iterations

    @property
    def start_probe_modes(self) -> int:
        """Probe modes at the start: the number asked for, or max_probe_modes for auto (also
        the most the run holds, which memory planning uses)."""
        return self.max_probe_modes if self.probe_modes == "auto" else int(self.probe_modes)

    iterations: int = Field(200, ge=1, le=1_000_000, description="DM iterations.")
    beta: float = Field(0.8, gt=0.0, le=1.0, description="DM feedback (1 = classic DM).")
    probe_modes: int | Literal["auto"] = Field(
        1,
        description="Number of incoherent probe modes (1-32), or auto: start with "
        "max_probe_modes and keep those carrying at least mode_threshold of the power.",
    )
    mode_threshold: float = Field(
        0.01, gt=0.0, lt=0.5, description="auto modes: least power share a kept mode carries."
    )
    max_probe_modes: int = Field(5, ge=2, le=32, description="auto modes: at most this many.")
    mode_decision: float = Field(
        0.4, gt=0.0, lt=1.0, description="auto modes: fraction of the run after which to decide."
    )
    object_modes: int = Field(1, ge=1, le=8, description="Number of object modes.")
    precision: Literal["single", "double"] = Field(
        "single", description="single = complex64, double = complex128."
    )
    seed: int = Field(0, ge=0, description="Seed of every random choice; fixes the run.")
    overlap_passes: int = Field(
        1,
        ge=1,
        le=50,
        description="Alternating probe/object passes per iteration (default 1, fastest; 2 "
        "with position_correction).",
    )
    probe_update_start: int = Field(
        2, ge=0, description="Iteration from which the probe is updated (0 = from the start)."
    )
    regularisation: float = Field(
        1e-2, gt=0.0, lt=1.0, description="Overlap division damping, fraction of max(denom)."
    )
    orthogonalise_probe: bool = Field(
        True, description="Orthogonalise probe modes every iteration (psi rotated alike)."
    )
    noise_bound: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Relax the Fourier constraint for views already within this many times the "
        "Poisson noise (0 = plain eq. 4).",
    )
    average_last: float = Field(
        0.2, ge=0.0, lt=1.0, description="Fraction of final iterations averaged into the result."
    )
    subpixel: Literal["fourier", "off"] = Field(
        "fourier",
        description="Sub-pixel positions: fourier (phase-ramp shift of the probe, offsets "
        "rounded to 1/8 px) or off (positions rounded to whole pixels).",
    )
    object_margin: int = Field(8, ge=0, le=4096, description="Object pixels around the scan.")
    batch_size: int = Field(64, ge=1, le=65536, description="Views per vectorised batch.")
    ml_iterations: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Maximum-likelihood (Poisson) refinement iterations after the DM ones "
        "(default 0; 100 with position_correction).",
    )
    position_correction: bool = Field(
        False, description="Refine each view's scan position during the run."
    )
    position_start: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="position correction: fraction of the DM iterations before it starts.",
    )
    position_stop: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="position correction: fraction of the DM iterations after which the "
        "positions stay fixed until the ML refinement, which refines them again (default 0.8; "
        "0.5 with ML refinement).",
    )
    position_max_step: float = Field(
        0.5, gt=0.0, le=8.0, description="position correction: most pixels a view moves per step."
    )
    position_max_shift: float = Field(
        16.0,
        gt=0.0,
        le=4096.0,
        description="position correction: most pixels a view may move from its given position.",
    )
    position_search: int = Field(
        10,
        ge=0,
        le=64,
        description="position correction: reach in pixels of the whole-pixel search, after "
        "each quarter of the ML refinement but the last, for views whose data fit far worse "
        "than the others' (0: no search).",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_positions(cls, data: Any) -> Any:
        """Defaults that position correction changes, where the configuration leaves them out
        (benchmarks/RESULTS.md, "Position correction, simulated"):

        * ``overlap_passes`` 2: with 1 the object of each iteration is rougher and the
          corrected positions end farther from the truth (0.52 px RMS against 0.42);
        * ``ml_iterations`` :data:`ML_WITH_POSITIONS`, which refine the positions too, and
          ``position_stop`` 0.5 with them: DM's iterates fluctuate, and views that DM corrects
          wander with them in the scan's smooth deformations, which the data barely see; ML's
          converging iterates settle them (a textured object, from the true positions:
          0.81 px RMS after DM's correction, 0.07 px with ML's alone).
        """
        if not isinstance(data, dict):
            return data
        if data.get("position_correction") not in (True, "true", "True", 1):
            return data
        defaults = {"overlap_passes": 2, "ml_iterations": ML_WITH_POSITIONS}
        data = {**defaults, **data}
        if "position_stop" not in data and data["ml_iterations"] not in (0, "0"):
            data["position_stop"] = 0.5
        return data

    @field_validator("subpixel", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` as false; take it as the word it was."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _positions_need_subpixel(self) -> ReconstructionConfig:
        if self.position_correction and self.subpixel == "off":
            raise ValueError(
                "position_correction moves views by fractions of a pixel; it needs "
                "subpixel: fourier"
            )
        if self.position_correction and self.position_stop <= self.position_start:
            raise ValueError(
                f"position_stop ({self.position_stop}) must be above position_start "
                f"({self.position_start})"
            )
        return self

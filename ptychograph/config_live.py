"""The ``follow`` section: how a run follows a scan that is still being measured.

A run follows its scan with ``ptychograph run CONFIG --follow`` or ``data.follow: true``
(docs/design.md, "Live reconstruction"); the keys here say when it starts, how often it picks
up new frames, how it finishes and how long it waits for a scan that stopped growing.
"""

from __future__ import annotations

import math

from pydantic import Field

from ptychograph.config_cluster import Section


class FollowConfig(Section):
    """Following a growing frames store (``ptychograph.live.FrameWriter``)."""

    start_frames: int = Field(
        16,
        ge=1,
        description="Start once at least this many frames are published (the start rule also "
        "asks for start_fraction of the expected frames, when the scan says how many).",
    )
    start_fraction: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Start once this fraction of the expected frames is published (ignored "
        "when the store does not say how many frames to expect).",
    )
    check_every: int = Field(
        5, ge=1, le=10_000, description="Iterations between looks for new frames (sync points)."
    )
    final_iterations: int = Field(
        50,
        ge=1,
        le=1_000_000,
        description="DM iterations over every frame once the scan is complete (then "
        "reconstruction.ml_iterations of ML, as a batch run).",
    )
    idle_timeout: float = Field(
        120.0,
        gt=0.0,
        le=86_400.0,
        description="Seconds without a new frame (and no completion mark) after which the "
        "scan is taken as ended: the run finishes with the frames it has.",
    )
    poll_interval: float = Field(
        0.5, gt=0.0, le=60.0, description="Seconds between looks at the store while waiting."
    )

    def frames_to_start(self, expected: int | None) -> int:
        """Frames needed before the first iteration: ``start_frames``, or ``start_fraction``
        of ``expected`` when that is more (never more than ``expected``)."""
        if expected is None:
            return self.start_frames
        wanted = max(self.start_frames, math.ceil(self.start_fraction * expected))
        return min(expected, wanted)

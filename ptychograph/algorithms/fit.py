"""How well a state fits the data: the model error R = sum (sqrt(I) - |F P O|)^2 / sum I.

Used by the driver to choose the returned estimates (docs/design.md, "Averaging"): the average
of the last iterates is returned only when its model fits the data at least as well as the last
iterate's.
"""

from __future__ import annotations

from ptychograph.partials import FourierError, tree_sum
from ptychograph.positions import follow_all
from ptychograph.resident import ResidentViews
from ptychograph.state import State
from ptychograph.views import model_error


def model_error_task(views: ResidentViews, state: State) -> FourierError:
    """Per-slot terms of the model error of ``state`` (psi untouched)."""
    follow_all(views.chunks, state.origins)
    probe, obj = views.device(state.probe), views.device(state.obj)
    parts = [model_error(c, probe, obj, views.batch_size) for c in views.chunks]
    return tree_sum(parts) if parts else FourierError(0.0, 0.0)

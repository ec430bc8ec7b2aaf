"""The pruner: score → plan → remove → repair, one shot or iterative (``layerprune.Pruner``)."""

from layerprune.calibration import Calibration, Repair
from layerprune.pruner.pipeline import PruneResult, PruneStep, Pruner, Scored

__all__ = ["Calibration", "PruneResult", "PruneStep", "Pruner", "Repair", "Scored"]

"""The pruner: score → plan → remove → repair, one shot or iterative (``layerprune.Pruner``)."""

from layerprune.calibration import Calibration, Repair
from layerprune.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {".pipeline": ["PruneResult", "PruneStep", "Pruner", "Scored"]})

__all__ = ["Calibration", "PruneResult", "PruneStep", "Pruner", "Repair", "Scored"]

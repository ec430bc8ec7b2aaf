"""layerprune: prune whole layers out of deep networks, chosen by interchangeable criteria."""

from __future__ import annotations

from layerprune.version import __version__

from layerprune.errors import (  # noqa: E402
    CheckpointError, DatasetError, LayerpruneError, ModelError, SurgeryError, UnknownNameError,
)
from layerprune.registry import Registry  # noqa: E402
from layerprune import models  # noqa: E402,F401  (registers the CIFAR models with timm)
from layerprune.models import create_model, list_models, load_checkpoint  # noqa: E402
from layerprune.data import DatasetBundle, build_dataset, list_datasets, make_loader  # noqa: E402
from layerprune.surgery import (  # noqa: E402
    Block, PruneSpec, apply_spec, find_blocks, load_pruned, measure_latency, model_cost, remove_blocks,
    save_pruned,
)
from layerprune.criteria import (  # noqa: E402
    Criterion, CriterionResult, ModularityCurve, ScoringContext, get_criterion, list_criteria, load_plugin,
    modularity, modularity_curve, register_criterion, score_blocks, select_blocks,
)
from layerprune.calibration import Calibration, Repair  # noqa: E402
from layerprune.pruner import PruneResult, PruneStep, Pruner  # noqa: E402
from layerprune.export import Tolerance, export_model  # noqa: E402

__all__ = [
    "Block", "CheckpointError", "DatasetBundle", "DatasetError", "LayerpruneError", "ModelError",
    "PruneSpec", "Registry", "SurgeryError", "UnknownNameError", "__version__", "apply_spec",
    "build_dataset", "create_model", "find_blocks", "list_datasets", "list_models", "load_checkpoint",
    "load_pruned", "make_loader", "measure_latency", "model_cost", "remove_blocks", "save_pruned",
    "Criterion", "CriterionResult", "ModularityCurve", "ScoringContext", "get_criterion", "list_criteria",
    "load_plugin", "modularity", "modularity_curve", "register_criterion", "score_blocks", "select_blocks",
    "Calibration", "PruneResult", "PruneStep", "Pruner", "Repair", "Tolerance", "export_model",
]

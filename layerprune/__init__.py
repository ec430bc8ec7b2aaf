"""layerprune: prune whole layers out of deep networks, chosen by interchangeable criteria.

``import layerprune`` is cheap: the public names below are loaded on first use (PEP 562), so the
command line answers ``--help`` without importing torch or timm. The CIFAR models are registered
with timm as soon as timm is imported (or at once, when it already is), so
``timm.create_model("cifar_resnet56")`` works after ``import layerprune``, in either order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from layerprune.version import __version__
from layerprune.errors import (  # noqa: E402
    CheckpointError, DatasetError, LayerpruneError, ModelError, SurgeryError, UnknownNameError,
)
from layerprune.registry import Registry  # noqa: E402

# public name → the module that defines it, imported on first use
_LAZY = {
    **dict.fromkeys(("create_model", "list_models", "load_checkpoint"), "layerprune.models"),
    **dict.fromkeys(("DatasetBundle", "build_dataset", "list_datasets", "make_loader"), "layerprune.data"),
    **dict.fromkeys(("Block", "PruneSpec", "apply_spec", "find_blocks", "load_pruned", "measure_latency",
                     "model_cost", "remove_blocks", "save_pruned"), "layerprune.surgery"),
    **dict.fromkeys(("Criterion", "CriterionResult", "ModularityCurve", "ScoringContext", "get_criterion",
                     "list_criteria", "load_plugin", "modularity", "modularity_curve", "register_criterion",
                     "score_blocks", "select_blocks"), "layerprune.criteria"),
    **dict.fromkeys(("Calibration", "Repair"), "layerprune.calibration"),
    **dict.fromkeys(("PruneResult", "PruneStep", "Pruner"), "layerprune.pruner"),
    **dict.fromkeys(("Tolerance", "export_model"), "layerprune.export"),
}

__all__ = [
    "CheckpointError", "DatasetError", "LayerpruneError", "ModelError", "Registry", "SurgeryError",
    "UnknownNameError", "__version__", *_LAZY,
]


def __getattr__(name: str) -> Any:
    """A public name (or a subpackage, ``layerprune.surgery``) loaded on first use."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Imports :mod:`layerprune.models` (which registers the CIFAR models) right after timm."""

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; the other finders locate timm itself
        spec = importlib.util.find_spec("timm")
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            importlib.import_module("layerprune.models").register_with_timm()

        loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    importlib.import_module("layerprune.models").register_with_timm()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())

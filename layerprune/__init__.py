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

from layerprune.version import __version__
from layerprune.errors import (  # noqa: E402
    CheckpointError, DatasetError, FetchError, LayerpruneError, ModelError, SurgeryError, UnknownNameError,
)
from layerprune.lazy import lazy_exports  # noqa: E402
from layerprune.registry import Registry  # noqa: E402

# the public names, each imported from its module on first use
_EXPORTS = {
    "layerprune.models": ["create_model", "list_models", "load_checkpoint"],
    "layerprune.data": ["DatasetBundle", "build_dataset", "list_datasets", "make_loader"],
    "layerprune.surgery": ["Block", "PruneSpec", "apply_spec", "find_blocks", "load_pruned", "measure_latency",
                           "model_cost", "remove_blocks", "save_pruned"],
    "layerprune.criteria": ["Criterion", "CriterionResult", "ModularityCurve", "ScoringContext", "get_criterion",
                            "list_criteria", "load_plugin", "modularity", "modularity_curve", "register_criterion",
                            "score_blocks", "select_blocks"],
    "layerprune.calibration": ["Calibration", "Pack", "Repair"],
    "layerprune.pruner": ["PruneResult", "PruneStep", "Pruner"],
    "layerprune.export": ["Tolerance", "export_model"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CheckpointError", "DatasetError", "FetchError", "LayerpruneError", "ModelError", "Registry", "SurgeryError",
    "UnknownNameError", "__version__", *[name for names in _EXPORTS.values() for name in names],
]


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Imports :mod:`layerprune.models` (which registers the CIFAR models) right after timm.

    It stays in ``sys.meta_path`` until timm really runs: a library that only looks timm up
    (``importlib.util.find_spec("timm")``, as transformers does to see what is installed) gets a
    spec that is never executed, and the import that follows must still be caught."""

    def __init__(self) -> None:
        self._looking = False

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname != "timm" or self._looking:
            return None
        self._looking = True  # the other finders locate timm itself
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self._looking = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, finder = loader.exec_module, self

        def exec_module(module):
            run(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)  # once timm has run
            importlib.import_module("layerprune.models").register_with_timm()

        loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    importlib.import_module("layerprune.models").register_with_timm()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())

"""layerprune: prune whole layers out of deep networks, chosen by interchangeable criteria."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("layerprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from layerprune.errors import (  # noqa: E402
    CheckpointError, DatasetError, LayerpruneError, ModelError, UnknownNameError,
)
from layerprune.registry import Registry  # noqa: E402
from layerprune import models  # noqa: E402,F401  (registers the CIFAR models with timm)
from layerprune.models import create_model, list_models, load_checkpoint  # noqa: E402
from layerprune.data import DatasetBundle, build_dataset, list_datasets, make_loader  # noqa: E402

__all__ = [
    "CheckpointError", "DatasetBundle", "DatasetError", "LayerpruneError", "ModelError", "Registry",
    "UnknownNameError", "__version__", "build_dataset", "create_model", "list_datasets",
    "list_models", "load_checkpoint", "make_loader",
]

"""Datasets by name.

>>> bundle = build_dataset("digits", seed=0)
>>> bundle.num_classes, bundle.input_size
(10, (1, 32, 32))

Built-ins are lazy registry entries: naming one imports only its module (CIFAR does not pull in
torchvision's dataset code until asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from layerprune.errors import DatasetError
from layerprune.lazy import lazy_exports
from layerprune.registry import Registry

if TYPE_CHECKING:
    from layerprune.data.base import DatasetBundle

# imported on first use: listing datasets and their options imports no torch
__getattr__, __dir__ = lazy_exports(__name__, {".base": [
    "CropFlip", "DatasetBundle", "TensorImageDataset", "make_loader", "stratified_split", "without_augmentation"]})

__all__ = [
    "DATASETS", "CropFlip", "DatasetBundle", "TensorImageDataset", "build_dataset", "dataset_description", "dataset_options",
    "list_datasets", "make_loader", "stratified_split", "without_augmentation",
]

DATASETS: Registry[Callable[..., DatasetBundle]] = Registry("dataset")
DATASETS.register_lazy("cifar10", "layerprune.data.cifar:build_cifar10")
DATASETS.register_lazy("cifar100", "layerprune.data.cifar:build_cifar100")
DATASETS.register_lazy("imagefolder", "layerprune.data.imagefolder:build_imagefolder", aliases=["imagenet"])
DATASETS.register_lazy("digits", "layerprune.data.small:build_digits")
DATASETS.register_lazy("mnist5k", "layerprune.data.small:build_mnist5k")
DATASETS.register_lazy("synthetic", "layerprune.data.synthetic:build_synthetic")
DATASETS.register_lazy("text", "layerprune.data.textset:build_text")


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset accepts, with their defaults (read without building anything)."""
    return DATASETS.describe(name)[1]


def dataset_description(name: str) -> str:
    """The first line of a dataset's description."""
    doc = DATASETS.describe(name)[0].strip().splitlines()
    return doc[0] if doc else ""


def build_dataset(name: str, **options: Any) -> DatasetBundle:
    """Build dataset ``name`` with ``options`` (see :func:`dataset_options`)."""
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"{DATASETS.canonical(name)}: unknown option {', '.join(map(repr, unknown))} "
            f"(accepted: {', '.join(accepted)})"
        )
    return DATASETS.get(name)(**options)

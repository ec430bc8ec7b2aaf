"""CIFAR-10 and CIFAR-100 through torchvision, held in memory as tensors.

torchvision reads (and, with ``download=True``, fetches) the official archives; the images then
live as one uint8 tensor so augmentation runs on whole batches. ``val`` is a stratified held-out
part of the training set (``val_fraction``, default 0.1); ``test`` is the official test set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from layerprune.data.base import (
    CropFlip, DatasetBundle, TensorImageDataset, check_fractions, check_stats, stratified_split,
)
from layerprune.errors import DatasetError, DatasetFetchError

# Channel statistics of the training sets, on the [0, 1] scale.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def default_root() -> Path:
    """``$LAYERPRUNE_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("LAYERPRUNE_DATA", "data"))


def _torchvision_class(name: str):
    from torchvision import datasets

    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def _load(name: str, root: Path, train: bool, download: bool):
    cls = _torchvision_class(name)
    folder = (root / cls.base_folder).resolve()
    created = [p for p in (root, *root.parents) if not p.exists()]  # what a failed download must not leave
    try:
        return cls(str(root), train=train, download=download)
    except RuntimeError as exc:
        if folder.is_dir():
            raise DatasetError(
                f"{name}: files under {folder} are incomplete or corrupted ({exc}); delete the folder "
                f"and extract {cls.filename} into {root.resolve()} again"
            ) from exc
        raise DatasetError(
            f"{name}: no data at {folder}; set download: true to fetch it (needs network) or "
            f"extract {cls.filename} into {root.resolve()}"
        ) from exc
    except OSError as exc:  # urllib errors while downloading (no network, proxy, DNS)
        reason = getattr(exc, "reason", exc)
        for path in created:  # the empty folders torchvision made for the archive
            try:
                path.rmdir()
            except OSError:
                break
        raise DatasetFetchError(cls.url, f"download failed ({getattr(reason, 'strerror', None) or reason})",
                                f"without network, extract {cls.filename} into {root.resolve()} so that {folder} "
                                "exists", subject=name) from exc


def _build_cifar(
    name: str, *, root: str | Path | None, download: bool, seed: int, val_fraction: float, augment: bool,
    mean: Sequence[float] | None, std: Sequence[float] | None,
) -> DatasetBundle:
    check_fractions(name, val_fraction=val_fraction)
    # A checkpoint trained with other statistics (the community CIFAR ResNets use ImageNet's) needs them.
    mean, std = check_stats(name, mean if mean is not None else CIFAR_STATS[name][0],
                            std if std is not None else CIFAR_STATS[name][1], 3)
    root = Path(root) if root is not None else default_root()
    train_raw = _load(name, root, True, download)
    test_raw = _load(name, root, False, download)

    def to_tensors(raw) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(raw.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(raw.targets, dtype=torch.long)

    train_all = TensorImageDataset(*to_tensors(train_raw), mean, std)
    test = TensorImageDataset(*to_tensors(test_raw), mean, std)
    val_idx, train_idx = stratified_split(train_all.targets.numpy(), [val_fraction], seed)
    return DatasetBundle(
        name=name,
        train=train_all.subset(train_idx, augment=CropFlip(4, flip=True) if augment else None),
        val=train_all.subset(val_idx) if val_fraction > 0 else None,
        test=test,
        num_classes=len(train_raw.classes),
        input_size=(3, 32, 32),
        mean=mean,
        std=std,
        classes=list(train_raw.classes),
    )


def build_cifar10(
    *, root: str | Path | None = None, download: bool = False, seed: int = 0, val_fraction: float = 0.1,
    augment: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> DatasetBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 32×32, 10 classes) through torchvision.

    ``mean``/``std``: the normalisation (default: this training set's statistics, ``CIFAR_STATS``).
    """
    return _build_cifar("cifar10", root=root, download=download, seed=seed, val_fraction=val_fraction,
                        augment=augment, mean=mean, std=std)


def build_cifar100(
    *, root: str | Path | None = None, download: bool = False, seed: int = 0, val_fraction: float = 0.1,
    augment: bool = True, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> DatasetBundle:
    """CIFAR-100 (50,000 train / 10,000 test, 32×32, 100 classes) through torchvision.

    ``mean``/``std``: the normalisation (default: this training set's statistics, ``CIFAR_STATS``).
    """
    return _build_cifar("cifar100", root=root, download=download, seed=seed, val_fraction=val_fraction,
                        augment=augment, mean=mean, std=std)

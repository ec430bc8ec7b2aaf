"""Pieces shared by the CIFAR model families: pretrained configs and the timm builder call."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg

from layerprune.errors import ModelError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """timm pretrained config for a 32×32 CIFAR model with no downloadable weights."""
    cfg = dict(
        url="",
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=None,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        first_conv="conv1",
        classifier="linear",
        license="mit",
    )
    cfg.update(overrides)
    return cfg


def build_cifar_model(cls: type, variant: str, pretrained: bool, **kwargs: Any):
    """``timm.build_model_with_cfg`` that refuses ``pretrained=True`` without a local file.

    timm would silently fall back to random weights for a config without a URL; a user asking for
    pretrained weights should instead learn how to load the checkpoint they have.
    """
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise ModelError(
            f"{variant}: no published weights to download; load your own checkpoint with "
            f"layerprune.models.load_checkpoint(model, PATH) or "
            f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay={{'file': PATH}})"
        )
    return build_model_with_cfg(cls, variant, pretrained, **kwargs)


class ClassifierHeadMixin:
    """timm's head API for models with ``global_pool``, ``linear``, ``num_features``, ``drop_rate``
    and a ``forward_features``."""

    num_features: int
    num_classes: int
    drop_rate: float
    global_pool: nn.Module
    linear: nn.Module

    def _make_head(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self._make_head(num_classes, global_pool or self.global_pool.pool_type)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

"""CIFAR VGGs with batch norm (Simonyan & Zisserman, ICLR 2015; CIFAR form as in Liu et al.,
"Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017).

Five stages separated by 2×2 max-pooling; every conv-BN-ReLU is one named :class:`ConvUnit`
(``stages.<stage>.<unit>``) so that surgery sees each unit as a block. The head is global
average pooling and a single linear classifier, which is what 32×32 inputs need.

>>> import timm, layerprune
>>> model = timm.create_model("cifar_vgg16_bn", num_classes=100)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from timm.models import register_model

from layerprune.models._helpers import ClassifierHeadMixin, build_cifar_model, cifar_cfg

__all__ = ["CifarVGG", "ConvUnit", "VGG_STAGES"]

# Output channels of the units of each of the five stages.
VGG_STAGES: dict[int, list[list[int]]] = {
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class ConvUnit(nn.Module):
    """3×3 conv → BN → ReLU, the unit a VGG is made of."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CifarVGG(ClassifierHeadMixin, nn.Module):
    """VGG-BN for 32×32 inputs.

    Args:
        depth: 11, 13, 16 or 19.
        num_classes: classifier outputs (0 for a features-only head).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        global_pool: timm pooling type for the head (``"avg"``).
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth not in VGG_STAGES:
            raise ValueError(f"depth must be one of {sorted(VGG_STAGES)}, got {depth}")
        self.depth, self.num_classes, self.in_chans, self.drop_rate = depth, num_classes, in_chans, drop_rate
        self.feature_info = []
        stages, in_chs = [], in_chans
        for s, widths in enumerate(VGG_STAGES[depth]):
            units: OrderedDict[str, nn.Module] = OrderedDict()
            for u, out_chs in enumerate(widths):
                units[str(u)] = ConvUnit(in_chs, out_chs)
                in_chs = out_chs
            units["pool"] = nn.MaxPool2d(2, 2)
            stages.append(nn.Sequential(units))
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** (s + 1), module=f"stages.{s}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self._make_head(num_classes, global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # -- timm manners ---------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stages\.0\.0", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def _create_cifar_vgg(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    return build_cifar_model(
        CifarVGG, variant, pretrained, depth=depth,
        feature_cfg=dict(flatten_sequential=True), **kwargs,
    )


default_cfgs = {
    f"cifar_vgg{d}_bn": cifar_cfg(first_conv="stages.0.0.conv") for d in VGG_STAGES
}


@register_model
def cifar_vgg11_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with batch norm for CIFAR (8 conv units)."""
    return _create_cifar_vgg("cifar_vgg11_bn", 11, pretrained, **kwargs)


@register_model
def cifar_vgg13_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13 with batch norm for CIFAR (10 conv units)."""
    return _create_cifar_vgg("cifar_vgg13_bn", 13, pretrained, **kwargs)


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 with batch norm for CIFAR (13 conv units)."""
    return _create_cifar_vgg("cifar_vgg16_bn", 16, pretrained, **kwargs)


@register_model
def cifar_vgg19_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19 with batch norm for CIFAR (16 conv units)."""
    return _create_cifar_vgg("cifar_vgg19_bn", 19, pretrained, **kwargs)

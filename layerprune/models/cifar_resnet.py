"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

Three stages of ``n`` BasicBlocks with 16/32/64 channels, depth ``6n + 2``. Module names follow
the widely used community layout (``conv1``, ``bn1``, ``layer1..3``, ``linear``; blocks with
``conv1/bn1/conv2/bn2/shortcut``) so published checkpoints of that layout load unchanged.

Shortcut option A (the paper's CIFAR choice, the default) is parameter-free: subsample by the
stride and zero-pad the new channels. Option B is a 1×1 conv + BN projection.

>>> import timm, layerprune
>>> model = timm.create_model("cifar_resnet56", num_classes=100)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from layerprune.models._helpers import ClassifierHeadMixin, build_cifar_model, cifar_cfg

__all__ = ["CifarResNet", "BasicBlock", "PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad channels to ``out_chs``.

    A real module (not a lambda) so models deepcopy, pickle and trace.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_chs} -> {out_chs})")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_chs - self.in_chs
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut; ReLU after the addition."""

    expansion = 1

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(ClassifierHeadMixin, nn.Module):
    """ResNet for 32×32 inputs with ``depth = 6n + 2`` layers.

    Args:
        depth: 20, 32, 44, 56, 110, ... (any ``6n + 2``).
        num_classes: classifier outputs (0 for a features-only head).
        in_chans: input image channels.
        shortcut: ``"A"`` (parameter-free pad, default) or ``"B"`` (1×1 conv + BN).
        width: channels of the first stage (doubled in each of the next two).
        drop_rate: dropout before the classifier.
        global_pool: timm pooling type for the head (``"avg"``).
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        width: int = 16,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        shortcut = shortcut.upper()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut_type = depth, shortcut
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        chs, in_chs = [width, width * 2, width * 4], width
        self.feature_info = [dict(num_chs=width, reduction=1, module="act1")]
        for i, (out_chs, stride) in enumerate(zip(chs, (1, 2, 2)), start=1):
            blocks = [BasicBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1, shortcut)
                      for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i - 1), module=f"layer{i}"))

        self.num_features = self.head_hidden_size = in_chs
        self._make_head(num_classes, global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- timm manners ---------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models import checkpoint_seq

                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return x


def _create_cifar_resnet(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_cifar_model(
        CifarResNet, variant, pretrained, depth=depth,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs,
    )


default_cfgs = {
    name: cifar_cfg()
    for name in ("cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110")
}


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27M parameters)."""
    return _create_cifar_resnet("cifar_resnet20", 20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage, 0.46M parameters)."""
    return _create_cifar_resnet("cifar_resnet32", 32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage, 0.66M parameters)."""
    return _create_cifar_resnet("cifar_resnet44", 44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, 0.85M parameters)."""
    return _create_cifar_resnet("cifar_resnet56", 56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage, 1.7M parameters)."""
    return _create_cifar_resnet("cifar_resnet110", 110, pretrained, **kwargs)

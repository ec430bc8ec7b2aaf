"""Example inputs for surgery: an image batch for a timm model, token ids for a transformers model
(:mod:`layerprune.surgery.hf`), each checked, and the levels blocks are found at."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import model_device
from layerprune.surgery.blocks import LEVELS, check_level  # noqa: F401 - re-exported


def default_input(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A random input of the model's configured size (timm ``pretrained_cfg``), or 3×224×224; for a
    transformers model, random token ids within its vocabulary."""
    from layerprune.surgery.hf import default_tokens, is_hf_model

    if is_hf_model(model):
        return default_tokens(model, batch_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    return torch.randn(batch_size, *size, device=model_device(model))


def check_input(example_input: Any) -> torch.Tensor:
    """The example input, if it is one tensor; :class:`SurgeryError` otherwise."""
    if not isinstance(example_input, torch.Tensor):
        raise SurgeryError(f"example_input must be one tensor (a batch of inputs), got {type(example_input).__name__}")
    return example_input

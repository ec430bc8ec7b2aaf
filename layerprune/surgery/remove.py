"""Remove blocks from a copy of a model, refusing anything unsafe, and verify the result."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import eval_mode
from layerprune.surgery import hf
from layerprune.surgery.blocks import Block
from layerprune.surgery.edit import EDITS_ATTR, apply_edits, plan_edits
from layerprune.surgery.find import check_input, default_input, find_blocks
from layerprune.surgery.verify import verify

__all__ = ["EDITS_ATTR", "remove_blocks"]


def remove_blocks(
    model: nn.Module,
    names: list[str] | tuple[str, ...],
    example_input: torch.Tensor | None = None,
    *,
    collapse: bool = False,
    blocks: list[Block] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` without the blocks ``names``; ``model`` itself is left untouched.

    Identity-removable and plain blocks become a ``PassThrough`` (returns its first argument) or
    the stand-in ``find_blocks`` recorded (``Block.stand_in``); with ``collapse=True`` a block that
    changes shape becomes its shortcut (+ final activation), or a shortcut without parameters
    where it has none. Pass ``blocks`` from :func:`find_blocks` to skip finding them again.

    A transformers model (``example_input``: token ids) loses the layers from its layer list and
    stays consistent for the library (:func:`layerprune.surgery.hf.remove_layers`); with
    ``inplace=True`` that model itself is edited, without a copy.

    >>> pruned = remove_blocks(model, ["layer1.3", "layer2.5"], torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    """
    if hf.is_hf_model(model):
        return hf.remove_layers(model, list(names), example_input, inplace=inplace)
    if inplace:
        raise SurgeryError(f"{type(model).__name__}: inplace removal is for transformers models; timm models are "
                           "edited on a copy")
    example_input = default_input(model) if example_input is None else check_input(example_input)
    if blocks is None:
        blocks = find_blocks(model, example_input)
    edits = plan_edits(blocks, list(names), collapse=collapse)
    pruned = apply_edits(copy.deepcopy(model), edits)
    with eval_mode(model), eval_mode(pruned):
        verify(model, pruned, example_input, list(names))
    return pruned

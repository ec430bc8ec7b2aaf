"""Remove blocks from a copy of a model, refusing anything unsafe, and verify the result."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from layerprune.hooks import eval_mode
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
) -> nn.Module:
    """A copy of ``model`` without the blocks ``names``; ``model`` itself is left untouched.

    Identity-removable and plain blocks become a ``PassThrough`` (returns its first argument) or
    the stand-in ``find_blocks`` recorded (``Block.stand_in``); with ``collapse=True`` a block that
    changes shape becomes its shortcut (+ final activation), or a shortcut without parameters
    where it has none. Pass ``blocks`` from :func:`find_blocks` to skip finding them again.

    >>> pruned = remove_blocks(model, ["layer1.3", "layer2.5"], torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    """
    example_input = default_input(model) if example_input is None else check_input(example_input)
    if blocks is None:
        blocks = find_blocks(model, example_input)
    edits = plan_edits(blocks, list(names), collapse=collapse)
    pruned = apply_edits(copy.deepcopy(model), edits)
    with eval_mode(model), eval_mode(pruned):
        verify(model, pruned, example_input, list(names))
    return pruned

"""Remove blocks from a copy of a model, refusing anything unsafe, and verify the result."""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.registry import did_you_mean
from layerprune.surgery.blocks import (
    Block, default_input, dependency_graph_check, find_blocks, swap_blocks,
)

# What ``remove_blocks`` did, kept on the pruned model for ``PruneSpec``: block → replacement's
# child names (empty for identity removal).
EDITS_ATTR = "layerprune_edits"


def plan_edits(
    blocks: list[Block], names: list[str] | tuple[str, ...], *, collapse: bool = False
) -> dict[str, tuple[str, ...]]:
    """Check ``names`` against ``blocks`` and return the edits, or raise :class:`SurgeryError`."""
    by_name = {b.name: b for b in blocks}
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise SurgeryError(f"block {duplicates[0]!r} is named more than once")
    edits: dict[str, tuple[str, ...]] = {}
    for name in names:
        block = by_name.get(name)
        if block is None:
            candidates = [b.name for b in blocks if b.stage]
            raise SurgeryError(did_you_mean(name, candidates, "block", listing="see: layerprune inspect MODEL"))
        if block.collapsible and not collapse:
            raise SurgeryError(f"block {name!r} cannot be removed: {block.reason} — only with collapse=True")
        if not block.can_remove(collapse):
            raise SurgeryError(f"block {name!r} cannot be removed: {block.reason}")
        edits[name] = block.collapse_to if block.collapsible else ()
    stages: dict[str, list[str]] = {}
    for b in blocks:
        if b.stage:
            stages.setdefault(b.stage, []).append(b.name)
    for stage, members in stages.items():
        if all(m in edits for m in members):
            raise SurgeryError(
                f"removing {', '.join(members)} would empty stage {stage!r}; keep at least one of its blocks"
            )
    return edits


def apply_edits(model: nn.Module, edits: dict[str, tuple[str, ...] | list[str]]) -> nn.Module:
    """Replace blocks in place (identity or collapse) and record the edits on the model."""
    swap_blocks(model, edits)
    done = dict(getattr(model, EDITS_ATTR, {}))
    done.update({k: tuple(v) for k, v in edits.items()})
    setattr(model, EDITS_ATTR, done)
    return model


def verify(original: nn.Module, pruned: nn.Module, example_input: torch.Tensor, names) -> None:
    """Same output shape as the original, finite values, and a Torch-Pruning re-trace."""
    what = ", ".join(names)
    with torch.no_grad():
        try:
            out = pruned(example_input)
        except Exception as exc:
            raise SurgeryError(f"model fails after removing {what}: {type(exc).__name__}: {exc}") from exc
        expected = original(example_input)
    if out.shape != expected.shape:
        raise SurgeryError(f"output shape {tuple(out.shape)} ≠ {tuple(expected.shape)} after removing {what}")
    if not torch.isfinite(out).all():
        raise SurgeryError(f"non-finite outputs after removing {what}")
    try:
        dependency_graph_check(pruned, example_input)
    except Exception as exc:
        raise SurgeryError(f"dependency graph cannot be traced after removing {what}: {exc}") from exc


def remove_blocks(
    model: nn.Module,
    names: list[str] | tuple[str, ...],
    example_input: torch.Tensor | None = None,
    *,
    collapse: bool = False,
    blocks: list[Block] | None = None,
) -> nn.Module:
    """A copy of ``model`` without the blocks ``names``; ``model`` itself is left untouched.

    Identity-removable and plain blocks become ``nn.Identity``; with ``collapse=True`` a
    downsampling residual block becomes its shortcut (+ final activation). Pass ``blocks`` from
    :func:`find_blocks` to skip finding them again.

    >>> pruned = remove_blocks(model, ["layer1.3", "layer2.5"], torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    """
    if example_input is None:
        example_input = default_input(model)
    if blocks is None:
        blocks = find_blocks(model, example_input)
    edits = plan_edits(blocks, list(names), collapse=collapse)
    was_training = model.training
    pruned = apply_edits(copy.deepcopy(model), edits)
    model.eval()
    pruned.eval()
    try:
        verify(model, pruned, example_input, list(names))
    finally:
        model.train(was_training)
        pruned.train(was_training)
    return pruned

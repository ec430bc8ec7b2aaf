"""Swap blocks out of a model: a removed block becomes a :class:`PassThrough` or, when collapsed,
its shortcut (+ final activation). Plans are checked against the blocks first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.registry import did_you_mean
from layerprune.surgery.blocks import Block, StagePlan, stages

# What ``remove_blocks`` did, kept on the pruned model for ``PruneSpec``: block → replacement's
# child names (empty for identity removal).
EDITS_ATTR = "layerprune_edits"


class PassThrough(nn.Identity):
    """What a removed block becomes: returns its first argument and ignores any others.

    Transformer blocks are often called with more than the hidden states (``blk(x, rope=rope)``,
    ``blk(x, feat_size)``); ``nn.Identity`` takes one tensor. Traced and exported models
    (``torch.jit.trace``, ``torch.export``) see straight through it; it is never scripted.
    """

    def forward(self, x, *args, **kwargs):  # noqa: D102 — the signature is the point
        return x


def replacement(block: nn.Module, collapse_to: tuple[str, ...] | list[str]) -> nn.Module:
    """What a removed block becomes: a :class:`PassThrough` or its shortcut (+ activation), keeping
    the shortcut's own names so its state-dict keys do not change."""
    if not collapse_to:
        return PassThrough()
    return nn.Sequential(OrderedDict((n, block.get_submodule(n)) for n in collapse_to))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def swap_blocks(model: nn.Module, edits: dict[str, tuple[str, ...] | list[str]]) -> nn.Module:
    """Replace each named block in place by its :func:`replacement` (identity or collapse)."""
    for name, collapse_to in edits.items():
        try:
            block = model.get_submodule(name)
        except AttributeError as exc:
            raise SurgeryError(f"block {name!r} does not exist in {type(model).__name__}") from exc
        set_submodule(model, name, replacement(block, tuple(collapse_to)))
    return model


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
    plan = StagePlan(blocks)
    for name in edits:
        block = by_name[name]
        if not plan.try_remove(block):
            members = [b.name for b in stages(blocks)[block.stage]]
            raise SurgeryError(
                f"removing {', '.join(members)} would empty stage {block.stage!r}; keep at least one of its blocks"
            )
    return edits


def apply_edits(model: nn.Module, edits: dict[str, tuple[str, ...] | list[str]]) -> nn.Module:
    """Replace blocks in place (identity or collapse) and record the edits on the model."""
    swap_blocks(model, edits)
    done = dict(getattr(model, EDITS_ATTR, {}))
    done.update({k: tuple(v) for k, v in edits.items()})
    setattr(model, EDITS_ATTR, done)
    return model

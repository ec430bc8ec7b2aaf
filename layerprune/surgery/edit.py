"""Swap blocks out of a model: a removed block becomes a :class:`PassThrough` (of its first
argument, or of its first N arguments for a block that returns them as a tuple), a removed
residual branch or dense layer becomes :class:`Zeros`, a removed dual-path block a
:class:`ZeroPadShortcut`, and a collapsed block its shortcut (+ final activation) — a
:class:`ZeroPadShortcut` where it has none.
Plans are checked against the blocks first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from layerprune.errors import SurgeryError
from layerprune.registry import did_you_mean
from layerprune.surgery.blocks import Block, StagePlan, stages

# What ``remove_blocks`` did, kept on the pruned model for ``PruneSpec``: block → its edit (see
# :func:`replacement`): the replacement's child names for a collapse, a stand-in such as
# "tuple:2", or () for a pass-through of the first argument.
EDITS_ATTR = "layerprune_edits"


class PassThrough(nn.Identity):
    """What a removed block becomes: returns its first argument and ignores any others — or, with
    ``passes=N``, its first N arguments as a tuple (a list with ``as_list``), for blocks called as
    ``x, feat_size = blk(x, feat_size)``.

    Transformer blocks are often called with more than the hidden states (``blk(x, rope=rope)``,
    ``blk(x, feat_size)``); ``nn.Identity`` takes one tensor. Traced and exported models
    (``torch.jit.trace``, ``torch.export``) see straight through it; it is never scripted.
    """

    def __init__(self, passes: int = 0, as_list: bool = False, nones: int = 0) -> None:
        super().__init__()
        self.passes, self.as_list, self.nones = int(passes), bool(as_list), int(nones)

    def forward(self, x, *args, **kwargs):  # noqa: D102 — the signature is the point
        if not self.passes:
            return x
        out = (x, *args)[: self.passes] + (None,) * self.nones
        return list(out) if self.as_list else out

    def extra_repr(self) -> str:
        if not self.passes:
            return ""
        return f"passes={self.passes}{', as_list=True' if self.as_list else ''}{f', nones={self.nones}' if self.nones else ''}"


class Zeros(nn.Module):
    """What a removed residual branch becomes (``find_blocks(..., level="sublayer")``): zeros of its
    input's shape, so the block adds nothing there (``x = x + ls1(attn(norm1(x)))`` becomes
    ``x + 0``) and the branch's weights and compute are gone.

    With ``channels``, what a removed dense layer becomes: zeros of its first input's batch and
    spatial size with that many channels — a DenseNet layer takes the list of earlier outputs
    and its output is concatenated to them, so the concatenation keeps its width and gains
    nothing."""

    def __init__(self, channels: int = 0) -> None:
        super().__init__()
        self.channels = int(channels)

    def forward(self, x, *args, **kwargs):  # noqa: D102
        if not self.channels:
            return torch.zeros_like(x)
        first = x[0] if isinstance(x, (list, tuple)) else x
        return first.new_zeros((first.shape[0], self.channels, *first.shape[2:]))

    def extra_repr(self) -> str:
        return f"channels={self.channels}" if self.channels else ""


class ZeroPadShortcut(nn.Module):
    """A shortcut without parameters (ResNet's "option A"): the input taken at every
    ``stride``-th position of each spatial dimension, then its channels cut to ``channels`` or
    padded with zero channels after the last.

    What a removed dual-path block becomes (DPN: it returns its input with new channels appended,
    zeros when its branch is zeroed), and what a block that changes shape without a shortcut
    collapses to (MobileOne's strided and widening convolutions; ``collapse=True`` only)."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.channels, self.stride = int(channels), int(stride)

    def forward(self, x, *args, **kwargs):  # noqa: D102
        if self.stride > 1:  # every stride-th position; as a pooling, which Torch-Pruning traces
            pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}.get(x.dim())
            x = (pool(x, kernel_size=1, stride=self.stride) if pool is not None
                 else x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)])
        have = x.shape[1]
        if self.channels < have:
            return x[:, : self.channels]
        if self.channels > have:  # a pad, not a concatenation with a constant: Torch-Pruning maps the
            # first channels one to one and the new ones to nothing, where a constant would leave
            # a later concatenation's channel offsets unknown (DPN)
            return F.pad(x, (0, 0) * (x.dim() - 2) + (0, self.channels - have))
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}" + (f", stride={self.stride}" if self.stride > 1 else "")


STAND_INS = "'tuple:N', 'tuple:N+M', 'list:N', 'zeros', 'zeros:C', 'shortcut:C', 'shortcut:C:S'"


def parse_stand_in(stand_in: str) -> nn.Module:
    """The module a stand-in names: ``"tuple:N"``, ``"list:N"`` (a :class:`PassThrough` of N
    arguments; ``"tuple:N+M"`` adds M ``None``), ``"zeros"`` / ``"zeros:C"`` (:class:`Zeros`) or
    ``"shortcut:C"`` / ``"shortcut:C:S"`` (:class:`ZeroPadShortcut` to C channels, stride S);
    :class:`SurgeryError` otherwise."""
    kind, _, counts = stand_in.partition(":")
    numbers = counts.split(":")
    if kind == "zeros" and (not counts or (len(numbers) == 1 and counts.isdigit() and int(counts) >= 1)):
        return Zeros(int(counts or 0))
    if kind == "shortcut" and 1 <= len(numbers) <= 2 and all(n.isdigit() and int(n) >= 1 for n in numbers):
        return ZeroPadShortcut(*map(int, numbers))
    count, _, nones = counts.partition("+")
    if kind in ("tuple", "list") and count.isdigit() and int(count) >= 1 and (not nones or nones.isdigit()):
        return PassThrough(int(count), as_list=kind == "list", nones=int(nones or 0))
    raise SurgeryError(f"unknown stand-in {stand_in!r} (known: {STAND_INS})")


def replacement(block: nn.Module, edit: tuple[str, ...] | list[str] | str) -> nn.Module:
    """What a removed block becomes: a :class:`PassThrough` (``()``), the stand-in a string names
    (:func:`parse_stand_in`), or its shortcut (+ activation) for a tuple of child names, keeping
    the shortcut's own names so its state-dict keys do not change."""
    if isinstance(edit, str):
        return parse_stand_in(edit) if edit else PassThrough()
    if not edit:
        return PassThrough()
    return nn.Sequential(OrderedDict((n, block.get_submodule(n)) for n in edit))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def swap_blocks(model: nn.Module, edits: dict[str, tuple[str, ...] | list[str] | str]) -> nn.Module:
    """Replace each named block in place by its :func:`replacement` (identity, stand-in or collapse)."""
    for name, edit in edits.items():
        try:
            block = model.get_submodule(name)
        except AttributeError as exc:
            raise SurgeryError(f"block {name!r} does not exist in {type(model).__name__}") from exc
        set_submodule(model, name, replacement(block, edit if isinstance(edit, str) else tuple(edit)))
    return model


def plan_edits(
    blocks: list[Block], names: list[str] | tuple[str, ...], *, collapse: bool = False
) -> dict[str, tuple[str, ...] | str]:
    """Check ``names`` against ``blocks`` and return the edits, or raise :class:`SurgeryError`."""
    by_name = {b.name: b for b in blocks}
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise SurgeryError(f"block {duplicates[0]!r} is named more than once")
    edits: dict[str, tuple[str, ...] | str] = {}
    for name in names:
        block = by_name.get(name)
        if block is None:
            candidates = [b.name for b in blocks if b.stage]
            raise SurgeryError(did_you_mean(name, candidates, "block", listing="see: layerprune inspect MODEL"))
        if block.collapsible and not collapse:
            raise SurgeryError(f"block {name!r} cannot be removed: {block.reason} — only with collapse=True")
        if not block.can_remove(collapse):
            raise SurgeryError(f"block {name!r} cannot be removed: {block.reason}")
        edits[name] = block.edit
    plan = StagePlan(blocks)
    for name in edits:
        block = by_name[name]
        if not plan.try_remove(block):
            members = [b.name for b in stages(blocks)[block.stage]]
            raise SurgeryError(
                f"removing {', '.join(members)} would empty stage {block.stage!r}; keep at least one of its blocks"
            )
    return edits


def apply_edits(model: nn.Module, edits: dict[str, tuple[str, ...] | list[str] | str]) -> nn.Module:
    """Replace blocks in place (identity, stand-in or collapse) and record the edits on the model."""
    swap_blocks(model, edits)
    done = dict(getattr(model, EDITS_ATTR, {}))
    done.update({k: v if isinstance(v, str) else tuple(v) for k, v in edits.items()})
    setattr(model, EDITS_ATTR, done)
    return model

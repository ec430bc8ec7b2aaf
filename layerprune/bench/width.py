"""The bench's rows that are not block criteria: the channel-pruning rows, Torch-Pruning's channel
pruner (L1 magnitude) at a MACs (or params) target, alone (``width``) and after blocks chosen by a
criterion to half the target (``depth+width``); and the unpruned base model given the trials'
finetuning (``unpruned``). The channel pruner itself: :mod:`layerprune.surgery.width`."""

from __future__ import annotations

from layerprune.surgery.width import prune_width

WIDTH = "width (Torch-Pruning L1 channels)"  # the name of its rows in bench tables
DEPTH_WIDTH = "depth+width"  # rows named "depth+width (CRITERION blocks + L1 channels)"
DEPTH_SHARE = 0.5  # the share of a depth+width budget that blocks take; channels take the rest
UNPRUNED = "unpruned"  # the base model finetuned like every trial (bench.finetune_base), once per seed
NO_BUDGET = {}  # the unpruned row's budget: nothing removed


def depth_width_name(criterion: str) -> str:
    return f"{DEPTH_WIDTH} ({criterion} blocks + L1 channels)"


def is_channel_row(criterion: str) -> bool:
    """Whether a bench row prunes channels (width, depth+width): reported per setting, not ranked
    among the block criteria."""
    return criterion == WIDTH or criterion.startswith(DEPTH_WIDTH)


def is_ranked(criterion: str) -> bool:
    """Whether a bench row is a block criterion, ranked on the leaderboards (not a channel row,
    not the unpruned base)."""
    return not is_channel_row(criterion) and criterion != UNPRUNED


__all__ = ["DEPTH_SHARE", "DEPTH_WIDTH", "NO_BUDGET", "UNPRUNED", "WIDTH", "depth_width_name", "is_channel_row",
           "is_ranked", "prune_width"]

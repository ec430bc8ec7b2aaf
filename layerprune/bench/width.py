"""The width-pruning reference: Torch-Pruning's channel pruner at a MACs (or params) target.

Only the channels inside each residual branch are pruned (the output channels of every conv that
feeds another conv of the same block), never the residual stream: option-A shortcuts pad
channels with zeros, which a channel pruner cannot follow, and pruning inside the branch is the
classic CIFAR-ResNet setting (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).
Importance: L1 magnitude (Torch-Pruning's ``MagnitudeImportance(p=1)``). The pruning ratio is
found by bisection until the measured reduction reaches the target.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from layerprune.errors import LayerpruneError
from layerprune.surgery.spec import CHANNELS_ATTR

WIDTH = "width (Torch-Pruning L1 channels)"  # the name of its rows in bench tables


def _branch_outputs(model: nn.Module, blocks: list[str]) -> set[str]:
    """Convs whose output feeds another conv inside the same block (``conv1`` of a basic block)."""
    names = set()
    for block in blocks:
        convs = [n for n, m in model.get_submodule(block).named_modules() if isinstance(m, nn.Conv2d)
                 and "shortcut" not in n and "downsample" not in n]
        names.update(f"{block}.{n}" for n in convs[:-1])  # every conv of the branch but its last
    return names


def _prune(model: nn.Module, example: torch.Tensor, ratio: float, blocks: list[str]) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    keep = _branch_outputs(pruned, blocks)
    ignored = [m for n, m in pruned.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
    # Recorded so that save_pruned can write the channel edits (and load_pruned redo them).
    setattr(pruned, CHANNELS_ATTR, list(getattr(pruned, CHANNELS_ATTR, [])) + [
        [name, bool(out), [int(i) for i in idx]] for name, out, idx in pruner.DG.pruning_history()])
    return pruned


def prune_width(model: nn.Module, example: torch.Tensor, *, macs: float | None = None,
                params: float | None = None, tolerance: float = 0.005) -> tuple[nn.Module, float]:
    """A channel-pruned copy of ``model`` whose MACs (or params) fall by at least the target;
    returns it with the pruning ratio used."""
    import torch_pruning as tp

    from layerprune.surgery import find_blocks

    key, target = ("macs", macs) if macs is not None else ("params", params)
    if target is None or not 0 < target < 1:
        raise LayerpruneError(f"width pruning: {key} must be a fraction in (0, 1), got {target}")
    base = tp.utils.count_ops_and_params(model, example)
    blocks = [b.name for b in find_blocks(model, example) if b.stage]

    def reduction(m: nn.Module) -> float:
        now = tp.utils.count_ops_and_params(m, example)
        return 1 - now[0] / base[0] if key == "macs" else 1 - now[1] / base[1]

    lo, hi = 0.0, 0.95
    best: tuple[nn.Module, float] | None = None
    for _ in range(12):
        mid = (lo + hi) / 2
        candidate = _prune(model, example, mid, blocks)
        if reduction(candidate) >= target:
            best, hi = (candidate, mid), mid
            if reduction(candidate) - target <= tolerance:
                break
        else:
            lo = mid
    if best is None:
        raise LayerpruneError(f"width pruning cannot remove {target:g} of the {key} of this model")
    return best

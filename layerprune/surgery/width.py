"""Width pruning: Torch-Pruning's channel pruner inside each block, to a MACs or params target.

Only the channels inside each residual branch are pruned (the output channels of every conv that
feeds another conv of the same block), never the residual stream: option-A shortcuts pad
channels with zeros, which a channel pruner cannot follow, and pruning inside the branch is the
classic CIFAR-ResNet setting (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).
The pruning ratio is found by bisection until the measured reduction reaches the target; the
channel edits are recorded as Torch-Pruning's pruning history, so that
:func:`~layerprune.surgery.save_pruned` can write them and :func:`~layerprune.surgery.load_pruned`
redo them.

>>> narrower, ratio = prune_width(model, torch.zeros(1, 3, 32, 32), macs=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from layerprune.errors import LayerpruneError
from layerprune.surgery.spec import CHANNELS_ATTR

#: Channel importances, by name: Torch-Pruning's magnitude (L1, L2) and random importances.
IMPORTANCES = ("l1", "l2", "random")


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "random":
        return tp.importance.RandomImportance()
    raise LayerpruneError(f"width pruning: importance must be one of {', '.join(IMPORTANCES)}, got {name!r}")


def branch_convs(model: nn.Module, blocks: list[str]) -> set[str]:
    """Convs whose output feeds another conv inside the same block (``conv1`` of a basic block):
    the ones whose output channels width pruning cuts."""
    names = set()
    for block in blocks:
        convs = [n for n, m in model.get_submodule(block).named_modules() if isinstance(m, nn.Conv2d)
                 and "shortcut" not in n and "downsample" not in n]
        names.update(f"{block}.{n}" for n in convs[:-1])  # every conv of the branch but its last
    return names


def _prune(model: nn.Module, example: torch.Tensor, ratio: float, blocks: list[str], importance: str) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    keep = branch_convs(pruned, blocks)
    ignored = [m for n, m in pruned.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in keep]
    torch.manual_seed(0)  # the random importance draws the same channels every time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(pruned, example, importance=_importance(importance),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
    setattr(pruned, CHANNELS_ATTR, list(getattr(pruned, CHANNELS_ATTR, [])) + [
        [name, bool(out), [int(i) for i in idx]] for name, out, idx in pruner.DG.pruning_history()])
    return pruned


def width_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The blocks whose branches width pruning narrows (those with a conv feeding another)."""
    from layerprune.surgery.find import find_blocks

    blocks = [b.name for b in find_blocks(model, example) if b.stage]
    return [b for b in blocks if branch_convs(model, [b])]


def prune_width(model: nn.Module, example: torch.Tensor, *, macs: float | None = None, params: float | None = None,
                ratio: float | None = None, importance: str = "l1", reference: nn.Module | None = None,
                tolerance: float = 0.005) -> tuple[nn.Module, float]:
    """A channel-pruned copy of ``model`` and the pruning ratio used: at ``ratio``, or at the
    smallest ratio whose MACs (or params) fall by at least the target, measured against
    ``reference`` (default: ``model`` itself; give the unpruned model to reach a total target
    after blocks were removed)."""
    import torch_pruning as tp

    given = {k: v for k, v in (("macs", macs), ("params", params), ("ratio", ratio)) if v is not None}
    if len(given) != 1:
        raise LayerpruneError("width pruning: give exactly one of macs, params or ratio (a fraction, e.g. 0.3)")
    (key, target), = given.items()
    if not 0 < target < 1:
        raise LayerpruneError(f"width pruning: {key} must be a fraction in (0, 1), got {target}")
    _importance(importance)
    blocks = width_blocks(model, example)
    if not blocks:
        raise LayerpruneError(f"width pruning: {type(model).__name__} has no block with a conv feeding another, "
                              "so no channel can be cut inside a branch")
    if key == "ratio":
        return _prune(model, example, target, blocks, importance), target
    base = tp.utils.count_ops_and_params(reference if reference is not None else model, example)

    def reduction(m: nn.Module) -> float:
        now = tp.utils.count_ops_and_params(m, example)
        return 1 - now[0] / base[0] if key == "macs" else 1 - now[1] / base[1]

    if reduction(model) >= target:  # the removed blocks already reach it
        return copy.deepcopy(model), 0.0
    lo, hi = 0.0, 0.95
    best: tuple[nn.Module, float] | None = None
    for _ in range(12):
        mid = (lo + hi) / 2
        candidate = _prune(model, example, mid, blocks, importance)
        if reduction(candidate) >= target:
            best, hi = (candidate, mid), mid
            if reduction(candidate) - target <= tolerance:
                break
        else:
            lo = mid
    if best is None:
        raise LayerpruneError(f"width pruning cannot remove {target:g} of the {key} of this model")
    return best


def branch_channels(model: nn.Module, blocks: list[str]) -> int:
    """Output channels of the convs width pruning may cut (:func:`branch_convs`)."""
    return sum(model.get_submodule(n).out_channels for n in branch_convs(model, blocks))

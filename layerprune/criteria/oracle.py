"""Baselines that measure (or estimate) what the loss does without the block: ``ablation``,
``taylor`` and ``sr_init``.

``ablation`` and ``sr_init`` evaluate a changed copy of the model. Removing or re-initialising
any block shifts the statistics every later BatchNorm sees; measured with stale statistics, the
drop mostly reflects that shift rather than the block's contribution. So by default each copy's
BatchNorm statistics are re-estimated first (``repair=True``), with the context's
:class:`~layerprune.calibration.Repair`: the same batches the pruner repairs the pruned model with,
so the oracle predicts the damage of a removal under the repair the pruned model then gets. A
disabled ``Repair`` means no repair here either.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.context import ScoringContext
from layerprune.errors import LayerpruneError
from layerprune.hooks import eval_mode, forward_hooks
from layerprune.surgery.blocks import Block
from layerprune.surgery.edit import replacement, swap_blocks

METRICS = ("loss", "accuracy")


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise LayerpruneError(f"metric: must be 'loss' or 'accuracy', got {metric!r}")
    return metric


def removable(ctx: ScoringContext) -> list[Block]:
    """Scorable blocks that can be taken out (as the identity, or collapsed to their shortcut)."""
    return [b for b in ctx.scorable if b.can_remove(collapse=True)]


class _Measured(Criterion):
    """Score = change in calibration loss (or accuracy) of a changed copy of the model."""

    def __init__(self, metric: str = "loss", repair: bool = True) -> None:
        self.metric = _check_metric(metric)
        self.repair = bool(repair)

    def candidates(self, ctx: ScoringContext) -> list[Block]:
        raise NotImplementedError

    def change(self, model: torch.nn.Module, block: Block) -> torch.nn.Module:
        raise NotImplementedError

    def score(self, ctx: ScoringContext) -> CriterionResult:
        # The reference gets the same repair, so that a block that does nothing scores 0 rather
        # than whatever re-estimating the statistics alone changes.
        repair = self.repair and ctx.repair_policy.enabled
        base = ctx.evaluate(ctx.repair(copy.deepcopy(ctx.model)) if repair else None)
        loss_up, acc_down = {}, {}
        for block in ctx.track(self.candidates(ctx), self.name):
            changed = self.change(copy.deepcopy(ctx.model), block)
            if repair:
                ctx.repair(changed)
            result = ctx.evaluate(changed)
            loss_up[block.name] = result.loss - base.loss
            acc_down[block.name] = base.accuracy - result.accuracy
        scores = loss_up if self.metric == "loss" else acc_down
        return CriterionResult(self.name, dict(scores), self.params(), {
            "loss_increase": loss_up, "accuracy_drop": acc_down,
            "base": {"loss": base.loss, "accuracy": base.accuracy}, "repair": repair,
        })


class AblationCriterion(_Measured):
    """Oracle: the calibration loss increase (or accuracy drop) when the block alone is removed.

    Source: the "oracle" ranking of Molchanov et al., "Importance Estimation for Neural Network
    Pruning", CVPR 2019 (there per filter; here per block). BatchNorm statistics are re-estimated
    after each removal (the context's ``Repair``) unless ``repair=False``. Cost: per block, the
    repair's training batches plus one evaluation pass over the calibration samples.
    """

    description = "Oracle: loss increase when the block alone is removed, after BN repair (Molchanov 2019)"

    def candidates(self, ctx: ScoringContext) -> list[Block]:
        return removable(ctx)

    def change(self, model, block):
        return swap_blocks(model, {block.name: block.collapse_to})


def reinitialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draw fresh parameters for every layer of ``module`` from its default initialiser, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return module


class SRInitCriterion(_Measured):
    """SR-init: the accuracy drop after re-initialising the block's parameters.

    Source: Tang et al., "SR-init: An Interpretable Layer Pruning Method", ICASSP 2023. A block
    whose weights can be replaced by random ones at little cost contributes little. BatchNorm
    statistics are re-estimated after re-initialisation (the context's ``Repair``) unless
    ``repair=False``. Cost: per block, the repair's training batches plus one evaluation pass.
    """

    description = "Accuracy drop after re-initialising the block, after BN repair (SR-init, Tang 2023)"

    def __init__(self, metric: str = "accuracy", repair: bool = True, seed: int = 0) -> None:
        super().__init__(metric, repair)
        self.seed = int(seed)

    def candidates(self, ctx: ScoringContext) -> list[Block]:
        return ctx.scorable

    def change(self, model, block):
        reinitialise(model.get_submodule(block.name), self.seed)
        return model


class TaylorCriterion(Criterion):
    """First-order Taylor estimate of the loss change from removing the block.

    With ``y`` the block's output and ``r`` what replaces it (its input, or its shortcut when
    collapsed), the calibration loss changes by ``≈ Σ_samples ∂L/∂y · (r − y)``. Source:
    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019 (first-order
    Taylor on a gate; here the gate multiplies the whole block's change ``y − r``).
    ``absolute=True`` sums ``|∂L/∂y · (r − y)|`` per sample instead, as Molchanov et al. do.
    Cost: one forward and backward pass over the calibration samples.
    """

    description = "First-order Taylor estimate of the loss change when the block is removed (Molchanov 2019)"

    def __init__(self, absolute: bool = False) -> None:
        self.absolute = bool(absolute)

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        blocks = removable(ctx)
        model = ctx.model
        pieces = ctx.micro_batches()
        total = sum(len(y) for _, y in pieces)
        estimate = {b.name: 0.0 for b in blocks}
        with eval_mode(model):
            for x, y in ctx.track(pieces, self.name):
                outputs, changes = {}, {}

                def hook(name: str):
                    swap = replacement(model.get_submodule(name), next(b.collapse_to for b in blocks if b.name == name))

                    def fn(module, args, out):
                        with torch.no_grad():
                            changes[name] = swap(args[0].detach()) - out.detach()
                        outputs[name] = out
                    return fn

                with forward_hooks(model, after={b.name: hook(b.name) for b in blocks}), torch.enable_grad():
                    x = x.to(ctx.device).requires_grad_(True)
                    loss = F.cross_entropy(model(x), y.to(ctx.device), reduction="sum") / total
                    names = [b.name for b in blocks if b.name in outputs]
                    grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                for name, g in zip(names, grads):
                    if g is None:
                        continue
                    per_sample = (g * changes[name]).flatten(1).sum(dim=1)
                    estimate[name] += float(per_sample.abs().sum() if self.absolute else per_sample.sum())
        return estimate

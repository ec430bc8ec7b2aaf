"""Criteria that measure (or estimate) what the model does without the block: ``ablation``,
``taylor``, ``sr_init``, ``cka_removal`` (Pons et al.) and the ``greedy`` oracle.

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
import hashlib
import math
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from layerprune.lazy import lazy_import, no_grad
from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.context import ScoringContext
from layerprune.criteria.representation import linear_cka
from layerprune.errors import LayerpruneError
from layerprune.params import is_count
from layerprune.evaluation import EvalResult
from layerprune.hooks import eval_mode, forward_hooks, main_tensor
from layerprune.surgery.blocks import Block, StagePlan
from layerprune.tasks import View

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

METRICS = ("loss", "accuracy")


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise LayerpruneError(f"metric: must be 'loss' or 'accuracy', got {metric!r}")
    return metric


def removable(ctx: ScoringContext) -> list[Block]:
    """Scorable blocks that can be taken out (as the identity, or collapsed to their shortcut)."""
    return [b for b in ctx.scorable if b.can_remove(collapse=True)]


def without(model: nn.Module, block: Block) -> nn.Module:
    """``model`` (changed in place) with ``block`` taken out: the identity, or its shortcut."""
    from layerprune.surgery.edit import swap_blocks

    return swap_blocks(model, {block.name: block.edit})


class _Measured(Criterion):
    """Score = change in calibration loss (or accuracy) of a changed copy of the model."""

    def __init__(self, metric: str = "loss", repair: bool = True, reuse: bool = True) -> None:
        self.metric = _check_metric(metric)
        self.repair = bool(repair)
        self.reuse = bool(reuse)

    def candidates(self, ctx: ScoringContext) -> list[Block]:
        raise NotImplementedError

    def change(self, model: torch.nn.Module, block: Block) -> torch.nn.Module:
        raise NotImplementedError

    def score(self, ctx: ScoringContext) -> CriterionResult:
        # The reference gets the same repair, so that a block that does nothing scores 0 rather
        # than whatever re-estimating the statistics alone changes.
        repair = self.repair and ctx.repairs

        def measure(model: nn.Module) -> EvalResult:
            return ctx.evaluate(ctx.repair(model) if repair else model)

        info: dict[str, Any] = {}
        runs = each_change(ctx, self.candidates(ctx), self.change, measure, fresh=repair, reuse=self.reuse,
                           description=self.name, info=info)
        _, base = next(runs)
        loss_up, acc_down = {}, {}
        for block, result in runs:
            loss_up[block.name] = result.loss - base.loss
            acc_down[block.name] = base.accuracy - result.accuracy
        scores = loss_up if self.metric == "loss" else acc_down
        return CriterionResult(self.name, dict(scores), self.params(), {
            "loss_increase": loss_up, "accuracy_drop": acc_down,
            "base": {"loss": base.loss, "accuracy": base.accuracy}, "repair": repair, **info,
        })


def each_change(ctx: ScoringContext, blocks: list[Block], change: Callable[[nn.Module, Block], nn.Module],
                run: Callable[[nn.Module], Any], *, fresh: bool, reuse: bool, description: str,
                info: dict[str, Any]) -> Iterator[tuple[Block | None, Any]]:
    """``(None, run(reference))``, then ``(block, run(change(copy of the model, block)))`` for each
    block: the reference is the scored model (a copy of it with ``fresh``, for a ``run`` that
    changes it, such as a repair). With ``reuse``, what the network computes before each block is
    recorded in the reference's run and replayed in the block's (:mod:`~layerprune.criteria.replay`):
    the same results, computed from the block on. ``info["replay"]`` then says how the
    candidates ran (:meth:`~layerprune.criteria.replay.Prefix.summary`)."""
    reference = copy.deepcopy(ctx.model) if fresh else ctx.model
    prefix = ctx.prefix([b.name for b in blocks]) if reuse and blocks else None
    yield None, (prefix.record(reference, run) if prefix else run(reference))
    del reference
    for block in ctx.track(blocks, description):
        def make(block: Block = block) -> nn.Module:
            return change(copy.deepcopy(ctx.model), block)
        yield block, (prefix.run(make, run, block.name)[0] if prefix else run(make()))
    if prefix is not None:
        info["replay"] = prefix.summary()


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
        return without(model, block)


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

    def __init__(self, metric: str = "accuracy", repair: bool = True, seed: int = 0, reuse: bool = True) -> None:
        super().__init__(metric, repair, reuse)
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
        from layerprune.surgery.edit import replacement

        from layerprune.surgery.hf import is_hf_model
        from layerprune.surgery.hf_sublayers import hidden_input

        blocks = removable(ctx)
        model, task = ctx.model, ctx.task
        pieces = ctx.micro_batches()
        total = sum(task.units(y) for _, y in pieces)
        estimate = {b.name: 0.0 for b in blocks}
        layers = is_hf_model(model)  # a transformers layer is removed to the identity: its input goes on
        with eval_mode(model):
            for x, y in ctx.track(pieces, self.name):
                outputs, changes = {}, {}

                def hook(name: str):
                    swap = None if layers else replacement(model.get_submodule(name),
                                                           next(b.edit for b in blocks if b.name == name))

                    def fn(module, args, *rest):
                        kwargs, out = rest if layers else ({}, rest[0])
                        rows = len(x)  # the stream a tuple-passing block passes on: a row per sample
                        out = main_tensor(out, rows)
                        with torch.no_grad():
                            if layers:
                                kept = hidden_input(args, kwargs).detach()
                            else:
                                kept = swap(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
                            changes[name] = main_tensor(kept, rows) - out.detach()
                        outputs[name] = out
                    return fn

                with forward_hooks(model, after={b.name: hook(b.name) for b in blocks}, with_kwargs=layers), \
                        torch.enable_grad():
                    x = x.to(ctx.device)
                    if x.is_floating_point():
                        x.requires_grad_(True)
                    loss = task.loss_sum(task.forward(model, x), y.to(ctx.device)) / total
                    names = [b.name for b in blocks if b.name in outputs]
                    grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                for name, g in zip(names, grads):
                    if g is None:
                        continue
                    per_sample = (g * changes[name]).flatten(1).sum(dim=1)
                    estimate[name] += float(per_sample.abs().sum() if self.absolute else per_sample.sum())
        return estimate


# -- Pons et al.: how much the model's representation changes without the block -------------------
def head_input(model: nn.Module) -> str | None:
    """The name of the classifier layer whose input is the model's penultimate representation
    (timm's ``get_classifier()``, a transformers model's output embeddings), or ``None`` when
    there is none (the logits are used then)."""
    get = getattr(model, "get_classifier", None) or getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        for name, module in model.named_modules():
            if module is head:
                return name
    return None


@no_grad
def penultimate(model: nn.Module, pieces: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                head: str | None) -> torch.Tensor:
    """The input of ``model``'s classifier ``head`` (or its output without one) for every sample."""
    grabbed: list[torch.Tensor] = []
    outputs = []
    before = {head: lambda m, args: grabbed.append(args[0].detach().flatten(1).float())} if head else {}
    with eval_mode(model), forward_hooks(model, before=before):
        for x, _ in pieces:
            out = model(x.to(device))
            if not head:
                outputs.append(out.detach().flatten(1).float())
    return torch.cat(grabbed if head else outputs)


class RemovalCriterion(Criterion):
    """Base of criteria that compare the model's features with those of the model without the
    block — the penultimate ones (the classifier's input) or, with ``features = "logits"``, its
    output: :meth:`change` says how much they moved."""

    features = "penultimate"
    view = View("last")  # a language model's rows: each window's last position (see layerprune.tasks.View)

    def __init__(self, repair: bool = False, repair_batches: int | None = None, reuse: bool = True) -> None:
        self.repair = bool(repair)
        self.repair_batches = _check_repair_batches(repair_batches)
        self.reuse = bool(reuse)

    def change(self, base: torch.Tensor, changed: torch.Tensor, labels: torch.Tensor) -> float:
        raise NotImplementedError

    def score(self, ctx: ScoringContext) -> CriterionResult:
        tokens = not ctx.task.has_classes  # a language model: its view's rows at the output head's input
        head = head_input(ctx.model) if self.features == "penultimate" or tokens else None
        batches = [ctx.batch(i) for i in range(ctx.num_batches)]
        repair = self.repair and ctx.repairs
        repair_data = ctx.repair_data()[:self.repair_batches] if repair else []
        labels = [y for _, y in batches]
        if tokens:
            labels = [self._rows(ctx, y[:, :, None], y)[1] for y in labels]

        def features(model: nn.Module) -> list[torch.Tensor]:
            if repair:
                ctx.repair_policy.apply(model, repair_data)
            found = [penultimate(model, [(piece, y) for piece in x.split(ctx.micro_batch)], ctx.device, head)
                     for x, y in batches]
            if not tokens:
                return found
            rows = [self._rows(ctx, f, y)[0] for f, (_, y) in zip(found, batches)]
            if self.features == "logits":  # the output head on those rows only (a vocabulary is wide)
                out = model.get_output_embeddings()
                with torch.no_grad():
                    rows = [out(r.to(device=out.weight.device, dtype=out.weight.dtype)).float() for r in rows]
            return rows

        # Repaired, the reference gets the same repair, so that a block that does nothing scores 0.
        info: dict[str, Any] = {}
        runs = each_change(ctx, removable(ctx), without, features, fresh=repair, reuse=self.reuse,
                           description=self.name, info=info)
        _, base = next(runs)
        scores = {block.name: float(np.mean([self.change(a, b, y.to(a.device))
                                             for a, b, y in zip(base, changed, labels)]))
                  for block, changed in runs}
        return CriterionResult(self.name, scores, self.params(),
                               {"features": head or "logits", "repair": repair, **info})


    def _rows(self, ctx: ScoringContext, features: torch.Tensor, targets: torch.Tensor):
        """A language model's ``(rows, labels)`` of one batch's features, as :attr:`view` asks."""
        (rows,), labels = ctx.task.view(self.view, (features,), targets.to(features.device), ctx.next_token_ranks,
                                        ctx.seed)
        return rows, labels


def _check_repair_batches(value: int | None) -> int | None:
    if value is not None and not is_count(value):
        raise LayerpruneError(f"repair_batches: must be an integer ≥ 1 or None (all), got {value!r}")
    return value


class CKARemovalCriterion(RemovalCriterion):
    """``1 − CKA(features of the model, features of the model without the block)``.

    Source: Pons et al., "Effective Layer Pruning Through Similarity Metric Perspective", ICPR
    2024 (the criterion Mugnaini et al.'s consensus builds on): linear CKA between the
    penultimate representation (the classifier's input) of the unpruned model and that of the
    model with the block removed; the block whose removal changes it least goes first. This
    differs from ``cka``, which compares a block's own input and output. As in the paper,
    without BatchNorm repair by default (``repair=True`` re-estimates each copy's statistics with
    the first ``repair_batches`` of the context's repair batches, ``None``: all). Cost: per
    block, one forward pass over the calibration samples (plus the repair's batches).
    """

    description = "1 − CKA of the model's penultimate features with and without the block (Pons et al., ICPR 2024)"

    def change(self, base: torch.Tensor, changed: torch.Tensor, labels: torch.Tensor) -> float:
        return 1.0 - linear_cka(base, changed)


# -- the greedy oracle --------------------------------------------------------------------------------
_GREEDY_CACHE: "OrderedDict[str, tuple[list[str], list[dict[str, float]], dict[str, Any]]]" = OrderedDict()
_GREEDY_CACHE_SIZE = 8


def _digest(h: "hashlib._Hash", tensors: Any) -> None:
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def fingerprint(model: nn.Module) -> str:
    """A digest of ``model``'s structure and state (weights and buffers)."""
    h = hashlib.sha1()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__qualname__};".encode())
    _digest(h, model.state_dict().items())
    return h.hexdigest()


class GreedyCriterion(Criterion):
    """Greedy oracle: remove, one at a time, the block whose removal raises the calibration loss
    least, re-evaluating every remaining candidate on the model pruned so far.

    Source: the greedy layer-removal loop of SLEB (Song et al., "SLEB: Streamlining LLMs through
    Redundancy Verification and Elimination of Transformer Blocks", ICML 2024) and BlockPruner
    (Zhong et al., 2024), with the loss after BatchNorm repair as in ``ablation`` (Molchanov et
    al., CVPR 2019). Every candidate copy is repaired with the first ``repair_batches`` of the
    context's repair batches (the pipeline's; ``None``: all of them), so the first choice is the
    block with the smallest ``ablation`` loss rise under that repair. The removal order respects
    the selection's constraints (never the last block of a stage, ``protect``, ``collapse``) and
    runs until nothing more may go; a block's score is its place in that order (first removed:
    0), so ``count`` and ``budget`` cut the greedy sequence where they stop. The order is
    computed once per model, calibration draw and repair and reused (in this process) for every
    rule and budget. Cost: about ``B²/2`` repaired evaluations for ``B`` candidates.
    """

    description = "Oracle: greedily remove the block whose removal raises the loss least, re-scoring each step (SLEB 2024)"

    def __init__(self, metric: str = "loss", repair_batches: int | None = 5, reuse: bool = True) -> None:
        self.metric = _check_metric(metric)
        self.repair_batches = _check_repair_batches(repair_batches)
        self.reuse = bool(reuse)

    def _key(self, ctx: ScoringContext) -> str:
        """The model, the samples it is judged on and repaired with, and the constraints."""
        h = hashlib.sha1(fingerprint(ctx.model).encode())
        h.update(f"{self.params()}|{sorted(ctx.protect)}|{ctx.collapse}|{ctx.repairs}".encode())
        _digest(h, (("calibration", t) for pair in ctx.batches() for t in pair))
        if ctx.repairs:
            _digest(h, (("repair", t) for pair in ctx.repair_data()[:self.repair_batches] for t in pair))
        return h.hexdigest()

    def score(self, ctx: ScoringContext) -> CriterionResult:
        key = self._key(ctx)
        if key not in _GREEDY_CACHE:
            _GREEDY_CACHE[key] = self._order(ctx)
            while len(_GREEDY_CACHE) > _GREEDY_CACHE_SIZE:
                _GREEDY_CACHE.popitem(last=False)
        order, trace, info = _GREEDY_CACHE[key]
        return CriterionResult(self.name, {name: float(i) for i, name in enumerate(order)}, self.params(),
                               {"order": list(order), "after_each": [dict(t) for t in trace], **info})

    def _value(self, result: EvalResult | None) -> float:
        """What the step minimises (a loss that is not a number, or no result, counts as +∞)."""
        if result is None:
            return math.inf
        v = result.loss if self.metric == "loss" else -result.accuracy
        return math.inf if math.isnan(v) else v

    def _hopeless(self, best: tuple[float, int] | None, index: int, total: int) -> Any:
        """``until`` for :func:`~layerprune.evaluation.evaluate`: stop a candidate once even its
        best possible result loses to ``best`` (value, place among the options; ties go to the
        earlier block). Exact: cross-entropy adds up non-negative terms, and the rest of the
        samples can at most all be right."""
        if best is None:
            return None
        value, first = best

        def beaten(bound: float) -> bool:
            return bound > value or (bound >= value and index > first)

        if self.metric == "loss":
            return lambda loss, correct, seen: beaten(loss / total)
        return lambda loss, correct, seen: beaten(-((correct + total - seen) / total))

    def _order(self, ctx: ScoringContext) -> tuple[list[str], list[dict[str, float]], dict[str, Any]]:
        """The removal order. With ``reuse``: what the network computes before each candidate is
        replayed from a recording of the model pruned so far (:mod:`~layerprune.criteria.replay`;
        the winner's run is the next step's recording), candidates are visited
        most promising first (the cheapest, latest ones in the first step), and one that can no
        longer win stops early. The order is the same as without (``reuse=False``)."""
        repair = ctx.repairs
        batches = ctx.repair_data()[:self.repair_batches] if repair else []
        total = sum(ctx.task.units(y) for _, y in ctx.micro_batches())  # what the loss is averaged over

        def measure(model: nn.Module, until: Any = None) -> EvalResult | None:
            if repair:
                ctx.repair_policy.apply(model, batches)
            return ctx.evaluate(model, until)

        protected = set(ctx.protect)
        left = [b for b in removable(ctx) if b.name not in protected and b.can_remove(ctx.collapse)]
        plan = StagePlan(ctx.blocks)
        current = copy.deepcopy(ctx.model)
        prefix = ctx.prefix([b.name for b in left]) if self.reuse and left else None
        if prefix is not None:  # the reference, the best candidate so far and the one running
            prefix.record(copy.deepcopy(current), measure, factor=3)
        order: list[str] = []
        trace: list[dict[str, float]] = []
        previous: dict[str, float] = {}
        stopped = 0  # candidates whose evaluation stopped once they could not win
        while True:
            options = [b for b in left if b.collapsible or plan.left.get(b.stage, 0) > 1]
            if not options:
                break
            place = {b.name: i for i, b in enumerate(options)}
            visit = options
            if prefix is not None:
                visit = sorted(options, key=lambda b: (previous.get(b.name, math.inf), -place[b.name]))
            results: dict[str, EvalResult | None] = {}
            best: tuple[float, int] | None = None
            kept = None
            for block in ctx.track(visit, f"{self.name}: step {len(order) + 1}"):
                def make(block: Block = block) -> nn.Module:
                    return without(copy.deepcopy(current), block)
                if prefix is None:
                    result, recorded = measure(make()), None
                else:
                    until = self._hopeless(best, place[block.name], total)
                    result, recorded = prefix.run(make, lambda m, until=until: measure(m, until), block.name,
                                                  keep=prefix.outputs is not None)
                results[block.name] = result
                stopped += result is None
                if result is not None and (best is None or (self._value(result), place[block.name]) < best):
                    best, kept = (self._value(result), place[block.name]), recorded
            chosen = options[best[1]]  # the smallest value; ties: the earliest block
            if prefix is not None and prefix.outputs is not None:
                prefix.use(kept)  # the model without ``chosen``: the next reference
            without(current, chosen)
            plan.try_remove(chosen)
            left.remove(chosen)
            order.append(chosen.name)
            trace.append({"loss": results[chosen.name].loss, "accuracy": results[chosen.name].accuracy})
            previous = {name: self._value(r) for name, r in results.items() if r is not None}
        return order, trace, ({"replay": {**prefix.summary(), "stopped_early": stopped}} if prefix else {})

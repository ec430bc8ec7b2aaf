"""The pruning pipeline: score → plan → remove → repair, one shot or in steps.

This is the one place where a criterion, a selection rule, a calibration draw and a BatchNorm repair
policy meet. ``layerprune run``, ``layerprune bench`` and ``layerprune score`` all call it.

>>> pruner = Pruner("modularity", rule="budget", rule_params={"macs": 0.5})  # doctest: +SKIP
>>> result = pruner.prune(model, build_dataset("digits"))  # doctest: +SKIP
>>> result.removed, result.steps[0].after_repair.accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from layerprune.calibration import Calibration, Pack, Pair, Repair
from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.catalog import get_criterion
from layerprune.criteria.context import ScoringContext
from layerprune.criteria.selection import RULES, budget_share, budget_target, rule_problems, select_blocks
from layerprune.errors import LayerpruneError
from layerprune.params import is_count
from layerprune.evaluation import EvalResult, model_device
from layerprune.tasks import IMAGE_CLASSIFICATION, Task
from layerprune.surgery.blocks import Block
from layerprune.surgery.cost import Latency, compare_latency, measure_block_latency
from layerprune.surgery.find import check_level, find_blocks
from layerprune.surgery.hf import is_hf_model
from layerprune.surgery.remove import remove_blocks

Evaluate = Callable[[nn.Module], EvalResult]
EACH = "each"  # steps=EACH: one block per step, re-scored before each
BUDGET_REPEATS = 30  # timed forward passes per model when a latency budget is confirmed


@dataclass
class Scored:
    """A criterion's result on one model, with the blocks it scored and the input they were found with."""

    result: CriterionResult
    blocks: list[Block]
    example_input: torch.Tensor
    calibration: dict[str, Any] = field(default_factory=dict)  # as drawn: samples and batches actually used

    @property
    def scores(self) -> dict[str, float]:
        return self.result.scores


@dataclass
class PruneStep:
    """What one step did: the blocks it removed (lowest score first), the scores it chose them by,
    and the accuracy right after surgery and after BatchNorm repair (``None`` when skipped)."""

    step: int
    removed: list[str]
    scores: dict[str, float]
    result: CriterionResult | None = None
    after_surgery: EvalResult | None = None
    after_repair: EvalResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what a callback adds (e.g. finetuning)
    last: bool = True  # no step follows (with steps="each": as far as this step can tell)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"step": self.step, "removed": list(self.removed)}
        if self.after_surgery is not None:
            d["after_surgery"] = self.after_surgery.to_dict()
        if self.after_repair is not None:
            d["after_repair"] = self.after_repair.to_dict()
        return {**d, **self.extra}

    def summary(self) -> str:
        line = f"removed {len(self.removed)} blocks"
        if self.after_surgery is not None:
            name, value = _metric(self.after_surgery)
            line += f": {name} after surgery {value}"
        if self.after_repair is not None:
            line += f", after BatchNorm repair {_metric(self.after_repair)[1]}"
        return line


def _metric(result: EvalResult) -> tuple[str, str]:
    """``("accuracy", "0.933")``, or ``("perplexity", "12.41")`` where tokens were scored."""
    return ("perplexity", f"{result.perplexity:.2f}") if result.tokens is not None else ("accuracy",
                                                                                          f"{result.accuracy:.3f}")


@dataclass
class PruneResult:
    """The pruned model (a new one), the removed blocks in removal order, the last step's scores,
    and one :class:`PruneStep` per step."""

    model: nn.Module
    removed: list[str]
    scores: dict[str, float]
    steps: list[PruneStep]


class Pruner:
    """Score a model's blocks with a criterion, turn the scores into a plan with a rule, remove the
    planned blocks and repair BatchNorm statistics — once, or ``steps`` times, re-scoring the
    model pruned by the step before.

    ``criterion`` is a name (with ``criterion_params``) or a :class:`Criterion`. Without ``rule``
    the criterion's own rule is used (``rule_params`` then adjust it). With ``steps > 1``: under
    ``threshold`` each step removes its share of the blocks still below the threshold; under
    ``count`` and ``budget`` the first step's plan fixes how many blocks go, removed in near-equal
    shares. ``steps="each"`` removes one block per step, re-scoring before each: under
    ``threshold`` until no block scores below it, under ``count`` until ``k`` are gone, under
    ``budget`` until the removed blocks carry the budget's share of the unpruned model. The
    ``run`` rule removes one run at once (``steps=1``). ``level="sublayer"`` scores and removes
    the residual branches inside blocks (a transformer block's ``attn`` and ``mlp``) instead of
    whole blocks (see :func:`~layerprune.surgery.find.find_blocks`). The input model is not
    modified, unless ``prune(..., inplace=True)`` asks for it.
    """

    def __init__(
        self,
        criterion: str | Criterion,
        *,
        criterion_params: Mapping[str, Any] | None = None,
        rule: str | None = None,
        rule_params: Mapping[str, Any] | None = None,
        calibration: Calibration = Calibration(),
        repair: Repair = Repair(),
        steps: int | str = 1,
        collapse: bool = False,
        protect: Sequence[str] = (),
        level: str = "block",
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        task: Task | None = None,
    ) -> None:
        self.task = task or IMAGE_CLASSIFICATION
        if isinstance(criterion, Criterion):
            if criterion_params:
                raise LayerpruneError("criterion_params: give them to the criterion you built, or pass its name")
            self.criterion = criterion
        else:
            self.criterion = get_criterion(criterion, **dict(criterion_params or {}))
        if rule is None:  # the criterion's own rule; rule_params adjust it
            chosen = {**dict(self.criterion.default_rule), **dict(rule_params or {})}
        else:
            chosen = {"rule": rule, **dict(rule_params or {})}
        name = RULES.canonical(chosen["rule"])
        problems = rule_problems(name, {k: v for k, v in chosen.items() if k != "rule"})
        if problems:
            raise LayerpruneError(f"rule {name!r}: {'; '.join(problems)}")
        self.rule = {**chosen, "rule": name}
        if steps != EACH and not is_count(steps):
            raise LayerpruneError(f"steps: must be an integer ≥ 1 or {EACH!r} (one block per step), got {steps!r}")
        if name == "run" and steps != 1:
            raise LayerpruneError(f"steps: rule 'run' removes one run of blocks at once; use steps=1, got {steps!r}")
        if not isinstance(calibration, Calibration):
            raise LayerpruneError(f"calibration: must be a layerprune.Calibration, got {type(calibration).__name__}")
        if not isinstance(repair, Repair):
            raise LayerpruneError(f"repair: must be a layerprune.Repair, got {type(repair).__name__}")
        self.calibration, self.repair = calibration, repair
        self.steps, self.collapse, self.protect = steps, bool(collapse), list(protect)
        self.level = check_level(level)
        self.progress, self.log = progress, log
        self._pack: Pack | None = None

    def __repr__(self) -> str:
        return (f"Pruner({self.criterion!r}, rule={self.rule!r}, calibration={self.calibration!r}, "
                f"repair={self.repair!r}, steps={self.steps})")

    # -- the pieces -----------------------------------------------------------------------------
    def pack(self, data: Any) -> Pack:
        """What this pruner takes from ``data``, drawn once (:meth:`Pack.of`): the calibration
        batches every scoring, removal and measurement uses, and the repair batches."""
        if self._pack is None or self._pack.data is not data:
            self._pack = Pack.of(self.task, data, self.calibration, self.repair)
        return self._pack

    def context(self, model: nn.Module, data: Any, *, blocks: list[Block] | None = None) -> ScoringContext:
        """The scoring context every criterion of this pruner sees: its calibration and repair."""
        return ScoringContext(model, data, calibration=self.calibration, repair=self.repair, blocks=blocks,
                              progress=self.progress, protect=self.protect, collapse=self.collapse, level=self.level,
                              task=self.task, pack=self.pack(data))

    def score(self, model: nn.Module, data: Any) -> Scored:
        """The criterion's scores for ``model``'s blocks (``model`` is not changed)."""
        ctx = self.context(model, data)
        drawn = {**self.calibration.to_dict(), "samples": ctx.samples, "batches": ctx.num_batches}
        return Scored(self.criterion(ctx), ctx.blocks, ctx.example_input, drawn)

    def plan(self, scores: Mapping[str, float] | CriterionResult, blocks: list[Block], *,
             count: int | None = None) -> list[str]:
        """The blocks the rule removes, in forward order (``count``: the ``count`` lowest instead).
        ``scores`` may be the criterion's whole result, whose run scores the ``run`` rule reads."""
        runs = None
        if isinstance(scores, CriterionResult):
            scores, runs = scores.scores, scores.diagnostics.get("runs")
        rule = {"rule": "count", "k": count} if count is not None else self.rule
        params = {k: v for k, v in rule.items() if k != "rule"}
        return select_blocks(scores, blocks, rule=rule["rule"], protect=self.protect, collapse=self.collapse,
                             runs=runs, **params)

    def repair_batches(self, data: Any) -> list[Pair]:
        """The batches BatchNorm is repaired with: the same ones the criteria's contexts use."""
        return self.pack(data).repair

    def repair_model(self, model: nn.Module, data: Any) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics in place with this pruner's :class:`Repair`."""
        return self.repair.apply(model, self.repair_batches(data)) if self.repair.enabled else model

    def remove(
        self,
        model: nn.Module,
        names: Sequence[str],
        data: Any,
        *,
        blocks: list[Block] | None = None,
        example_input: torch.Tensor | None = None,
        evaluate_with: Evaluate | None = None,
        step: int = 1,
        inplace: bool = False,
    ) -> tuple[nn.Module, PruneStep]:
        """A copy of ``model`` without ``names``, repaired; the record has its accuracy after
        surgery and after repair (``evaluate_with``, default: the calibration samples). With
        ``inplace=True`` a transformers model is edited itself, without a copy (a timm model is
        always edited on a copy)."""
        measure = evaluate_with or self._calibration_eval(data)
        if example_input is None:  # one calibration sample, on the model's device
            example_input = self.pack(data).example_input.to(model_device(model))
        if blocks is None:  # at this pruner's level
            blocks = find_blocks(model, example_input, level=self.level)
        own = {"inplace": True} if inplace and is_hf_model(model) else {}
        pruned = remove_blocks(model, list(names), example_input, collapse=self.collapse, blocks=blocks, **own)
        record = PruneStep(step, list(names), {}, after_surgery=measure(pruned))
        if self.repair.enabled and self.task.repairs:
            self.repair_model(pruned, data)
            record.after_repair = measure(pruned)
        if self.log is not None:
            self.log(record.summary())
        return pruned, record

    # -- the pipeline -----------------------------------------------------------------------------
    def prune(
        self,
        model: nn.Module,
        data: Any,
        *,
        evaluate_with: Evaluate | None = None,
        after_step: Callable[[PruneStep, nn.Module], None] | None = None,
        inplace: bool = False,
    ) -> PruneResult:
        """Prune ``model`` (left untouched) on ``data``: ``steps`` rounds of score → plan → remove →
        repair. ``after_step(record, pruned_model)`` runs after each step — between steps a recipe
        finetunes there (in place), and what it puts in ``record.extra`` is kept. With
        ``inplace=True`` ``model`` itself is pruned, without the copy (for a transformers model that
        fits in memory once: every step then edits it in place)."""
        current = model if inplace else copy.deepcopy(model)
        measure = evaluate_with or self._calibration_eval(data)
        records: list[PruneStep] = []
        removed: list[str] = []
        total: int | None = None
        first_blocks: list[Block] = []
        rule = self.rule["rule"]
        each = self.steps == EACH
        i = 0
        while each or i < self.steps:
            i += 1
            scored = self.score(current, data)
            scores = scored.scores
            blocks = scored.blocks
            if i == 1:  # later steps plan by count against these (and _budget_met reads them)
                blocks = first_blocks = self.blocks(current, scored.example_input, blocks)  # timed, under a latency budget
            if self.steps == 1:
                chosen = self.plan(scored.result, blocks)
            elif rule == "threshold":
                # The blocks still below the threshold, re-scored; this step takes its share of them.
                below = self.plan(scores, blocks)
                share = 1 if each else math.ceil(len(below) / (self.steps - i + 1))
                chosen = sorted(below, key=lambda n: scores[n])[:share]
            else:
                # The first plan's number of blocks (checks the budget can be met), then near-equal
                # shares of it, re-scored each time; one by one with steps="each" (the loop stops
                # once a step reaches k or the budget).
                if total is None:
                    total = len(self.plan(scores, blocks))
                k = 1 if each else round(total * i / self.steps) - round(total * (i - 1) / self.steps)
                try:
                    chosen = self.plan(scores, blocks, count=k)
                except LayerpruneError:
                    chosen = []  # nothing left that may go
            if each and not chosen and records:
                records[-1].last = True
                break
            chosen = sorted(chosen, key=lambda n: scores[n])  # removal order: least important first
            # ``current`` is this prune's own (a copy, or the model given in place): no copy more.
            current, record = self.remove(current, chosen, data, blocks=blocks, example_input=scored.example_input,
                                          evaluate_with=measure, step=i, inplace=True)
            record.scores, record.result = dict(scores), scored.result
            removed.extend(chosen)
            if not each:
                record.last = i == self.steps
            elif rule == "threshold":
                record.last = not chosen or len(below) <= 1
            else:
                record.last = not chosen or (self._budget_met(first_blocks, removed) if rule == "budget"
                                             else len(removed) >= (total or 0))
            records.append(record)
            if after_step is not None:
                after_step(record, current)
            if each and (not chosen or (record.last and rule != "threshold")):
                break  # k gone or the budget met: another scoring would choose nothing (threshold may)
        return PruneResult(current, removed, dict(records[-1].scores), records)

    def _budget_met(self, blocks: list[Block], removed: list[str]) -> bool:
        """Whether ``removed`` carry the budget rule's share of the unpruned model (its ``blocks``)."""
        key, target = budget_target(self.rule)
        return budget_share(blocks, removed, key) >= target - 1e-12

    # -- latency budgets --------------------------------------------------------------------------
    @property
    def needs_latency(self) -> bool:
        """Whether the rule is a latency budget (block latencies must be measured to plan)."""
        return self.rule["rule"] == "budget" and self.rule.get("latency") is not None

    def latency_settings(self, model: nn.Module) -> dict[str, Any]:
        """Where a latency budget is measured: the rule's device (default: the model's), batch
        size (1) and precision (32: full)."""
        return {"device": str(self.rule.get("device") or model_device(model)),
                "batch_size": int(self.rule.get("batch_size") or 1), "precision": str(self.rule.get("precision") or "32")}

    def blocks(self, model: nn.Module, example_input: torch.Tensor, blocks: list[Block] | None = None) -> list[Block]:
        """``model``'s blocks as the rule needs them: with their measured latency shares under a
        latency budget (timed on the rule's device, batch size and precision)."""
        blocks = blocks if blocks is not None else find_blocks(model, example_input, level=self.level)
        if not self.needs_latency:
            return blocks
        settings = self.latency_settings(model)
        measured = measure_block_latency(model, [b.name for b in blocks if b.stage], tuple(example_input.shape[1:]),
                                         **settings)
        return [dataclasses.replace(b, latency_share=measured.shares.get(b.name)) for b in blocks]

    def speedup(self, base: nn.Module, pruned: nn.Module, input_size: tuple[int, ...],
                measured: tuple[Latency, Latency] | None = None) -> dict[str, Any]:
        """A latency budget confirmed on the pruned model: both timed side by side where the
        budget was measured (or ``measured`` there already); the speed-up against the one the
        budget asks for (``1 / (1 − latency)``)."""
        settings = self.latency_settings(base)
        before, after = measured or compare_latency([base, pruned], input_size, repeats=BUDGET_REPEATS, **settings)
        target = 1 / (1 - float(self.rule["latency"]))
        speedup = before.median_ms / after.median_ms
        return {"latency": float(self.rule["latency"]), "target_speedup": target, "speedup": speedup,
                "met": speedup >= target, "base_ms": before.median_ms, "pruned_ms": after.median_ms, **settings}

    def _calibration_eval(self, data: Any) -> Evaluate:
        pieces = self.pack(data).pieces()  # what ScoringContext.evaluate measures on
        return lambda m: self.task.evaluate(m, pieces)

"""Selection rules: turn scores (higher = keep) and a budget into the blocks to remove.

Every rule walks the candidates from the lowest score up and removes each one unless that would
empty its stage, so these always hold: only removable blocks (or collapsible ones, with
``collapse=True``) that have a score, never a ``protect``-ed name, at least one block kept per
stage. Rules differ only in when they stop:

* ``threshold`` — remove every block scoring strictly below ``threshold``;
* ``count`` — remove the ``k`` lowest (or ``fraction`` of the candidates);
* ``budget`` — remove lowest first until the parameters (``params``) or MACs (``macs``) fall by
  at least that fraction of the model's total;
* ``run`` — remove the one run of ``n`` consecutive blocks of a stage that scores lowest: by the
  criterion's own run scores where it has them (``angular``), else by the sum of its blocks' scores.

>>> select_blocks({"layer1.0": 0.1, "layer1.1": 0.01}, blocks, rule="threshold", threshold=0.03)  # doctest: +SKIP
['layer1.1']
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable, Mapping

from layerprune.errors import LayerpruneError
from layerprune.params import check_parameters, is_count
from layerprune.registry import Registry, did_you_mean
from layerprune.surgery.blocks import Block, StagePlan, stages

# A rule gets the plan (with its ``try_remove``) and the candidates, lowest score first.
Rule = Callable[..., None]
RULES: Registry[Rule] = Registry("selection rule")


class RuleParameterError(LayerpruneError):
    """A rule parameter with a bad value (as opposed to a request no plan can meet)."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def removed_share(blocks: list[Block], names: Iterable[str]) -> tuple[float, float]:
    """The shares of the model's parameters and MACs that the blocks ``names`` carry (estimates
    from :func:`find_blocks`; a collapsed block keeps its shortcut, counted here as removed)."""
    names = set(names)
    total = sum(b.params for b in blocks) or 1
    removed = [b for b in blocks if b.name in names]
    return sum(b.params for b in removed) / total, sum(b.macs_share for b in removed)


class Plan(StagePlan):
    """The blocks a rule has chosen so far (never the last of a stage), and what they carry."""

    @property
    def params_share(self) -> float:
        return removed_share(self.blocks, (b.name for b in self.removed))[0]

    @property
    def macs_share(self) -> float:
        return removed_share(self.blocks, (b.name for b in self.removed))[1]


def max_reduction(blocks: list[Block], key: str, *, protect: Iterable[str] = (), collapse: bool = False) -> float:
    """The largest ``params`` or ``macs`` share any rule can remove under the constraints: every
    allowed block, the cheapest of each stage kept when the whole stage is allowed."""
    protected = set(protect)
    total = sum(b.params for b in blocks) or 1
    share = (lambda b: b.params / total) if key == "params" else (lambda b: b.macs_share)
    plan = Plan(blocks)
    for block in sorted((b for b in blocks if b.stage and b.can_remove(collapse) and b.name not in protected),
                        key=share, reverse=True):
        plan.try_remove(block)
    return plan.params_share if key == "params" else plan.macs_share


@RULES.register("threshold")
def threshold_rule(plan: Plan, ordered: list[tuple[Block, float]], *, threshold: float) -> None:
    """Remove every block scoring strictly below ``threshold``."""
    for block, score in ordered:
        if score < threshold:
            plan.try_remove(block)


@RULES.register("count")
def count_rule(plan: Plan, ordered: list[tuple[Block, float]], *, k: int | None = None,
               fraction: float | None = None) -> None:
    """Remove the ``k`` lowest-scoring blocks (or ``fraction`` of the candidates)."""
    if (k is None) == (fraction is None):
        raise RuleParameterError("k", "give exactly one of k or fraction")
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise RuleParameterError("fraction", f"must be in [0, 1], got {fraction}")
        k = int(math.floor(fraction * len(ordered)))
    assert k is not None
    if not isinstance(k, int) or k < 0:
        raise RuleParameterError("k", f"must be an integer ≥ 0, got {k!r}")
    for block, _ in ordered:
        if len(plan.removed) >= k:
            return
        plan.try_remove(block)
    if len(plan.removed) < k:
        raise LayerpruneError(
            f"rule 'count': k={k} but only {len(plan.removed)} blocks can be removed "
            "(removable, not protected, at least one kept per stage)"
        )


@RULES.register("budget")
def budget_rule(plan: Plan, ordered: list[tuple[Block, float]], *, params: float | None = None,
                macs: float | None = None) -> None:
    """Remove lowest first until parameters or MACs fall by at least the given fraction."""
    if (params is None) == (macs is None):
        raise RuleParameterError("params", "give exactly one of params or macs (a fraction, e.g. 0.4)")
    key, target = ("params", params) if params is not None else ("macs", macs)
    if not 0 < target < 1:
        raise RuleParameterError(key, f"must be a fraction in (0, 1), got {target}")

    def reached() -> bool:
        return (plan.params_share if key == "params" else plan.macs_share) >= target - 1e-12

    for block, _ in ordered:
        if reached():
            return
        plan.try_remove(block)
    if not reached():
        got = plan.params_share if key == "params" else plan.macs_share
        raise LayerpruneError(
            f"rule 'budget': {key}={target:g} is out of reach; removing every allowed block saves {got:.3f}"
        )


@RULES.register("run")
def run_rule(plan: Plan, ordered: list[tuple[Block, float]], *, n: int,
             runs: Mapping[str, Any] | None = None) -> None:
    """Remove the lowest-scoring run of ``n`` consecutive blocks of one stage.

    ``runs`` (given by :func:`select_blocks`, from a criterion that scores runs) is
    ``{"n": n, "scores": {first block: score}}``; without it a run scores the sum of its blocks'.
    """
    if not is_count(n):
        raise RuleParameterError("n", f"must be an integer ≥ 1, got {n!r}")
    if runs is not None and runs.get("n") != n:
        raise RuleParameterError("n", f"the criterion scored runs of {runs.get('n')} blocks, not {n} "
                                      "(set the criterion's n to the same number)")
    if not ordered and not plan.blocks:
        return  # a parameter check: nothing to choose from
    allowed = {b.name: score for b, score in ordered}
    best: tuple[float, list[Block]] | None = None
    for stage, members in stages(plan.blocks).items():
        if not stage:
            continue
        for i in range(len(members) - n + 1):
            run = members[i:i + n]
            if any(b.name not in allowed for b in run):
                continue
            if sum(not b.collapsible for b in run) >= plan.left.get(stage, 0):
                continue  # it would empty the stage
            if runs is not None:
                score = runs["scores"].get(run[0].name)
                if score is None:
                    continue  # the criterion could not score it (e.g. input and output shapes differ)
            else:
                score = sum(allowed[b.name] for b in run)
            if best is None or score < best[0]:
                best = (float(score), run)
    if best is None:
        raise LayerpruneError(f"rule 'run': no run of {n} consecutive removable blocks in one stage "
                              "(not protected, at least one kept per stage)")
    for block in best[1]:
        plan.try_remove(block)


def rule_parameters(rule: str) -> list[str]:
    fn = RULES.get(rule)
    return [p for p in inspect.signature(fn).parameters if p not in ("plan", "ordered", "runs")]


def rule_problems(rule: str, params: Mapping[str, Any], where: str = "") -> list[str]:
    """What is wrong with ``params`` for ``rule`` (names, types, values), before any scoring."""
    fn = RULES.get(rule)
    problems = check_parameters(fn, dict(params), where, skip=2)
    if not problems:
        try:
            fn(Plan([]), [], **params)  # values are checked before a rule looks at any block
        except RuleParameterError as exc:
            problems.append(f"{where + '.' if where else ''}{exc.key}: {exc.message}")
        except LayerpruneError:
            pass  # "cannot reach": depends on the blocks, not on the parameters
    return problems


def select_blocks(
    scores: Mapping[str, float],
    blocks: list[Block],
    *,
    rule: str = "threshold",
    protect: Iterable[str] = (),
    collapse: bool = False,
    runs: Mapping[str, Any] | None = None,
    **params: Any,
) -> list[str]:
    """The names of the blocks to remove, in forward order.

    ``scores`` maps block name → importance (higher = keep); ``blocks`` come from
    :func:`~layerprune.find_blocks`. Blocks without a score are kept. ``runs`` are a criterion's
    scores of runs of blocks (its result's ``diagnostics["runs"]``), read by the ``run`` rule.
    """
    fn = RULES.get(rule)
    problems = rule_problems(rule, params)
    if problems:
        raise LayerpruneError(f"rule {RULES.canonical(rule)!r}: {'; '.join(problems)}")
    by_name = {b.name: b for b in blocks}
    protect = list(protect)
    for name in list(scores) + protect:
        if name not in by_name:
            raise LayerpruneError(did_you_mean(name, [b.name for b in blocks if b.stage], "block"))
    protected = set(protect)
    ordered = sorted(
        ((by_name[n], float(s)) for n, s in scores.items()
         if n not in protected and by_name[n].stage and by_name[n].can_remove(collapse) and not math.isnan(s)),
        key=lambda bs: bs[1],
    )
    plan = Plan(blocks)
    if runs is not None and "runs" in inspect.signature(fn).parameters:
        params = {**params, "runs": runs}
    fn(plan, ordered, **params)
    chosen = {b.name for b in plan.removed}
    return [b.name for b in blocks if b.name in chosen]

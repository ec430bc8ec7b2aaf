"""Selection rules: turn scores (higher = keep) and a budget into the blocks to remove.

Every rule walks the candidates from the lowest score up and removes each one unless that would
empty its stage, so these always hold: only removable blocks (or collapsible ones, with
``collapse=True``) that have a score, never a ``protect``-ed name, at least one block kept per
stage. Rules differ only in when they stop:

* ``threshold`` — remove every block scoring strictly below ``threshold``;
* ``count`` — remove the ``k`` lowest (or ``fraction`` of the candidates);
* ``budget`` — remove lowest first until the parameters (``params``), MACs (``macs``) or
  measured latency (``latency``, each block's share timed on the device) fall by at least that
  fraction of the model's total;
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
from layerprune.surgery.cost import PRECISIONS

# A rule gets the plan (with its ``try_remove``) and the candidates, lowest score first.
Rule = Callable[..., None]
RULES: Registry[Rule] = Registry("selection rule")


class RuleParameterError(LayerpruneError):
    """A rule parameter with a bad value (as opposed to a request no plan can meet)."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


#: What a ``budget`` cuts a share of: parameters, MACs (counted), latency (measured per block) or
#: layers (the model's removable units: a language model's layers, an image model's blocks).
BUDGET_KEYS = ("params", "macs", "latency", "layers")


def budget_share(blocks: list[Block], names: Iterable[str], key: str) -> float:
    """The share of the model's ``key`` (params, macs, latency or layers) that the blocks ``names``
    carry (estimates from :func:`find_blocks`, latency from :func:`measure_block_latency`; a
    collapsed block keeps its shortcut, counted here as removed)."""
    names = set(names)
    removed = [b for b in blocks if b.name in names]
    if key == "params":
        return sum(b.params for b in removed) / (sum(b.params for b in blocks) or 1)
    if key == "macs":
        return sum(b.macs_share for b in removed)
    if key == "layers":  # of the blocks in a stage (what can be removed at all), not the fixed parts
        return sum(1 for b in removed if b.stage) / (sum(1 for b in blocks if b.stage) or 1)
    unmeasured = [b.name for b in removed if b.latency_share is None]
    if unmeasured:
        raise LayerpruneError(f"latency budget: the latency of {unmeasured[0]} was not measured (give blocks "
                              "from Pruner.blocks, or set their latency_share with measure_block_latency)")
    return sum(b.latency_share for b in removed)


def removed_share(blocks: list[Block], names: Iterable[str]) -> tuple[float, float]:
    """The shares of the model's parameters and MACs that the blocks ``names`` carry."""
    names = list(names)
    return budget_share(blocks, names, "params"), budget_share(blocks, names, "macs")


def budget_target(params: Mapping[str, Any]) -> tuple[str, float]:
    """The key (params, macs, latency or layers) and the share of a ``budget`` rule's parameters."""
    given = [k for k in BUDGET_KEYS if params.get(k) is not None]
    if len(given) != 1:
        raise RuleParameterError(given[1] if len(given) > 1 else "params",
                                 "give exactly one of params, macs, latency or layers (a fraction to cut, e.g. 0.4)")
    return given[0], params[given[0]]


class Plan(StagePlan):
    """The blocks a rule has chosen so far (never the last of a stage), and what they carry."""

    def share(self, key: str) -> float:
        return budget_share(self.blocks, (b.name for b in self.removed), key)

    @property
    def params_share(self) -> float:
        return self.share("params")

    @property
    def macs_share(self) -> float:
        return self.share("macs")


def max_reduction(blocks: list[Block], key: str, *, protect: Iterable[str] = (), collapse: bool = False) -> float:
    """The largest ``params``, ``macs`` or ``latency`` share any rule can remove under the
    constraints: every allowed block, the costliest first, one kept in each stage."""
    protected = set(protect)
    plan = Plan(blocks)
    for block in sorted((b for b in blocks if b.stage and b.can_remove(collapse) and b.name not in protected),
                        key=lambda b: budget_share(blocks, [b.name], key), reverse=True):
        plan.try_remove(block)
    return plan.share(key)


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
                macs: float | None = None, latency: float | None = None, layers: float | None = None,
                device: str | None = None, batch_size: int = 1, precision: str | None = None) -> None:
    """Remove lowest first until parameters, MACs, measured latency or the number of layers (the
    blocks in a stage) fall by at least the given fraction. With ``latency``: ``device``,
    ``batch_size`` and ``precision`` say where it is measured (defaults: the model's device,
    batch 1, full precision; in a recipe, the run's)."""
    key, target = budget_target({"params": params, "macs": macs, "latency": latency, "layers": layers})
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < 1:
        raise RuleParameterError(key, f"must be a fraction in (0, 1), got {target}")
    timing = {"device": device, "batch_size": batch_size if batch_size != 1 else None, "precision": precision}
    if key != "latency" and (extra := next((k for k, v in timing.items() if v is not None), None)):
        raise RuleParameterError(extra, "only with a latency budget (it says where latency is measured)")
    if not is_count(batch_size):
        raise RuleParameterError("batch_size", f"must be an integer ≥ 1, got {batch_size!r}")
    if precision is not None and str(precision) not in PRECISIONS:
        raise RuleParameterError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device is not None and not _is_device(device):
        raise RuleParameterError("device", f"must be cpu, cuda or cuda:N, got {device!r}")

    def reached() -> bool:
        return plan.share(key) >= target - 1e-12

    for block, _ in ordered:
        if reached():
            return
        plan.try_remove(block)
    if not reached():
        raise LayerpruneError(
            f"rule 'budget': {key}={target:g} is out of reach; removing every allowed block saves {plan.share(key):.3f}"
        )


def _is_device(device: Any) -> bool:
    if not isinstance(device, str):
        return False
    kind, _, index = device.partition(":")
    return kind in ("cpu", "cuda", "mps") and (not index or (kind == "cuda" and index.isdigit()))


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

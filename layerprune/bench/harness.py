"""``layerprune bench``: every criterion × budget × seed on one base model, measured the same way.

For each seed, each criterion scores the base model's blocks once (timed, forward passes
counted) through the recipe's :class:`~layerprune.Pruner`, with that seed's calibration draw and
the recipe's repair: every criterion sees the same calibration samples and repair batches. For
each trial (criterion × budget × seed): the pruner plans → removes → repairs, then accuracy before
finetune → finetune (the same epochs for everyone) → accuracy after. A width-pruning row
(Torch-Pruning channel pruning at the same MACs) goes through the same repair and finetune.
Every score set and trial is its own JSON file, written atomically: an interrupted bench
continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from layerprune import distributed
from layerprune.criteria.base import CriterionResult
from layerprune.criteria.catalog import criterion_parameters, get_criterion
from layerprune.errors import LayerpruneError
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.runner import Runner
from layerprune.recipe.schema import Recipe
from layerprune.surgery import find_blocks, measure_latency, model_cost
from layerprune.train import train

Log = Callable[[str], None]
WIDTH = "width (Torch-Pruning L1 channels)"


def budget_name(budget: dict[str, float]) -> str:
    key, value = next(iter(budget.items()))
    return f"k{int(value)}" if key == "k" else f"{key}{value:g}"


def budget_rule(budget: dict[str, float]) -> dict[str, Any]:
    key, value = next(iter(budget.items()))
    return {"rule": "count", "k": int(value)} if key == "k" else {"rule": "budget", key: value}


class _ForwardCounter:
    """Counts samples pushed through the model or any copy of it (``ablation`` and ``sr_init``
    evaluate changed copies): a global hook that counts calls of the model's own class."""

    def __init__(self, model: nn.Module) -> None:
        self.samples = 0
        self.cls = type(model)
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if type(module) is self.cls and args and isinstance(args[0], torch.Tensor):
            self.samples += len(args[0])

    def close(self) -> None:
        self.handle.remove()


@dataclass
class BenchResult:
    run_dir: RunDir
    trials: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    costs: list[dict[str, Any]]


class Bench:
    def __init__(self, recipe: Recipe, run: RunDir, runner: Runner, *, progress: bool, log: Log) -> None:
        if recipe.bench is None:
            raise LayerpruneError("bench: the recipe has no bench section")
        self.recipe, self.run, self.runner, self.progress, self.log = recipe, run, runner, progress, log
        self.cfg = recipe.bench
        (run.path / "scores").mkdir(exist_ok=True)
        (run.path / "trials").mkdir(exist_ok=True)

    # -- scores -------------------------------------------------------------------------------
    def scores(self, criterion: str, seed: int) -> dict[str, Any]:
        name = f"scores/{criterion}_s{seed}.json"
        if self.run.file(name).is_file():
            return self.run.read_json(name)
        base = self.runner.base_model()
        # Criteria with a seed of their own (random draws, re-initialisation) take the trial's.
        params = {"seed": seed} if "seed" in criterion_parameters(criterion) else {}
        pruner = self.runner.pruner(criterion=criterion, criterion_params=params, seed=seed)
        counter = _ForwardCounter(base)
        start = time.perf_counter()
        try:
            scored = pruner.score(base, self.runner.build_data())
        finally:
            counter.close()
        seconds = time.perf_counter() - start
        drawn = scored.calibration["samples"] * scored.calibration["batches"]
        record = {"criterion": criterion, "seed": seed, "scores": scored.scores, "seconds": seconds,
                  "forward_passes": counter.samples / drawn, "calibration": scored.calibration,
                  "diagnostics": scored.result.to_dict()["diagnostics"]}
        self.run.write_json(name, record)
        return record

    # -- trials -------------------------------------------------------------------------------
    def _finish(self, model: nn.Module, seed: int, record: dict[str, Any]) -> dict[str, Any]:
        """Finetune, evaluate and measure ``model`` (a pruned, repaired copy)."""
        runner, x = self.runner, self.runner.example_input()
        epochs = self.cfg.finetune_epochs if self.cfg.finetune_epochs is not None else self.recipe.finetune.epochs
        settings = runner.settings(self.recipe.finetune, epochs=epochs)
        train(model, runner.train_loader(), settings, seed=seed, progress=self.progress)
        after = runner.evaluate(model)
        base_cost, cost = self.base_cost, model_cost(model, x)
        record.update(after_finetune=after.accuracy, loss=after.loss, params=cost.params, macs=cost.macs,
                      params_reduction=1 - cost.params / base_cost.params,
                      macs_reduction=1 - cost.macs / base_cost.macs,
                      latency_ms=measure_latency(model, tuple(x.shape[1:]), repeats=10).median_ms)
        return record

    def depth_trial(self, criterion: str, budget: dict[str, float], seed: int) -> dict[str, Any]:
        stored = self.scores(criterion, seed)
        pruner = self.runner.pruner(criterion=criterion, rule=budget_rule(budget), seed=seed)
        removed = pruner.plan(CriterionResult(criterion, stored["scores"], diagnostics=stored["diagnostics"]),
                              self.blocks)
        pruned, step = pruner.remove(self.runner.base_model(), removed, self.runner.build_data(), blocks=self.blocks,
                                     example_input=self.runner.example_input(), evaluate_with=self.runner.evaluate)
        return self._finish(pruned, seed, {"criterion": criterion, "budget": budget_name(budget), "seed": seed,
                                           "removed": removed, "after_surgery": step.after_surgery.accuracy,
                                           "before_finetune": (step.after_repair or step.after_surgery).accuracy})

    def width_trial(self, budget: dict[str, float], seed: int) -> dict[str, Any]:
        from layerprune.bench.width import prune_width

        key, value = next(iter(budget.items()))
        pruned, ratio = prune_width(self.runner.base_model(), self.runner.example_input(), **{key: value})
        after_surgery = self.runner.evaluate(pruned).accuracy
        self.runner.pruner().repair_model(pruned, self.runner.build_data())  # the depth trials' repair
        return self._finish(pruned, seed, {"criterion": WIDTH, "budget": budget_name(budget), "seed": seed,
                                           "removed": [], "channel_ratio": ratio, "after_surgery": after_surgery,
                                           "before_finetune": self.runner.evaluate(pruned).accuracy})

    def plan(self) -> list[tuple[str, dict[str, float], int]]:
        trials = [(c, b, s) for s in self.cfg.seeds for b in self.cfg.budgets for c in self.cfg.criteria]
        if self.cfg.width:
            trials += [(WIDTH, b, s) for s in self.cfg.seeds for b in self.cfg.budgets if "k" not in b]
        return trials

    def __call__(self) -> BenchResult:
        runner = self.runner
        if not self.run.is_done("pretrain"):
            self.log("[bold]▶ pretrain[/]")
            runner.stage_pretrain()
            self.run.mark_done("pretrain")
        base = runner.base_model()
        x = runner.example_input()
        self.blocks = find_blocks(base, x)
        self.base_cost = model_cost(base, x)
        if not self.run.file("base.json").is_file():
            ev = runner.evaluate(base)
            self.run.write_json("base.json", {"accuracy": ev.accuracy, "loss": ev.loss,
                                              **self.base_cost.to_dict(),
                                              "latency_ms": measure_latency(base, tuple(x.shape[1:]), repeats=10).median_ms})
        self.log(f"base model: accuracy {self.run.read_json('base.json')['accuracy']:.4f} on {self.recipe.eval.split}")
        trials = []
        plan = self.plan()
        for i, (criterion, budget, seed) in enumerate(plan, 1):
            name = f"trials/{criterion.split(' ')[0]}__{budget_name(budget)}__s{seed}.json"
            if self.run.file(name).is_file():
                trials.append(self.run.read_json(name))
                continue
            record = (self.width_trial(budget, seed) if criterion == WIDTH
                      else self.depth_trial(criterion, budget, seed))
            self.run.write_json(name, record)
            trials.append(record)
            self.log(f"[{i}/{len(plan)}] {criterion} {budget_name(budget)} seed {seed}: "
                     f"before finetune {record['before_finetune']:.4f}, after {record['after_finetune']:.4f}, "
                     f"MACs −{100 * record['macs_reduction']:.1f}%")
        from layerprune.bench.report import correlations, costs, write_outputs

        corr = correlations(self.cfg, self.scores)
        cost = costs(self.cfg, self.scores)
        write_outputs(self.run, self.recipe, self.scores, trials, corr, cost)
        return BenchResult(self.run, trials, corr, cost)


def run_bench(recipe: Recipe, *, out: str | None = None, fresh: bool = False, progress: bool = False,
              log: Log = print) -> BenchResult:
    """Run (or resume) the bench of ``recipe`` in ``out`` (default ``runs/NAME``)."""
    if recipe.bench is None:
        raise LayerpruneError("bench: the recipe has no bench section (see docs/results.md)")
    if distributed.launched_world_size() > 1:
        raise LayerpruneError("bench: runs as a single process (start it without torchrun); "
                              "torchrun is for 'layerprune run'")
    for name in recipe.bench.criteria + [recipe.bench.oracle]:
        get_criterion(name)  # unknown names fail before any training
    runner = Runner(recipe, progress=progress, log=log)
    runner.preflight()
    run = RunDir.open(recipe, out, fresh=fresh)
    runner.run = run
    log(f"bench directory: {run.path}")
    return Bench(recipe, run, runner, progress=progress, log=log)()


__all__ = ["Bench", "BenchResult", "WIDTH", "budget_name", "run_bench"]

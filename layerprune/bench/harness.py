"""``layerprune bench``: every criterion × budget × seed in every setting of a suite, measured the
same way.

In each setting, for each seed, each criterion scores the base model's blocks once (timed,
forward passes counted) through the setting's :class:`~layerprune.Pruner`, with that seed's
calibration and repair draws: every criterion of a seed sees the same samples. For each trial
(criterion × budget × seed): the pruner plans → removes → repairs, then the task's metric before
finetune → finetune (the same epochs for everyone, in the seed's order) → the metric after. The
metric is the task's (:mod:`layerprune.tasks`): top-1 accuracy for a classifier, perplexity (lower
is better) for a language model; ``base.json`` names it. A width-pruning row (Torch-Pruning
channel pruning at the same MACs) goes through the same repair and finetune.

Work is split into *units* (one setting, criterion and seed: its score and every budget's
trial). Under ``torchrun`` each rank runs every ``world_size``-th missing unit as if alone, on
its own device, and rank 0 merges; every unit depends on nothing but its own seed, so the
trials equal a single process's. Every score set and trial is its own JSON file, written
atomically: a killed bench, rerun, computes only what is missing. Base models come from the
:mod:`~layerprune.recipe.cache` (trained once per key).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from layerprune import distributed
from layerprune.recipe.cache import BaseCache, cache_root
from layerprune.bench.suite import Suite
from layerprune.criteria.base import CriterionResult
from layerprune.criteria.catalog import criterion_parameters
from layerprune.errors import LayerpruneError
from layerprune.io import make_dir, remove_partial, write_json, write_text
from layerprune.lock import DirectoryLock
from layerprune.recipe.load import RecipeError
from layerprune.recipe.preflight import unreachable
from layerprune.recipe.rundir import RunDir, claimed, is_empty, unused_beside
from layerprune.recipe.runner import Runner
from layerprune.recipe.schema import Recipe
from layerprune.surgery import compare_latency, find_blocks, measure_latency, model_cost, remove_blocks
from layerprune.train import train

Log = Callable[[str], None]
from layerprune.bench.width import (  # noqa: E402 - WIDTH re-exported
    DEPTH_SHARE, DEPTH_WIDTH, NO_BUDGET, UNPRUNED, WIDTH, depth_width_name,
)
SUITE_FILE = "suite.yaml"
# The bench's lists may grow between runs in one directory: each trial is a file of its own.
GROWABLE = ("bench.criteria", "bench.budgets", "bench.seeds", "bench.width", "bench.depth_width", "bench.finetune_base")


def budget_name(budget: dict[str, float]) -> str:
    if not budget:
        return "none"
    key, value = next(iter(budget.items()))
    return f"k{int(value)}" if key == "k" else f"{key}{value:g}"


def budget_rule(budget: dict[str, float]) -> dict[str, Any]:
    key, value = next(iter(budget.items()))
    return {"rule": "count", "k": int(value)} if key == "k" else {"rule": "budget", key: value}


class _ForwardCounter:
    """Counts samples pushed through the model or any copy of it (``ablation`` and ``sr_init``
    evaluate changed copies): a global hook that counts calls of the model's own class. A call
    whose first layers are replayed from a recording (the oracles' prefix replay) counts whole,
    though it computes only the rest: for those oracles the figure is an upper bound of the work."""

    def __init__(self, model: nn.Module) -> None:
        self.samples = 0
        self.cls = type(model)
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if type(module) is self.cls and args and isinstance(args[0], torch.Tensor):
            self.samples += len(args[0])

    def close(self) -> None:
        self.handle.remove()


class SettingBench:
    """One setting of a suite: its base model, scores and trials, in ``run`` (``settings/NAME``)."""

    def __init__(self, recipe: Recipe, run: RunDir, cache: BaseCache, *, progress: bool, log: Log) -> None:
        if recipe.bench is None:
            raise LayerpruneError(f"{recipe.source}: bench: the recipe has no bench section")
        self.recipe, self.run, self.cache, self.log = recipe, run, cache, log
        self.name, self.cfg = recipe.name, recipe.bench
        self.runner = Runner(recipe, run, progress=progress, log=log)
        if recipe.pretrain is not None:
            self.runner.base_checkpoint = str(cache.weights(recipe))
        self._blocks: list | None = None

    # -- checks and base model ------------------------------------------------------------------
    def preflight(self) -> None:
        """The recipe's own checks, then the bench's: reachable budgets, calibration draws that
        the seeds can vary."""
        blocks = self.runner.preflight()
        r, runner = self.recipe, self.runner
        problems = []
        for i, budget in enumerate(self.cfg.budgets):
            key, value = next(iter(budget.items()))
            # the count rule (k) itself stops where a stage would lose its last block
            if key != "k" and (problem := unreachable(blocks, key, value, r.select, r.model.label)):
                problems.append(f"bench.budgets.{i}: {key} {value:g} {problem}")
        cal = r.data.calibration
        pool = len(runner.build_data().split(cal.split))
        if len(self.cfg.seeds) > 1 and cal.samples * cal.batches >= pool:
            problems.append(f"data.calibration.samples: {cal.batches} × {cal.samples} samples cover the whole "
                            f"{cal.split} split ({pool}), so every seed would score the same ones; draw fewer, or "
                            "use a larger split (data.options.val_fraction, data.calibration.split)")
        if problems:
            raise RecipeError(r.source, problems)

    def prepare(self) -> None:
        """The base model (trained into the cache when missing) and its measurements."""
        r, runner = self.recipe, self.runner
        if runner.base_checkpoint is not None and not self.cache.has(r):
            self.log(f"[bold]▶ {self.name}: pretrain[/] (base model cached in {self.cache.entry(r)})")
            # Two processes (benches sharing a cache, or ranks whose settings share a base) never
            # train the same base at once: the second waits, then finds it in the cache. A killed
            # pretraining resumes from the partial folder.
            with DirectoryLock.wait_for(self.cache.lock_dir(r), log=lambda m: self.log(f"{self.name}: {m}"),
                                        doing="training this base model"):
                if not self.cache.has(r):
                    partial = self.cache.partial(r)
                    remove_partial(partial)
                    runner.run = RunDir(partial, r)
                    try:
                        runner.stage_pretrain()
                    finally:
                        runner.run = self.run
                    self.cache.commit(r)
            write_json(self.run.file("pretrain.json"),
                       {"cache": str(self.cache.entry(r)), **RunDir(self.cache.entry(r), r).read_json("pretrain.json")})
        if not self.run.file("base.json").is_file():
            base, x = runner.base_model(), runner.example_input()
            ev, task = runner.evaluate(base), runner.task
            self.run.write_json("base.json", {"metric": task.metric_name, "lower_is_better": task.lower_is_better,
                                              "value": task.value(ev), "accuracy": ev.accuracy, "loss": ev.loss,
                                              **model_cost(base, x).to_dict(),
                                              "latency_ms": self._base_latency(base),
                                              "blocks": len(self.blocks), "cache": runner.base_checkpoint})

    @property
    def blocks(self) -> list:
        if self._blocks is None:
            self._blocks = find_blocks(self.runner.base_model(), self.runner.example_input(),
                                       level=self.recipe.select.level)
        return self._blocks

    def _base_latency(self, base: nn.Module) -> float | None:
        if not self.recipe.eval.latency:
            return None
        return measure_latency(base, tuple(self.runner.example_input().shape[1:]), repeats=10).median_ms

    def _latency(self, model: nn.Module) -> dict[str, float | None]:
        """A pruned model's speed-up over the base, timed side by side (passes interleaved), and
        its latency on the scale of the base's in base.json: trials timed minutes apart on a
        shared machine stay comparable."""
        if not self.recipe.eval.latency:
            return {"latency_ms": None, "speedup": None}
        base, pruned = compare_latency([self.runner.base_model(), model], tuple(self.runner.example_input().shape[1:]),
                                       repeats=10)
        speedup = base.median_ms / pruned.median_ms
        return {"latency_ms": self.run.read_json("base.json")["latency_ms"] / speedup, "speedup": speedup}

    # -- units and trials ---------------------------------------------------------------------
    def plan(self) -> list[tuple[str, dict[str, float], int]]:
        """Every trial (criterion, budget, seed), seed-major."""
        trials = [(c, b, s) for s in self.cfg.seeds for b in self.cfg.budgets for c in self.cfg.criteria]
        if self.cfg.width:
            cost = [b for b in self.cfg.budgets if not {"k", "layers"} & set(b)]  # channels cut to a cost share
            trials += [(WIDTH, b, s) for s in self.cfg.seeds for b in cost]
            if self.cfg.depth_width:
                name = depth_width_name(self.cfg.depth_width)
                trials += [(name, b, s) for s in self.cfg.seeds for b in cost]
        if self.cfg.finetune_base:
            trials += [(UNPRUNED, NO_BUDGET, s) for s in self.cfg.seeds]
        return trials

    @staticmethod
    def trial_file(criterion: str, budget: dict[str, float], seed: int) -> str:
        return f"trials/{criterion.split(' ')[0]}__{budget_name(budget)}__s{seed}.json"

    def missing_units(self) -> list[tuple[str, int]]:
        """(criterion, seed) pairs with at least one trial still to run, in plan order."""
        units = [(c, s) for c, b, s in self.plan() if not self.run.file(self.trial_file(c, b, s)).is_file()]
        return list(dict.fromkeys(units))

    def run_unit(self, criterion: str, seed: int) -> None:
        """Every missing trial of ``criterion`` at ``seed`` (its scores computed once)."""
        for c, budget, s in self.plan():
            name = self.trial_file(c, budget, s)
            if (c, s) != (criterion, seed) or self.run.file(name).is_file():
                continue
            start = time.perf_counter()
            if criterion == WIDTH:
                record = self.width_trial(budget, seed)
            elif criterion == UNPRUNED:
                record = self.unpruned_trial(seed)
            elif criterion.startswith(DEPTH_WIDTH):
                record = self.depth_width_trial(budget, seed)
            else:
                record = self.depth_trial(criterion, budget, seed)
            record["seconds"] = time.perf_counter() - start
            self.run.write_json(name, record)
            self.log(f"{self.name}: {criterion} {budget_name(budget)} seed {seed}: before finetune "
                     f"{record['before_finetune']:.4f}, after {record['after_finetune']:.4f}, "
                     f"MACs −{100 * record['macs_reduction']:.1f}% ({record['seconds']:.0f} s)")

    def trials(self) -> list[dict[str, Any]]:
        """Every trial of the plan, read back (all must exist)."""
        return [{"setting": self.name, **self.run.read_json(self.trial_file(c, b, s))} for c, b, s in self.plan()]

    def scores(self, criterion: str, seed: int, n: int | None = None) -> dict[str, Any]:
        """``criterion``'s scores at ``seed`` (computed once, stored); ``n``: scored for runs of ``n``
        blocks (a run criterion's, see :meth:`run_length`), stored apart."""
        name = f"scores/{criterion}_s{seed}.json" if n is None else f"scores/{criterion}_n{n}_s{seed}.json"
        if self.run.file(name).is_file():
            return self.run.read_json(name)
        base = self.runner.base_model()
        # Criteria with a seed of their own (random draws, re-initialisation) take the trial's.
        params = {"seed": seed} if "seed" in criterion_parameters(criterion) else {}
        if n is not None:
            params["n"] = n
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

    def measure(self, model: nn.Module) -> float:
        """The task's metric of ``model`` on the eval split (accuracy, or a language model's perplexity)."""
        return self.runner.task.value(self.runner.evaluate(model))

    def _finish(self, model: nn.Module, seed: int, record: dict[str, Any]) -> dict[str, Any]:
        """Finetune, evaluate and measure ``model`` (a pruned, repaired copy)."""
        runner, x = self.runner, self.runner.example_input()
        epochs = self.cfg.finetune_epochs if self.cfg.finetune_epochs is not None else self.recipe.finetune.epochs
        settings = runner.settings(self.recipe.finetune, epochs=epochs)
        train(model, runner.train_loader(), settings, seed=seed, progress=runner.progress, task=runner.task)
        after = runner.evaluate(model)
        base, cost = self.run.read_json("base.json"), model_cost(model, x)
        record.update(after_finetune=runner.task.value(after), loss=after.loss, params=cost.params, macs=cost.macs,
                      params_reduction=1 - cost.params / base["params"], macs_reduction=1 - cost.macs / base["macs"],
                      **self._latency(model))
        return record

    def run_length(self, criterion: str, budget: dict[str, float]) -> int | None:
        """For a criterion whose own rule removes one run of consecutive blocks (``angular``, as
        Gromov et al. remove layers), the length of run a count budget asks for: ``k``, or the
        share ``layers`` of the blocks in stages (as many as the budget rule removes). ``None``
        for other criteria and for cost budgets (params, MACs, latency), which the budget rule meets."""
        from layerprune.criteria import get_criterion

        key, value = next(iter(budget.items()))
        if key not in ("k", "layers"):
            return None
        try:
            rule = get_criterion(criterion).default_rule
        except LayerpruneError:  # a plugin criterion with required parameters: no run rule of its own
            return None
        if rule.get("rule") != "run":
            return None
        return int(value) if key == "k" else math.ceil(value * sum(1 for b in self.blocks if b.stage) - 1e-9)

    def depth_trial(self, criterion: str, budget: dict[str, float], seed: int) -> dict[str, Any]:
        runner, n = self.runner, self.run_length(criterion, budget)
        stored = self.scores(criterion, seed, n)
        rule = budget_rule(budget) if n is None else {"rule": "run", "n": n}
        pruner = runner.pruner(criterion=criterion, rule=rule, seed=seed)
        removed = pruner.plan(CriterionResult(criterion, stored["scores"], diagnostics=stored["diagnostics"]),
                              self.blocks)
        pruned, step = pruner.remove(runner.base_model(), removed, runner.build_data(), blocks=self.blocks,
                                     example_input=runner.example_input(), evaluate_with=runner.evaluate)
        return self._finish(pruned, seed, {"criterion": criterion, "budget": budget_name(budget), "seed": seed,
                                           "removed": removed, "after_surgery": runner.task.value(step.after_surgery),
                                           "before_finetune": runner.task.value(step.after_repair or step.after_surgery)})

    def depth_width_trial(self, budget: dict[str, float], seed: int) -> dict[str, Any]:
        """Blocks chosen by ``bench.depth_width`` until they carry half the budget, then channels
        cut (L1) until the whole budget is met, measured against the unpruned model."""
        runner, criterion = self.runner, self.cfg.depth_width
        key, value = next(iter(budget.items()))
        stored = self.scores(criterion, seed)
        pruner = runner.pruner(criterion=criterion, rule=budget_rule({key: DEPTH_SHARE * value}), seed=seed)
        removed = pruner.plan(CriterionResult(criterion, stored["scores"], diagnostics=stored["diagnostics"]),
                              self.blocks)
        # Pruner.remove without its two evaluations: nobody reads the accuracy between the two cuts.
        deeper = remove_blocks(runner.base_model(), removed, runner.example_input(), collapse=pruner.collapse,
                               blocks=self.blocks)
        pruner.repair_model(deeper, runner.build_data())
        return self._channels(deeper, pruner, seed, {"criterion": depth_width_name(criterion), "budget":
                                                     budget_name(budget), "seed": seed, "removed": removed}, budget)

    def unpruned_trial(self, seed: int) -> dict[str, Any]:
        """The base model, nothing removed, finetuned as every trial is: what the same extra
        training alone gives."""
        model = copy.deepcopy(self.runner.base_model())
        base = self.run.read_json("base.json")
        before = base.get("value", base["accuracy"])
        return self._finish(model, seed, {"criterion": UNPRUNED, "budget": budget_name(NO_BUDGET), "seed": seed,
                                          "removed": [], "after_surgery": before, "before_finetune": before})

    def width_trial(self, budget: dict[str, float], seed: int) -> dict[str, Any]:
        return self._channels(self.runner.base_model(), self.runner.pruner(seed=seed), seed,
                              {"criterion": WIDTH, "budget": budget_name(budget), "seed": seed, "removed": []}, budget)

    def _channels(self, model: nn.Module, pruner, seed: int, record: dict[str, Any],
                  budget: dict[str, float]) -> dict[str, Any]:
        """Channels cut from ``model`` until the budget is met against the base model, BatchNorm
        repaired (the depth trials' repair), then finetuned and measured."""
        from layerprune.surgery.width import prune_width

        runner = self.runner
        pruned, ratio = prune_width(model, runner.example_input(), reference=runner.base_model(), **budget)
        after_surgery = self.measure(pruned)
        pruner.repair_model(pruned, runner.build_data())
        return self._finish(pruned, seed, {**record, "channel_ratio": ratio, "after_surgery": after_surgery,
                                           "before_finetune": self.measure(pruned)})


@dataclass
class BenchResult:
    """What a bench measured: every trial, and the statistics the reports are written from."""

    path: Path
    suite: Suite
    trials: list[dict[str, Any]]
    report: dict[str, Any]


def _open_suite_dir(suite: Suite, out: str | None, fresh: bool) -> tuple[Path, DirectoryLock]:
    """The bench directory, locked for this process, with what a killed bench half-wrote removed."""
    import yaml

    path = Path(out or suite.output_dir or f"runs/{suite.name}")
    if fresh:
        path = unused_beside(path)
    with claimed(path) as lock:
        if not is_empty(path) and not (path / SUITE_FILE).is_file():
            raise LayerpruneError(f"{path} exists and is not a layerprune bench directory; choose another --out")
        write_text(path / SUITE_FILE, yaml.safe_dump({"name": suite.name, "cache_dir": suite.cache_dir,
                                                      "settings": [r.model_dump(mode="json") for r in suite.recipes]},
                                                     sort_keys=False))
    return path, lock


def _preflight(suite: Suite, benches: list[SettingBench]) -> None:
    """Every setting's preflight; all their problems in one error, each naming its setting."""
    problems = []
    for b in benches:
        prefix = "" if suite.single else f"settings.{b.name}."
        try:
            b.preflight()
        except RecipeError as exc:
            problems += [prefix + p for p in exc.problems]
        except LayerpruneError as exc:
            problems.append(f"{prefix.rstrip('.') or b.name}: {exc}")
    if problems:
        raise RecipeError(suite.source, problems)


def _share(items: list, what: Callable[[Any], None]) -> None:
    """This rank's share of ``items`` (every ``world_size``-th from its rank), each run as if alone;
    a failure on any rank stops every rank once all have finished their share."""
    mine = items[distributed.rank()::distributed.world_size()]

    def work() -> None:
        with distributed.alone():
            for item in mine:
                what(item)

    distributed.check_everywhere(work)


def run_suite(suite: Suite, *, out: str | None = None, fresh: bool = False, progress: bool = False,
              log: Log = print) -> BenchResult | None:
    """Run (or resume) every setting of ``suite`` in ``out`` (default ``runs/NAME``); under
    torchrun the trials are shared among the ranks and rank 0 merges (the others return ``None``)."""
    joined = distributed.init_from_env()
    locks: list[DirectoryLock] = []  # rank 0's lock on the bench directory
    try:
        rank, world = distributed.rank(), distributed.world_size()
        say = log if rank == 0 else (lambda msg: log(f"[dim]rank {rank}:[/] {msg}"))
        cache = BaseCache(cache_root(suite.cache_dir))
        benches = [SettingBench(r, RunDir(Path("."), r), cache, progress=progress and rank == 0, log=say)
                   for r in suite.recipes]
        distributed.check_everywhere(lambda: _preflight(suite, benches))  # before anything is written

        def open_dirs() -> Path:
            path, held = _open_suite_dir(suite, out, fresh)
            locks.append(held)  # released when the bench ends, however it ends
            for b in benches:
                run = RunDir.open(b.recipe, str(path / "settings" / b.name), ignore=GROWABLE, lock=False)
                for sub in ("scores", "trials"):
                    make_dir(run.file(sub))
            return path

        path = distributed.on_main(open_dirs)
        for b in benches:
            b.run = b.runner.run = RunDir(path / "settings" / b.name, b.recipe)
        say(f"bench directory: {path} ({len(benches)} setting{'s' * (len(benches) > 1)}"
            f"{f', {world} ranks' if world > 1 else ''}); base models in {cache.root}")
        _share(benches, lambda b: b.prepare())
        units = distributed.on_main(lambda: [(i, c, s) for i, b in enumerate(benches) for c, s in b.missing_units()])
        if units:
            say(f"{len(units)} units of work to run (setting × criterion × seed)")
        _share(units, lambda u: benches[u[0]].run_unit(u[1], u[2]))

        def merge() -> BenchResult:
            from layerprune.bench.report import write_suite_outputs

            trials = [t for b in benches for t in b.trials()]
            return BenchResult(path, suite, trials, write_suite_outputs(path, suite, benches, trials))

        result = distributed.on_main(merge)
        return result if rank == 0 else None
    finally:
        for held in locks:
            held.release()
        if joined:
            distributed.shutdown()


def run_bench(recipe: Recipe | Suite, **kwargs: Any) -> BenchResult | None:
    """:func:`run_suite` for a suite, or for a plain bench recipe (a one-setting suite)."""
    if isinstance(recipe, Recipe):
        if recipe.bench is None:
            raise LayerpruneError("bench: the recipe has no bench section (see docs/results.md)")
        recipe = Suite.of_recipe(recipe)
    return run_suite(recipe, **kwargs)


__all__ = ["BenchResult", "SettingBench", "WIDTH", "budget_name", "run_bench", "run_suite"]

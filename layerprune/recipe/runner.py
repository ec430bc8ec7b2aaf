"""Run a recipe: pretrain → score → select → prune (+ BatchNorm repair) → finetune → eval → export.

Each stage writes its outputs atomically into the run directory and is then marked done; running
the same recipe again skips finished stages (finetuning resumes from its last epoch checkpoint).
A preflight (:mod:`layerprune.recipe.preflight`) builds the data and the model and checks the plan
can be met before any training. Scoring, selection, surgery and repair are :class:`~layerprune.Pruner`'s;
the stages only decide what is written where.

Under ``torchrun`` every rank pretrains and finetunes (DDP, each on its share of the data); score,
select, prune, eval and export run once, on rank 0, while the others wait; only rank 0 writes.

>>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from layerprune import distributed
from layerprune.criteria.plots import plot_result
from layerprune.criteria.base import CriterionResult
from layerprune.criteria.selection import budget_share, removed_share
from layerprune.errors import LayerpruneError
from layerprune.hooks import model_device
from layerprune.pruner import PruneStep
from layerprune.pruner.pipeline import BUDGET_REPEATS
from layerprune.recipe.cache import BaseCache, cache_root
from layerprune.recipe.preflight import preflight
from layerprune.recipe.resources import Log, Resources
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.schema import Recipe
from layerprune.surgery import Block, PruneSpec, compare_latency, load_pruned, model_cost, save_pruned

STAGES = ("pretrain", "score", "select", "prune", "finetune", "eval", "export")
EVERY_RANK = ("pretrain", "finetune")  # the stages that train, on every rank under torchrun


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict[str, Any] = field(default_factory=dict)


class Runner(Resources):
    """The stages of a recipe, over its :class:`Resources`."""

    def preflight(self) -> list[Block]:
        return preflight(self)

    # -- stages -------------------------------------------------------------------------------
    def stage_pretrain(self) -> None:
        if self.recipe.pretrain is None:
            return
        if self.base_cache is not None and (cached := distributed.on_main(self._cached_base)) is not None:
            distributed.on_main(lambda: self._take_cached_base(cached))
            return
        # With a checkpoint, training starts from it: the checkpoint adapted to this data.
        model = self.new_model(self.recipe.model.checkpoint)
        history = self.fit(model, self.settings(self.recipe.pretrain), "pretrain")
        ranks = distributed.world_size()

        def save() -> None:
            from layerprune.io import save_torch

            save_torch(model.state_dict(), self.run.file("pretrained.pth"))
            self.run.write_json("pretrain.json", {"history": history, "world_size": ranks,
                                                  "eval": self.evaluate(model).to_dict()})

        distributed.on_main(save)

    def _cached_base(self) -> str | None:
        """The base model ``layerprune bench`` trained for this recipe's key (model, checkpoint, data,
        pretraining, seed: :func:`~layerprune.recipe.cache.base_key`), when :attr:`base_cache` holds one."""
        cache = self.base_cache
        return str(cache.weights(self.recipe)) if cache.has(self.recipe) else None

    def _take_cached_base(self, weights: str) -> None:
        """Copy a cached base into the run directory (which then resumes without the cache) with
        the record of its pretraining."""
        import json
        import shutil
        from pathlib import Path

        from layerprune.io import atomic_path

        with atomic_path(self.run.file("pretrained.pth")) as tmp:
            shutil.copyfile(weights, tmp)
        record = Path(weights).with_name("pretrain.json")
        earlier = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        self.run.write_json("pretrain.json", {**earlier, "cache": weights})
        self.log(f"pretrain: skipped, the base model layerprune bench trained for this key (model, data, pretraining, "
                 f"seed) is reused from its cache: {weights}")

    def _write_scores(self, result: CriterionResult, prefix: str = "", removed: list[str] = ()) -> None:
        rc = self.recipe
        self.run.write_json(f"{prefix}scores.json", {"calibration": rc.data.calibration.model_dump(), **result.to_dict()})
        if "curve" in result.diagnostics:
            plot_result(result, self.run.file(f"{prefix}modularity_curve.png"), rule=self.pruner().rule,
                        removed=removed, title=f"{rc.model.label} on {rc.data.dataset}")

    def stage_score(self) -> None:
        self._write_scores(self.pruner().score(self.base_model(), self.build_data()).result)

    def stage_select(self) -> None:
        stored = self.run.read_json("scores.json")
        pruner = self.pruner()
        blocks = pruner.blocks(self.base_model(), self.example_input())  # timed, under a latency budget
        result = CriterionResult(stored["criterion"], stored["scores"], stored["params"], stored["diagnostics"])
        removed = pruner.plan(result, blocks)
        params_share, macs_share = removed_share(blocks, removed)
        plan = {"rule": pruner.rule, "protect": self.recipe.select.protect, "collapse": self.recipe.select.collapse,
                "removed": removed, "params_reduction_estimate": params_share, "macs_reduction_estimate": macs_share}
        if pruner.needs_latency:
            plan["latency_reduction_estimate"] = budget_share(blocks, removed, "latency")
            plan["latency_measured_at"] = pruner.latency_settings(self.base_model())
        self.run.write_json("plan.json", plan)
        if self.run.file("modularity_curve.png").exists():  # redraw with the chosen blocks marked
            plot_result(result, self.run.file("modularity_curve.png"), rule=pruner.rule, removed=removed,
                        title=f"{self.recipe.model.label} on {self.recipe.data.dataset}")

    def stage_prune(self) -> None:
        rc = self.recipe
        base, data, pruner = self.base_model(), self.build_data(), self.pruner()
        if rc.prune.steps == 1:
            removed = self.run.read_json("plan.json")["removed"]
            pruned, record = pruner.remove(base.eval(), removed, data, example_input=self.example_input(),
                                           evaluate_with=self.evaluate)
            steps = [record]
        else:
            def after_step(record: PruneStep, model: nn.Module) -> None:
                self._write_scores(record.result, prefix=f"step{record.step}_", removed=record.removed)
                if not record.last and rc.prune.epochs_between:
                    settings = self.settings(rc.finetune, epochs=rc.prune.epochs_between)
                    record.extra["finetune"] = self.fit(model, settings, f"step{record.step}_finetune")

            result = pruner.prune(base.eval(), data, evaluate_with=self.evaluate, after_step=after_step)
            pruned, steps = result.model, result.steps
        record: dict[str, Any] = {"steps": [s.to_dict() for s in steps]}
        if rc.prune.width is not None:
            pruned, record["width"] = self._prune_width(base, pruned, pruner)
        if rc.model.is_hf:
            from layerprune.surgery.hf import layer_list

            removed = [name for s in steps for name in s.removed]
            record.update(removed=removed, collapsed=[], layers_before=len(layer_list(base)[1]))
            self.save_model(pruned, "pruned", removed)
        else:
            spec = PruneSpec.for_model(pruned, rc.model.name, self.model_kwargs(), list(self.example_input().shape[1:]))
            save_pruned(pruned, spec, self.run.file("pruned"))
            record.update(removed=spec.removed, collapsed=spec.collapsed)
        self.run.write_json("prune.json", record)

    def save_model(self, model: nn.Module, name: str, removed: list[str], card: dict[str, Any] | None = None) -> None:
        """``model`` into the run directory's folder ``name``: a transformers model as its own
        ``save_pretrained`` folder with the data's tokenizer (loads without layerprune), a timm
        model with the spec its folder ``pruned`` holds."""
        if self.recipe.model.is_hf:
            from layerprune.surgery import hf

            before = self.run.read_json("prune.json")["layers_before"] if self.run.file("prune.json").exists() else None
            with self._library_quiet():
                hf.save_pruned(model, self.run.file(name), base_model=self.recipe.model.hf, removed=removed,
                               tokenizer=getattr(self.build_data(), "tokenizer", None), original_layers=before,
                               info=card)
        else:
            save_pruned(model, PruneSpec.load(self.run.file("pruned")), self.run.file(name), card=card)

    def removed(self) -> list[str]:
        """The blocks the run removed (as ``prune.json`` records them)."""
        return self.run.read_json("prune.json")["removed"]

    def _prune_width(self, base: nn.Module, pruned: nn.Module, pruner) -> tuple[nn.Module, dict[str, Any]]:
        """Channels cut inside the remaining blocks' branches (targets relative to ``base``), then
        BatchNorm repaired again."""
        from layerprune.surgery.width import branch_channels, prune_width, width_blocks

        w, x = self.recipe.prune.width, self.example_input()
        target = {k: getattr(w, k) for k in ("macs", "params", "ratio") if getattr(w, k) is not None}
        blocks = width_blocks(pruned, x)
        before = branch_channels(pruned, blocks)
        narrower, ratio = prune_width(pruned, x, importance=w.importance, reference=base, **target)
        after = branch_channels(narrower, blocks)
        info: dict[str, Any] = {**target, "importance": w.importance, "ratio": ratio, "channels": before,
                                "channels_removed": before - after, "after_width": self.evaluate(narrower).to_dict()}
        if pruner.repair.enabled:
            pruner.repair_model(narrower, self.build_data())
            info["after_repair"] = self.evaluate(narrower).to_dict()
        self.log(f"width: {before - after} of {before} channels cut inside {len(blocks)} blocks (ratio {ratio:.3f}, "
                 f"{w.importance}): accuracy {info['after_width']['accuracy']:.3f}"
                 + (f", after BatchNorm repair {info['after_repair']['accuracy']:.3f}" if "after_repair" in info else ""))
        return narrower, info

    def pruned_model(self, name: str = "pruned") -> nn.Module:
        with self._library_quiet():
            return load_pruned(self.run.file(name)).to(self.device)

    def _library_quiet(self):
        """transformers' progress bars hidden while a run saves and loads its models."""
        import contextlib

        if not self.recipe.model.is_hf:
            return contextlib.nullcontext()
        from layerprune.models.hf import no_progress_bars

        return no_progress_bars()

    def stage_finetune(self) -> None:
        rc = self.recipe
        model = self.pruned_model()  # every rank loads what rank 0 pruned, then wraps it in DDP
        teacher = self.base_model() if rc.finetune.distill.enabled else None
        if (lora := rc.finetune.lora) is not None:  # adapters trained, merged into the weights before saving
            from layerprune.surgery.hf import linear_layers
            from layerprune.train.lora import add_lora

            model = add_lora(model, lora.targets or linear_layers(model), r=lora.r, alpha=lora.alpha,
                             dropout=lora.dropout)
        history = self.fit(model, self.settings(rc.finetune, distill=rc.finetune.distill.enabled), "finetune", teacher)
        if lora is not None:
            from layerprune.train.lora import merge_lora

            model = merge_lora(model)
        ranks = distributed.world_size()

        def save() -> None:
            self.save_model(model, "finetuned", self.removed())
            self.run.write_json("finetune.json", {"history": history, "world_size": ranks})

        distributed.on_main(save)

    def stage_eval(self) -> None:
        rc = self.recipe
        base, final = self.base_model(), self.pruned_model("finetuned")
        x, prune_record = self.example_input(), self.run.read_json("prune.json")
        base_cost, final_cost = model_cost(base, x), model_cost(final, x)
        metrics: dict[str, Any] = {
            "split": rc.eval.split,
            "base": {**self.evaluate(base).to_dict(), **base_cost.to_dict()},
            "pruned": {**self.evaluate(final).to_dict(), **final_cost.to_dict()},
            "task": self.task.name,
            "removed": self.removed(),
            "prune_steps": prune_record["steps"],
        }
        if "width" in prune_record:
            metrics["width"] = prune_record["width"]
        metrics["params_reduction"] = 1 - final_cost.params / base_cost.params
        metrics["macs_reduction"] = 1 - final_cost.macs / base_cost.macs
        size, pruner = tuple(self.build_data().input_size), self.pruner()  # a text set's is (seq_len,)
        # Where the budget is measured just as eval measures (same device, batch, full precision),
        # one side-by-side timing serves both.
        timing = {"device": str(model_device(base)), "batch_size": rc.eval.latency_batch_size, "precision": "32"}
        shared = rc.eval.latency and pruner.needs_latency and pruner.latency_settings(base) == timing
        measured = None
        if rc.eval.latency:
            measured = compare_latency([base, final], size, repeats=BUDGET_REPEATS if shared else 20, **timing)
            lat_base, lat_final = measured
            metrics["base"]["latency"], metrics["pruned"]["latency"] = lat_base.to_dict(), lat_final.to_dict()
            metrics["speedup"] = lat_base.median_ms / lat_final.median_ms
        if pruner.needs_latency:  # the budget confirmed where it was measured; a miss is a warning
            budget = pruner.speedup(base, final, size, measured=measured if shared else None)
            metrics["latency_budget"], metrics["speedup"] = budget, budget["speedup"]
            if not budget["met"]:
                self.log(f"[yellow]warning:[/] select.params.latency: {budget['latency']:g} asks for a "
                         f"{budget['target_speedup']:.2f}× speed-up; the pruned model measures {budget['speedup']:.2f}× "
                         f"({budget['device']}, batch {budget['batch_size']}, {budget['precision']})")
        self.run.write_json("metrics.json", metrics)

    def stage_export(self) -> None:
        from layerprune.recipe.summary import write_report

        metrics = self.run.read_json("metrics.json")
        if self.recipe.export.enabled:
            final = self.pruned_model("finetuned")
            self.save_model(final, "model", self.removed(), card=self.card(metrics))
            ex = self.recipe.export
            if ex.formats:
                from layerprune.export import Tolerance, export_model

                samples = self.samples(64)
                export_model(self.run.file("model"), ex.formats, tolerance=Tolerance(ex.atol, ex.rtol), samples=samples,
                             origin=f"{len(samples)} samples of the run's evaluation split", log=self.log)
        write_report(self.run, metrics)

    def card(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What the model card of ``model/`` says beyond the model itself."""
        rc = self.recipe
        rule = self.run.read_json("plan.json")["rule"]
        metric = self.task.metric_name
        keep = ("params", "macs", metric)
        info: dict[str, Any] = {
            "dataset": rc.data.dataset, "criterion": rc.criterion.name, "metric": f"{metrics['split']} {metric}",
            "selection": " ".join([rule["rule"], *(f"{k} {v}" for k, v in rule.items() if k != "rule")]),
            "command": f"layerprune run {self.run.file('recipe.yaml')}",
            "base": {k: metrics["base"][k] for k in keep}, "pruned": {k: metrics["pruned"][k] for k in keep}}
        if "latency" in metrics["base"]:
            lat = metrics["base"]["latency"]
            info["base"]["latency_ms"] = lat["median_ms"]
            info["pruned"]["latency_ms"] = metrics["pruned"]["latency"]["median_ms"]
            info["latency"] = (f"median of {lat['repeats']} forward passes at batch {lat['batch_size']} on "
                               f"{lat['device']}, measured in the run")
        if rc.model.is_hf:  # the transformers card lists what the run measured, one line each
            fmt = self.task.format
            flat = {"criterion": rc.criterion.name, "selection": info["selection"], "data": rc.data.dataset,
                    info["metric"]: f"{fmt(info['base'][metric])} before pruning, {fmt(info['pruned'][metric])} after "
                                    f"{rc.finetune.epochs} finetuning epoch{'' if rc.finetune.epochs == 1 else 's'}",
                    "parameters": f"{info['base']['params']:,} before pruning",
                    "command": info["command"]}
            if "latency" in info:
                flat["latency"] = (f"{info['base']['latency_ms']:.2f} ms → {info['pruned']['latency_ms']:.2f} ms "
                                   f"({info['latency']})")
            return flat
        return info

    # -- driver -------------------------------------------------------------------------------
    def __call__(self) -> RunResult:
        assert self.run is not None, "open a run directory first"
        torch.manual_seed(self.recipe.seed)
        for stage in STAGES:
            if distributed.on_main(lambda: self.run.is_done(stage)):  # noqa: B023 - rank 0's word for all
                self.log(f"[dim]✓ {stage} (done earlier)[/]")
                continue
            self.log(f"[bold]▶ {stage}[/]")
            work = getattr(self, f"stage_{stage}")
            if stage in EVERY_RANK:
                work()
            else:
                distributed.on_main(work)  # once, on rank 0; the other ranks wait
            distributed.on_main(lambda: self.run.mark_done(stage))  # noqa: B023 - called right here
        return RunResult(self.run, distributed.on_main(lambda: self.run.read_json("metrics.json")))


def run_recipe(recipe: Recipe, *, out: str | None = None, fresh: bool = False, progress: bool = False,
               log: Log = print) -> RunResult:
    """Run (or resume) ``recipe`` in its run directory; returns the final metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group first; only rank 0 logs,
    shows progress and writes, and every rank returns the same result.
    """
    joined = distributed.init_from_env()
    runner = None
    try:
        main = distributed.is_main()
        runner = Runner(recipe, progress=progress and main, log=log if main else _quiet)
        runner.base_cache = BaseCache(cache_root())  # a base that layerprune bench trained is reused
        # Before the run directory exists: a recipe that cannot run leaves nothing. Every rank checks
        # (a data set may be missing on one node only); a failure anywhere stops all of them.
        distributed.check_everywhere(runner.preflight)
        runner.run = distributed.on_main(lambda: RunDir.open(recipe, out, fresh=fresh))
        distributed.check_everywhere(lambda: _visible(runner.run))
        runner.log(f"run directory: {runner.run.path}")
        return runner()
    finally:
        if runner is not None and runner.run is not None:
            runner.run.close()  # rank 0 holds the job's one lock; the other ranks have none to release
        if joined:
            distributed.shutdown()


def _visible(run: RunDir) -> None:
    """Ranks read what rank 0 writes (the pruned model, checkpoints): the run directory must be
    on storage that every node sees."""
    from layerprune.recipe.rundir import RECIPE_FILE

    if not (run.path / RECIPE_FILE).is_file():
        raise LayerpruneError(f"{run.path}: the run directory rank 0 created is not visible here; on several "
                              "nodes, put it on shared storage (--out /shared/path)")


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""

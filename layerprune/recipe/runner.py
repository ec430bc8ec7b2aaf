"""Run a recipe: pretrain → score → select → prune (+ BatchNorm repair) → finetune → eval → export.

Each stage writes its outputs atomically into the run directory and is then marked done; running
the same recipe again skips finished stages (finetuning resumes from its last epoch checkpoint).
A preflight builds the data and the model and checks the plan can be met before any training.

Under ``torchrun`` every rank pretrains and finetunes (DDP, each on its share of the data); score,
select, prune, eval and export run once, on rank 0, while the others wait; only rank 0 writes.

>>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from layerprune.criteria.catalog import get_criterion
from layerprune.criteria.context import ScoringContext
from layerprune.criteria.selection import removed_share, select_blocks
from layerprune.data import DatasetBundle, build_dataset, make_loader
from layerprune.errors import LayerpruneError
from layerprune.recipe.load import RecipeError
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.schema import Recipe, TrainSection
from layerprune.surgery import (
    PruneSpec, find_blocks, load_pruned, measure_latency, model_cost, remove_blocks, save_pruned,
)
from layerprune.train import EvalResult, TrainSettings, distributed, evaluate, repair_batchnorm, train
from layerprune.train.trainer import SYNC_BATCHNORM_ON_CPU

STAGES = ("pretrain", "score", "select", "prune", "finetune", "eval", "export")
EVERY_RANK = ("pretrain", "finetune")  # the stages that train, on every rank under torchrun
ON_DEVICE_LIMIT = 2 * 1024**3  # data.on_device default: in-memory data sets up to this size go to the GPU
Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict[str, Any] = field(default_factory=dict)


class Runner:
    def __init__(self, recipe: Recipe, run: RunDir | None = None, *, progress: bool = False,
                 log: Log = print) -> None:
        self.recipe, self.run, self.progress, self.log = recipe, run, progress, log
        self.data: DatasetBundle | None = None
        self._base: nn.Module | None = None
        self._device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = distributed.resolve_device(self.recipe.device)  # errors name the `device` key
        return self._device

    # -- building blocks ----------------------------------------------------------------------
    def build_data(self) -> DatasetBundle:
        if self.data is None:
            d = self.recipe.data
            options = dict(d.options)
            if d.root is not None:
                options["root"] = d.root
            if d.download:
                options["download"] = True
            try:
                data = build_dataset(d.dataset, **options)
            except LayerpruneError as exc:
                raise LayerpruneError(f"data: {exc}") from None
            size = data.in_memory_bytes()
            on_device = d.on_device if d.on_device is not None else (
                self.device.type == "cuda" and size is not None and size <= ON_DEVICE_LIMIT)
            if on_device and self.device.type != "cpu":
                data.to(self.device)  # batches are then cut and augmented where the model is
            self.data = data
        return self.data

    def model_kwargs(self) -> dict[str, Any]:
        data = self.build_data()
        return {"num_classes": data.num_classes, "in_chans": data.in_chans, **self.recipe.model.kwargs}

    def new_model(self, checkpoint: str | None = None) -> nn.Module:
        from layerprune.models import create_model_for

        try:
            model = create_model_for(self.recipe.model.name, self.build_data(), checkpoint=checkpoint,
                                     seed=self.recipe.seed, **self.recipe.model.kwargs)
        except LayerpruneError as exc:
            raise LayerpruneError(f"model: {exc}") from None
        return model.to(self.device)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.build_data().input_size, device=self.device)

    def train_loader(self):
        """Shuffled, augmented training batches; under torchrun, this rank's share of each epoch."""
        d, train_set = self.recipe.data, self.build_data().train
        sampler = None
        if distributed.active():
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_set, shuffle=True, seed=self.recipe.seed, drop_last=True)
        return make_loader(train_set, d.batch_size, shuffle=True, workers=d.workers, seed=self.recipe.seed,
                           drop_last=len(train_set) > d.batch_size * distributed.world_size(), sampler=sampler)

    def eval_batches(self, split: str | None = None, share: bool = False):
        """Evaluation batches in order; with ``share`` under torchrun, every ``world_size``-th sample
        from this rank's offset (the shares are disjoint and cover the split exactly)."""
        d, data = self.recipe.data, self.build_data().split(split or self.recipe.eval.split)
        sampler = range(distributed.rank(), len(data), distributed.world_size()) if share and distributed.active() else None
        return make_loader(data, d.eval_batch_size, workers=d.workers, sampler=sampler)

    def evaluate(self, model: nn.Module, description: str = "eval") -> EvalResult:
        return evaluate(model, self.eval_batches(), progress=self.progress, description=description)

    def settings(self, section: TrainSection, epochs: int | None = None, distill: bool = False) -> TrainSettings:
        name = "finetune" if section is self.recipe.finetune else "pretrain"
        try:
            return self._settings(section, epochs, distill)
        except LayerpruneError as exc:
            raise LayerpruneError(f"{name}: {exc}") from None

    def _settings(self, section: TrainSection, epochs: int | None, distill: bool) -> TrainSettings:
        values = section.model_dump(exclude={"distill"})
        values["milestones"] = tuple(values["milestones"])
        if epochs is not None:
            values["epochs"] = epochs
        if distill:
            values["distill_alpha"] = section.distill.alpha  # type: ignore[attr-defined]
            values["distill_temperature"] = section.distill.temperature  # type: ignore[attr-defined]
        return TrainSettings(**values)

    def fit(self, model: nn.Module, settings: TrainSettings, name: str, teacher: nn.Module | None = None) -> list:
        history = train(model, self.train_loader(), settings, val_batches=self.eval_batches("val", share=True)
                        if self.build_data().val is not None else None, teacher=teacher,
                        checkpoint_path=self.run.file(f"{name}.ckpt"), seed=self.recipe.seed,
                        progress=self.progress, log=self.log, description=name)
        return [dataclasses.asdict(h) for h in history]

    def repair(self, model: nn.Module) -> nn.Module:
        batches = []
        with torch.random.fork_rng(devices=[]):  # the same (augmented) batches every time
            torch.manual_seed(self.recipe.seed)
            for i, batch in enumerate(self.train_loader()):
                if i >= self.recipe.prune.repair_batches:
                    break
                batches.append(batch)
        return repair_batchnorm(model, batches)

    # -- preflight ----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Build data and model and check the plan's constraints: fail in seconds, not hours."""
        self.device  # noqa: B018 - an unavailable device is the first thing to report
        self.build_data()
        checkpoint = self.recipe.model.checkpoint
        model = self.new_model(checkpoint)
        blocks = find_blocks(model, self.example_input())
        names = {b.name for b in blocks}
        problems = [f"select.protect: unknown block {p!r} (see: layerprune inspect {self.recipe.model.name})"
                    for p in self.recipe.select.protect if p not in names]
        sel = self.recipe.select
        if sel.rule == "budget":
            key = "params" if "params" in sel.params else "macs"
            target, reachable = float(sel.params[key]), _max_reduction(blocks, key, sel.protect, sel.collapse)
            if target > reachable + 1e-12:
                problems.append(f"select.params.{key}: {target:g} is out of reach for {self.recipe.model.name}; "
                                f"removing every allowed block saves {reachable:.3f}")
        training = {name: section for name in ("pretrain", "finetune")
                    if (section := getattr(self.recipe, name)) is not None}
        on_cpu = self.device.type == "cpu"
        if on_cpu and distributed.active():
            problems += [f"{name}.sync_batchnorm: {SYNC_BATCHNORM_ON_CPU}"
                         for name, section in training.items() if section.sync_batchnorm]
        if problems:
            raise RecipeError(self.recipe.source, problems)
        for name, section in training.items():
            if on_cpu and section.epochs and section.precision == "fp16":
                self.log(f"[yellow]warning:[/] {name}.precision: fp16 has no fast CPU kernels (about 75× "
                         "slower than 32 in docs/performance.md); bf16 is the CPU's mixed precision")

    # -- stages -------------------------------------------------------------------------------
    def base_model(self) -> nn.Module:
        """The unpruned, trained model (from the checkpoint or the pretrain stage)."""
        if self._base is None:
            checkpoint = self.recipe.model.checkpoint
            if checkpoint is None and self.recipe.pretrain is not None:
                checkpoint = str(self.run.file("pretrained.pth"))
            self._base = self.new_model(checkpoint)
        return self._base

    def stage_pretrain(self) -> None:
        if self.recipe.model.checkpoint is not None or self.recipe.pretrain is None:
            return
        model = self.new_model()
        history = self.fit(model, self.settings(self.recipe.pretrain), "pretrain")
        ranks = distributed.world_size()

        def save() -> None:
            from layerprune.io import atomic_path

            with atomic_path(self.run.file("pretrained.pth")) as tmp:
                torch.save(model.state_dict(), tmp)
            self.run.write_json("pretrain.json", {"history": history, "world_size": ranks,
                                                  "eval": self.evaluate(model).__dict__})

        distributed.on_main(save)

    def _score(self, model: nn.Module, prefix: str = "") -> tuple[dict[str, float], list, Any]:
        rc = self.recipe
        criterion = get_criterion(rc.criterion.name, **rc.criterion.params)
        ctx = ScoringContext(model, self.build_data(), samples=rc.data.calibration.samples,
                             batches=rc.data.calibration.batches, split=rc.data.calibration.split,
                             seed=rc.seed, progress=self.progress)
        result = criterion(ctx)
        self.run.write_json(f"{prefix}scores.json", {
            "calibration": rc.data.calibration.model_dump(), **result.to_dict()})
        rule = self.rule(criterion)
        curve = result.diagnostics.get("curve")
        if curve is not None:
            curve.plot(self.run.file(f"{prefix}modularity_curve.png"), threshold=rule.get("threshold", 0.03),
                       title=f"{rc.model.name} on {rc.data.dataset}")
        return result.scores, ctx.blocks, curve

    def rule(self, criterion=None) -> dict[str, Any]:
        sel = self.recipe.select
        if sel.rule is None:
            criterion = criterion or get_criterion(self.recipe.criterion.name, **self.recipe.criterion.params)
            return dict(criterion.default_rule)
        return {"rule": sel.rule, **sel.params}

    def stage_score(self) -> None:
        self._score(self.base_model())

    def stage_select(self) -> None:
        scores = self.run.read_json("scores.json")["scores"]
        blocks = find_blocks(self.base_model(), self.example_input())
        rule = self.rule()
        removed = self._select(scores, blocks, rule)
        self._write_plan(blocks, rule, removed, "plan.json")
        curve_png = self.run.file("modularity_curve.png")
        if curve_png.exists():  # redraw with the chosen blocks marked
            from layerprune.criteria.curve import ModularityCurve

            curve = ModularityCurve.from_dict(self.run.read_json("scores.json")["diagnostics"]["curve"])
            curve.plot(curve_png, threshold=rule.get("threshold", 0.03), removed=removed,
                       title=f"{self.recipe.model.name} on {self.recipe.data.dataset}")

    def _select(self, scores, blocks, rule) -> list[str]:
        sel = self.recipe.select
        params = {k: v for k, v in rule.items() if k != "rule"}
        try:
            return select_blocks(scores, blocks, rule=rule["rule"], protect=sel.protect, collapse=sel.collapse, **params)
        except LayerpruneError as exc:
            raise LayerpruneError(f"select: {exc}") from None

    def _write_plan(self, blocks, rule, removed, name) -> None:
        params_share, macs_share = removed_share(blocks, removed)
        self.run.write_json(name, {
            "rule": rule, "protect": self.recipe.select.protect, "collapse": self.recipe.select.collapse,
            "removed": removed, "params_reduction_estimate": params_share, "macs_reduction_estimate": macs_share,
        })

    def stage_prune(self) -> None:
        rc = self.recipe
        base = self.base_model()
        if rc.prune.steps == 1:
            removed = self.run.read_json("plan.json")["removed"]
            pruned, record = self._prune_step(base, removed)
            steps = [record]
        else:
            pruned, steps = self._prune_iteratively(base)
        spec = PruneSpec.for_model(pruned, rc.model.name, self.model_kwargs(), list(self.example_input().shape[1:]))
        save_pruned(pruned, spec, self.run.file("pruned"))
        self.run.write_json("prune.json", {"steps": steps, "removed": spec.removed, "collapsed": spec.collapsed})

    def _prune_step(self, model: nn.Module, removed: list[str]) -> tuple[nn.Module, dict[str, Any]]:
        pruned = remove_blocks(model.eval(), removed, self.example_input(), collapse=self.recipe.select.collapse)
        record: dict[str, Any] = {"removed": removed, "after_surgery": self.evaluate(pruned).__dict__}
        if self.recipe.prune.repair:
            self.repair(pruned)
            record["after_repair"] = self.evaluate(pruned).__dict__
        self.log(_step_line(record))
        return pruned, record

    def _prune_iteratively(self, base: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]]:
        rc = self.recipe
        steps = rc.prune.steps
        full_plan = self.run.read_json("plan.json")
        model, records = base, []
        for i in range(1, steps + 1):
            scores, blocks, _ = self._score(model, prefix=f"step{i}_")
            rule = self.rule()
            if rule["rule"] == "threshold":
                # Blocks still below the threshold, re-scored; this step takes its share of them.
                chosen = self._select(scores, blocks, rule)
                chosen = sorted(chosen, key=lambda n: scores[n])[:math.ceil(len(chosen) / (steps - i + 1))]
            else:
                # The full plan's number of blocks, removed in near-equal steps, re-scored each time.
                n = len(full_plan["removed"])
                k = round(n * i / steps) - round(n * (i - 1) / steps)
                chosen = self._select(scores, blocks, {"rule": "count", "k": k})
            model, record = self._prune_step(model, chosen)
            record["step"] = i
            if i < steps and rc.prune.epochs_between:
                settings = self.settings(rc.finetune, epochs=rc.prune.epochs_between)
                record["finetune"] = self.fit(model, settings, f"step{i}_finetune")
            records.append(record)
        return model, records

    def pruned_model(self, name: str = "pruned") -> nn.Module:
        return load_pruned(self.run.file(name)).to(self.device)

    def stage_finetune(self) -> None:
        rc = self.recipe
        model = self.pruned_model()  # every rank loads what rank 0 pruned, then wraps it in DDP
        teacher = self.base_model() if rc.finetune.distill.enabled else None
        history = self.fit(model, self.settings(rc.finetune, distill=rc.finetune.distill.enabled), "finetune", teacher)
        ranks = distributed.world_size()

        def save() -> None:
            spec = PruneSpec.load(self.run.file("pruned") / "spec.json")
            save_pruned(model, spec, self.run.file("finetuned"))
            self.run.write_json("finetune.json", {"history": history, "world_size": ranks})

        distributed.on_main(save)

    def stage_eval(self) -> None:
        rc = self.recipe
        base, final = self.base_model(), self.pruned_model("finetuned")
        x = self.example_input()
        base_cost, final_cost = model_cost(base, x), model_cost(final, x)
        metrics: dict[str, Any] = {
            "split": rc.eval.split,
            "base": {**self.evaluate(base).__dict__, **base_cost.to_dict()},
            "pruned": {**self.evaluate(final).__dict__, **final_cost.to_dict()},
            "removed": PruneSpec.load(self.run.file("finetuned") / "spec.json").removed,
            "prune_steps": self.run.read_json("prune.json")["steps"],
        }
        metrics["params_reduction"] = 1 - final_cost.params / base_cost.params
        metrics["macs_reduction"] = 1 - final_cost.macs / base_cost.macs
        if rc.eval.latency:
            size = tuple(self.build_data().input_size)
            device = next(base.parameters()).device
            lat_base = measure_latency(base, size, batch_size=rc.eval.latency_batch_size, device=device)
            lat_final = measure_latency(final, size, batch_size=rc.eval.latency_batch_size, device=device)
            metrics["base"]["latency"], metrics["pruned"]["latency"] = lat_base.to_dict(), lat_final.to_dict()
            metrics["speedup"] = lat_base.median_ms / lat_final.median_ms
        self.run.write_json("metrics.json", metrics)

    def stage_export(self) -> None:
        from layerprune.recipe.summary import write_report

        if self.recipe.export.enabled:
            final = self.pruned_model("finetuned")
            save_pruned(final, PruneSpec.load(self.run.file("finetuned") / "spec.json"), self.run.file("model"))
        write_report(self.run, self.run.read_json("metrics.json"))

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


def _max_reduction(blocks, key: str, protect, collapse: bool) -> float:
    """The largest params/MACs share removable under the constraints (one block kept per stage)."""
    total = sum(b.params for b in blocks) or 1
    share = (lambda b: b.params / total) if key == "params" else (lambda b: b.macs_share)
    stages: dict[str, list] = {}
    for b in blocks:
        if b.stage:
            stages.setdefault(b.stage, []).append(b)
    best = 0.0
    for members in stages.values():
        candidates = [b for b in members if b.can_remove(collapse) and b.name not in protect]
        shares = sorted(share(b) for b in candidates)
        if len(candidates) == len(members) and shares:
            shares = shares[1:]  # the stage keeps its cheapest block
        best += sum(shares)
    return best


def _step_line(record: dict[str, Any]) -> str:
    line = f"removed {len(record['removed'])} blocks: accuracy after surgery {record['after_surgery']['accuracy']:.3f}"
    if "after_repair" in record:
        line += f", after BatchNorm repair {record['after_repair']['accuracy']:.3f}"
    return line


def run_recipe(recipe: Recipe, *, out: str | None = None, fresh: bool = False, progress: bool = False,
               log: Log = print) -> RunResult:
    """Run (or resume) ``recipe`` in its run directory; returns the final metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group first; only rank 0 logs,
    shows progress and writes, and every rank returns the same result.
    """
    joined = distributed.init_from_env()
    try:
        main = distributed.is_main()
        runner = Runner(recipe, progress=progress and main, log=log if main else _quiet)
        # Before the run directory exists: a recipe that cannot run leaves nothing. Every rank checks
        # (a data set may be missing on one node only); a failure anywhere stops all of them.
        distributed.check_everywhere(runner.preflight)
        runner.run = distributed.on_main(lambda: RunDir.open(recipe, out, fresh=fresh))
        distributed.check_everywhere(lambda: _visible(runner.run))
        runner.log(f"run directory: {runner.run.path}")
        return runner()
    finally:
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

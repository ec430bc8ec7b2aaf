"""What a recipe's stages run on: its data, models, loaders, device, training settings and the
pruner it describes, each built once from the recipe."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from layerprune import distributed
from layerprune.calibration import Calibration, Repair
from layerprune.data import DatasetBundle, build_dataset, make_loader
from layerprune.errors import DatasetFetchError, FetchError, LayerpruneError
from layerprune.evaluation import EvalResult
from layerprune.models import create_model_for
from layerprune.pruner import Pruner
from layerprune.recipe.load import local_instead
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.schema import Recipe, TrainSection
from layerprune.recipe.trainlog import TrainingLog
from layerprune.tasks import IMAGE_CLASSIFICATION, CausalLM, Task
from layerprune.train import TrainSettings, train

if TYPE_CHECKING:
    from layerprune.recipe.cache import BaseCache

ON_DEVICE_LIMIT = 2 * 1024**3  # data.on_device default: in-memory data sets up to this size go to the GPU
Log = Callable[[str], None]


class Resources:
    """The recipe's data set, models, loaders and pruner (built lazily, once)."""

    def __init__(self, recipe: Recipe, run: RunDir | None = None, *, progress: bool = False,
                 log: Log = print) -> None:
        self.recipe, self.run, self.progress, self.log = recipe, run, progress, log
        self.data: DatasetBundle | None = None
        self._base: nn.Module | None = None
        self._device: torch.device | None = None
        self.base_checkpoint: str | None = None  # where a pretrained base is kept, if not in the run dir
        # where the pretrain stage looks for a base already trained for this key (layerprune run: the
        # bench's cache); None trains it (a bench training into its own cache)
        self.base_cache: "BaseCache | None" = None
        self._log: TrainingLog | None = None
        self._task: Task | None = None

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = distributed.resolve_device(self.recipe.device)  # errors name the `device` key
        return self._device

    def build_data(self) -> DatasetBundle:
        if self.data is None:
            d = self.recipe.data
            options = dict(d.options)
            if self.recipe.model.hf is not None and d.dataset == "text":
                options.setdefault("tokenizer", self.recipe.model.hf)  # the model's own tokenizer
            if d.root is not None:
                options["root"] = d.root
            if d.download:
                options["download"] = True
            try:
                data = build_dataset(d.dataset, **options)
            except DatasetFetchError as exc:  # the files' folder is what a recipe can give instead
                raise LayerpruneError(f"data: {exc}; or give local files: --set data.root=FOLDER") from None
            except LayerpruneError as exc:
                raise LayerpruneError(f"data: {exc}") from None
            size = data.in_memory_bytes()
            on_device = d.on_device if d.on_device is not None else (
                self.device.type == "cuda" and size is not None and size <= ON_DEVICE_LIMIT)
            if on_device and self.device.type != "cpu":
                data.to(self.device)  # batches are then cut and augmented where the model is
            self.data = data
        return self.data

    @property
    def task(self) -> Task:
        """What the model is trained and measured on (:mod:`layerprune.tasks`): every stage asks it."""
        if self._task is None:
            if self.recipe.model.task_name == "causal-lm":
                self._task = CausalLM(getattr(self.build_data(), "seq_len", None))
            else:
                self._task = IMAGE_CLASSIFICATION
        return self._task

    def model_kwargs(self) -> dict[str, Any]:
        data = self.build_data()
        return {"num_classes": data.num_classes, "in_chans": data.in_chans, **self.recipe.model.kwargs}

    def fetch_checkpoint(self) -> None:
        """Download ``model.checkpoint`` now when it is a URL (into torch hub's cache, verified)."""
        from layerprune.models.remote import is_url, local_checkpoint

        url = self.recipe.model.checkpoint
        if is_url(url):
            try:
                local_checkpoint(url)
            except FetchError as exc:
                raise _checkpoint_not_fetched(exc) from None

    def new_model(self, checkpoint: str | None = None) -> nn.Module:
        m = self.recipe.model
        try:
            if m.is_hf:
                model = self._new_hf_model(checkpoint)
            else:
                model = create_model_for(m.name, self.build_data(), checkpoint=checkpoint, seed=self.recipe.seed,
                                         **m.kwargs)
        except FetchError as exc:
            raise _checkpoint_not_fetched(exc) from None
        except LayerpruneError as exc:
            raise LayerpruneError(f"model: {exc}") from None
        return model.to(self.device)

    def _new_hf_model(self, checkpoint: str | None) -> nn.Module:
        """The transformers model: ``model.hf`` loaded, or a new one built from ``model.hf_config``
        (its vocabulary the data's tokenizer's, its weights drawn from the recipe's seed); then
        ``checkpoint``'s weights, when given."""
        from layerprune.models.checkpoint import load_checkpoint
        from layerprune.models.hf import build_hf_model, load_hf_model

        m = self.recipe.model
        if m.hf is not None:
            model = load_hf_model(m.hf, m.task_name, **m.kwargs)
        else:
            model = build_hf_model(m.hf_config, m.task_name, seed=self.recipe.seed,
                                   tokenizer=getattr(self.build_data(), "tokenizer", None))
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        return model.eval()

    def base_model(self) -> nn.Module:
        """The unpruned, trained model: the pretrain stage's (which starts from ``model.checkpoint``
        when there is one), else the checkpoint's."""
        if self._base is None:
            checkpoint = self.recipe.model.checkpoint
            if self.recipe.pretrain is not None:
                checkpoint = self.base_checkpoint or str(self.run.file("pretrained.pth"))
            self._base = self.new_model(checkpoint)
        return self._base

    def example_input(self) -> torch.Tensor:
        """One input the model is traced with: zeros of the images' size, or a language model's
        first training window."""
        data = self.build_data()
        if self.recipe.model.is_hf:
            return data.train[0][0][None].to(self.device)
        return torch.zeros(1, *data.input_size, device=self.device)

    # -- pruning --------------------------------------------------------------------------------
    def calibration(self, seed: int | None = None) -> Calibration:
        cal = self.recipe.data.calibration
        return Calibration(split=cal.split, samples=cal.samples, batches=cal.batches,
                           seed=self.recipe.seed if seed is None else seed)

    def repair(self, seed: int | None = None) -> Repair:
        p = self.recipe.prune
        return Repair(enabled=p.repair, batches=p.repair_batches, batch_size=p.repair_batch_size,
                      seed=self.recipe.seed if seed is None else seed)

    def pruner(self, *, criterion: str | None = None, criterion_params: dict[str, Any] | None = None,
               rule: dict[str, Any] | None = None, seed: int | None = None) -> Pruner:
        """The recipe's pruner; the bench swaps in other criteria, rules and seeds (calibration and
        repair draws)."""
        rc = self.recipe
        if criterion is None:
            criterion, criterion_params = rc.criterion.name, rc.criterion.params
        rule = rule if rule is not None else ({"rule": rc.select.rule, **rc.select.params} if rc.select.rule else {})
        if rule.get("latency") is not None and rule.get("precision") is None:
            rule = {**rule, "precision": rc.finetune.precision}  # timed as the finetuned model runs
        try:
            return Pruner(criterion, criterion_params=criterion_params, rule=rule.get("rule"),
                          rule_params={k: v for k, v in rule.items() if k != "rule"},
                          calibration=self.calibration(seed), repair=self.repair(seed), steps=rc.prune.steps,
                          collapse=rc.select.collapse, protect=rc.select.protect, level=rc.select.level,
                          progress=self.progress, log=self.log, task=self.task)
        except LayerpruneError as exc:
            raise LayerpruneError(f"select: {exc}") from None

    # -- loaders and training -------------------------------------------------------------------
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

    def samples(self, count: int, split: str | None = None) -> torch.Tensor:
        """The first ``count`` inputs of the evaluation split, as its loader prepares them (on the CPU)."""
        batches, got = [], 0
        for x, _ in self.eval_batches(split):
            batches.append(x.cpu())
            got += len(x)
            if got >= count:
                break
        return torch.cat(batches)[:count]

    def evaluate(self, model: nn.Module, description: str = "eval") -> EvalResult:
        return self.task.evaluate(model, self.eval_batches(), progress=self.progress, description=description)

    def settings(self, section: TrainSection, epochs: int | None = None, distill: bool = False) -> TrainSettings:
        name = "finetune" if section is self.recipe.finetune else "pretrain"
        extra = {}
        if distill:
            extra = {"distill_alpha": section.distill.alpha, "distill_temperature": section.distill.temperature}  # type: ignore[attr-defined]
        try:
            return TrainSettings.from_config(section, epochs=epochs, **extra)
        except LayerpruneError as exc:
            raise LayerpruneError(f"{name}: {exc}") from None

    def training_log(self) -> TrainingLog:
        """``metrics.csv`` (and TensorBoard files) in the run directory."""
        if self._log is None or self._log.directory != self.run.path:
            self._log = TrainingLog(self.run.path, tensorboard=self.recipe.logging.tensorboard)
        return self._log

    def fit(self, model: nn.Module, settings: TrainSettings, name: str, teacher: nn.Module | None = None) -> list:
        history = train(model, self.train_loader(), settings, val_batches=self.eval_batches("val", share=True)
                        if self.build_data().val is not None else None, teacher=teacher,
                        checkpoint_path=self.run.file(f"{name}.ckpt"), seed=self.recipe.seed,
                        progress=self.progress, log=self.log, description=name,
                        on_epoch=self.training_log().stage(name), task=self.task)
        return [dataclasses.asdict(h) for h in history]


def _checkpoint_not_fetched(exc: FetchError) -> LayerpruneError:
    """A failed download of ``model.checkpoint``, naming the key and the ``--set`` that gives a
    local file instead."""
    return LayerpruneError(f"model.checkpoint: {exc.instead(local_instead('model.checkpoint'))}")

"""The training loop recipes call to pretrain and to finetune: SGD or AdamW, a per-epoch learning-rate
schedule, optional knowledge distillation, validation, and exact resume from a checkpoint.

>>> settings = TrainSettings(epochs=3, lr=0.05)
>>> history = train(model, make_loader(data.train, 64, shuffle=True, seed=0), settings,
...                 val_batches=make_loader(data.val, 256), checkpoint_path="run/finetune.pt")
... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from layerprune.errors import LayerpruneError
from layerprune.hooks import model_device
from layerprune import distributed
from layerprune.train.distill import distillation_loss
from layerprune.tasks import IMAGE_CLASSIFICATION, Task
from layerprune.train.loops import Batches
from layerprune.train.resume import load_training_checkpoint, save_training_checkpoint
from layerprune.train.settings import TrainSettings


@dataclass
class EpochRecord:
    """What one epoch did. ``epoch`` is 0-based; train metrics are running averages over the
    epoch's (augmented) batches in train mode, the loss including any distillation term."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def summary(self, epochs: int, description: str = "train") -> str:
        """One line for logs, counting epochs from 1 like a progress bar does."""
        val = "" if self.val_loss is None else f"  val_loss {self.val_loss:.4f}  val_acc {self.val_accuracy:.2%}"
        return (f"{description} epoch {self.epoch + 1}/{epochs}  lr {self.lr:.4g}  loss {self.train_loss:.4f}"
                f"  acc {self.train_accuracy:.2%}{val}  {self.seconds:.1f}s")


def train(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: TrainSettings,
    *,
    val_batches: Batches | None = None,
    teacher: nn.Module | None = None,
    checkpoint_path: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    description: str = "train",
    on_epoch: Callable[[list[EpochRecord]], None] | None = None,
    task: Task | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place for ``settings.epochs`` epochs and return one record per epoch.

    Epoch ``e`` starts with ``torch.manual_seed(seed + e)`` (under torchrun, a different seed per
    rank derived from it) and re-seeds ``train_loader.generator`` (when it has one) with
    ``seed + e``, so its shuffling and augmentation depend only on ``(seed, e)``.
    With ``checkpoint_path`` the state is saved after every epoch and an existing file is resumed:
    the result is bitwise identical to an uninterrupted run. A finished checkpoint trains nothing:
    its weights are loaded into ``model`` and its history returned. The model ends in eval mode,
    in the default (contiguous) memory layout and with plain BatchNorm layers. ``on_epoch`` gets the
    whole history after every epoch, once its checkpoint is saved (on rank 0 only).

    ``task`` (:mod:`layerprune.tasks`, default image classification) says what a batch is and what
    its loss, hits and units are: a causal LM trains on next-token cross-entropy averaged over
    predicted tokens, and its accuracies are next-token accuracies.

    Training happens on the model's device. ``settings.precision`` (autocast in bf16/fp16),
    ``channels_last`` and ``compile`` speed it up where the hardware gains from them. Under torchrun
    (see :mod:`layerprune.distributed`) the model is wrapped in DDP (with SyncBatchNorm when
    ``settings.sync_batchnorm``), ``train_loader`` should hold this rank's share (a
    ``DistributedSampler``), metrics are summed over ranks, and only rank 0 logs and checkpoints.
    """
    if settings.distill_alpha > 0 and teacher is None:
        raise LayerpruneError(f"distill_alpha: is {settings.distill_alpha} but no teacher was given "
                              "(pass a teacher, or set distill_alpha to 0)")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LayerpruneError(f"seed: must be an integer, got {seed!r}")
    if settings.epochs == 0:
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LayerpruneError(f"{description}: the model has no parameters with requires_grad=True")
    optimizer = _make_optimizer(params, settings)
    device = params[0].device
    scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
    history: list[dict] = []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        history = load_training_checkpoint(checkpoint_path, model, optimizer, settings, seed, scaler)
    teacher = teacher if settings.distill_alpha > 0 else None  # α = 0: skip the teacher's forward passes
    teacher_flags = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    restore_batchnorm = _sync_batchnorm(model, device) if settings.sync_batchnorm and distributed.active() else None
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)  # parameters keep their identity (the optimizer's)
    # Under torchrun, gradients are averaged across ranks by DDP; the model is wrapped here, after
    # any surgery, because DDP fixes the parameter set it synchronises when it is built.
    net = _ddp(model) if distributed.active() else model
    if settings.compile:
        net = torch.compile(net)
    step = _Step(net, optimizer, settings, teacher, scaler, device, task or IMAGE_CLASSIFICATION)
    task = step.task
    try:
        if teacher is not None:
            teacher.eval()
        batches = _length(train_loader)
        if settings.batches_per_epoch is not None and batches is not None:
            batches = min(batches, settings.batches_per_epoch)
        with _Bars(progress and distributed.is_main(), description, settings.epochs, len(history), batches) as bars:
            for epoch in range(len(history), settings.epochs):
                record = _run_epoch(step, train_loader, epoch, seed, bars)
                distributed.broadcast_buffers(model)
                if val_batches is not None:
                    record.val_loss, record.val_accuracy = _validate(model, val_batches, task)
                history.append(asdict(record))
                if checkpoint_path is not None and distributed.is_main():
                    save_training_checkpoint(checkpoint_path, model, optimizer, settings, seed, history, scaler)
                distributed.barrier()
                bars.epoch_done(record)
                if distributed.is_main():
                    if on_epoch is not None:
                        on_epoch([EpochRecord(**r) for r in history])
                    if log is not None:
                        log(record.summary(settings.epochs, description))
        distributed.check_in_step(model, description)
    finally:
        if settings.channels_last:
            model.to(memory_format=torch.contiguous_format)
        if restore_batchnorm is not None:
            restore_batchnorm()
        model.eval()
        for module, training in teacher_flags:  # each submodule's own flag, as it was
            module.training = training
    return [EpochRecord(**r) for r in history]


def _ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = model_device(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    # One plain parameter group: weight decay applies to every trainable tensor, as in `fit`.
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           nesterov=s.nesterov and s.momentum > 0)


class _Step:
    """One optimisation step: forward (under autocast), loss, backward (loss-scaled for fp16), update."""

    def __init__(self, net, optimizer, settings: TrainSettings, teacher, scaler, device: torch.device,
                 task: Task) -> None:
        self.net, self.optimizer, self.settings, self.teacher = net, optimizer, settings, teacher
        self.scaler, self.device, self.task = scaler, device, task
        self.amp = settings.amp_dtype
        self.memory_format = torch.channels_last if settings.channels_last else torch.preserve_format

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Train on one batch; returns its loss, how many units it got right (device tensors) and
        how many units there were (samples, or predicted tokens)."""
        s = self.settings
        # non_blocking: copies from pinned host memory overlap with the GPU's work (no-op on CPU)
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format if x.dim() == 4 else torch.preserve_format)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext():
            task = self.task
            logits = task.forward(self.net, x)
            with torch.no_grad():
                teacher_logits = task.forward(self.teacher, x) if self.teacher is not None else None
            logits, y, teacher_logits = task.rows(logits, y, teacher_logits)
            loss = distillation_loss(logits, teacher_logits, y, alpha=s.distill_alpha,
                                     temperature=s.distill_temperature, label_smoothing=s.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum(), len(y)


def _run_epoch(step: _Step, loader, epoch, seed, bars) -> EpochRecord:
    start = time.perf_counter()
    # Everything random in epoch e (shuffle order, augmentation, dropout) follows from seed + e
    # alone (and the rank, so that ranks augment their shares differently), whether the run got
    # here directly or resumed from a checkpoint.
    torch.manual_seed((seed + epoch) * distributed.world_size() + distributed.rank())
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed + epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # DistributedSampler: each rank's share of this epoch
        sampler.set_epoch(epoch)
    lr = step.settings.lr_at(epoch)
    for group in step.optimizer.param_groups:
        group["lr"] = lr
    step.net.train()
    # Running sums stay tensors on the device: no host synchronisation per batch unless a progress
    # bar shows them.
    loss_sum = correct = torch.zeros((), dtype=torch.float64, device=step.device)
    seen = 0
    bars.epoch_started(epoch)
    limit = step.settings.batches_per_epoch
    for i, (x, y) in enumerate(loader):
        if limit is not None and i == limit:
            break
        loss, right, units = step(x, y)
        loss_sum = loss_sum + loss * units
        correct = correct + right
        seen += units
        if bars.enabled:
            bars.batch_done(float(loss_sum) / seen, float(correct) / seen)
    loss_sum, correct, seen = distributed.sum_across(float(loss_sum), float(correct), seen)
    if seen == 0:
        raise LayerpruneError("train_loader: yielded no batches")
    return EpochRecord(epoch, lr, loss_sum / seen, correct / seen, None, None, time.perf_counter() - start)


def _validate(model: nn.Module, val_batches: Batches, task: Task) -> tuple[float, float]:
    """Loss and accuracy over every rank's validation batches (each rank may hold a share)."""
    val = task.evaluate(model, val_batches)
    units = val.tokens if val.tokens is not None else val.samples
    loss_sum, correct, seen = distributed.sum_across(val.loss * units, val.accuracy * units, units)
    return loss_sum / seen, correct / seen


def _sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Swap every BatchNorm for a SyncBatchNorm sharing its tensors; returns the undo.

    Statistics are then computed over the global batch. The swap is undone after training so
    the saved and returned model holds plain BatchNorm layers (same weights, same buffers).
    """
    if device.type == "cpu":
        raise LayerpruneError(f"sync_batchnorm: {distributed.SYNC_BATCHNORM_ON_CPU}")
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))

    def undo() -> None:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)

    return undo


def _length(loader: object) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Bars:
    """Two transient rich bars — epochs, and batches of the current epoch — or nothing at all."""

    def __init__(self, enabled: bool, description: str, epochs: int, done: int, batches: int | None) -> None:
        self.enabled, self.description, self.epochs, self.batches = enabled, description, epochs, batches
        self.done = done
        self._progress = None

    def __enter__(self) -> "_Bars":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), transient=True)
            self._progress.__enter__()
            self._epochs = self._progress.add_task(self.description, total=self.epochs, completed=self.done,
                                                   metrics="")
            self._batches = self._progress.add_task("", total=self.batches, metrics="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def epoch_started(self, epoch: int) -> None:
        if self._progress is not None:
            self._progress.reset(self._batches, total=self.batches,
                                 description=f"epoch {epoch + 1}/{self.epochs}", metrics="")

    def batch_done(self, loss: float, accuracy: float) -> None:
        if self._progress is not None:
            self._progress.update(self._batches, advance=1, metrics=f"loss {loss:.4f}  acc {accuracy:.2%}")

    def epoch_done(self, record: EpochRecord) -> None:
        if self._progress is not None:
            val = "" if record.val_accuracy is None else f"  val_acc {record.val_accuracy:.2%}"
            self._progress.update(self._epochs, advance=1, metrics=f"loss {record.train_loss:.4f}{val}")

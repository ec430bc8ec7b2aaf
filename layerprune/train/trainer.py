"""The training loop recipes call to pretrain and to finetune: SGD or AdamW, a per-epoch learning-rate
schedule, optional knowledge distillation, validation, and exact resume from a checkpoint.

>>> settings = TrainSettings(epochs=3, lr=0.05)
>>> history = train(model, make_loader(data.train, 64, shuffle=True, seed=0), settings,
...                 val_batches=make_loader(data.val, 256), checkpoint_path="run/finetune.pt")
... # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from layerprune.errors import LayerpruneError
from layerprune.train import distributed
from layerprune.train.distill import distillation_loss
from layerprune.train.loops import Batches, evaluate
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
) -> list[EpochRecord]:
    """Train ``model`` in place for ``settings.epochs`` epochs and return one record per epoch.

    Epoch ``e`` starts with ``torch.manual_seed(seed + e)`` and re-seeds ``train_loader.generator``
    (when it has one) the same way, so its shuffling and augmentation depend only on ``(seed, e)``.
    With ``checkpoint_path`` the state is saved after every epoch and an existing file is resumed:
    the result is bitwise identical to an uninterrupted run. A finished checkpoint trains nothing:
    its weights are loaded into ``model`` and its history returned. The model ends in eval mode.
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
    # Under torchrun, gradients are averaged across ranks by DDP; the model is wrapped here, after
    # any surgery, because DDP fixes the parameter set it synchronises when it is built.
    net = _ddp(model) if distributed.active() else model
    history: list[dict] = []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        history = load_training_checkpoint(checkpoint_path, model, optimizer, settings, seed)
    teacher = teacher if settings.distill_alpha > 0 else None  # α = 0: skip the teacher's forward passes
    teacher_was_training = teacher.training if teacher is not None else False
    try:
        if teacher is not None:
            teacher.eval()
        with _Bars(progress and distributed.is_main(), description, settings.epochs, len(history), _length(train_loader)) as bars:
            for epoch in range(len(history), settings.epochs):
                record = _run_epoch(net, train_loader, optimizer, settings, epoch, seed, teacher, bars)
                distributed.broadcast_buffers(model)
                if val_batches is not None:
                    val = evaluate(model, val_batches)
                    record.val_loss, record.val_accuracy = val.loss, val.accuracy
                history.append(asdict(record))
                if checkpoint_path is not None and distributed.is_main():
                    save_training_checkpoint(checkpoint_path, model, optimizer, settings, seed, history)
                distributed.barrier()
                bars.epoch_done(record)
                if log is not None and distributed.is_main():
                    log(record.summary(settings.epochs, description))
    finally:
        model.eval()
        if teacher is not None:
            teacher.train(teacher_was_training)
    return [EpochRecord(**r) for r in history]


def _ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    # One plain parameter group: weight decay applies to every trainable tensor, as in `fit`.
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           nesterov=s.nesterov and s.momentum > 0)


def _run_epoch(model, loader, optimizer, settings, epoch, seed, teacher, bars) -> EpochRecord:
    start = time.perf_counter()
    # Everything random in epoch e (shuffle order, augmentation, dropout) follows from seed + e
    # alone, whether the run got here directly or resumed from a checkpoint.
    torch.manual_seed(seed + epoch)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed + epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # DistributedSampler: each rank's share of this epoch
        sampler.set_epoch(epoch)
    lr = settings.lr_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(model.parameters()).device
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bars.epoch_started(epoch)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        with torch.no_grad():
            teacher_logits = teacher(x) if teacher is not None else None
        loss = distillation_loss(logits, teacher_logits, y, alpha=settings.distill_alpha,
                                 temperature=settings.distill_temperature,
                                 label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        bars.batch_done(loss_sum / seen, correct / seen)
    loss_sum, correct, seen = distributed.sum_across(loss_sum, correct, seen)
    if seen == 0:
        raise LayerpruneError("train_loader: yielded no batches")
    return EpochRecord(epoch, lr, loss_sum / seen, correct / seen, None, None, time.perf_counter() - start)


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

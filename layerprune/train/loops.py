"""Plain loops: evaluate a classifier, re-estimate BatchNorm statistics, train for a few epochs.

Batches are any iterable of ``(images, labels)`` pairs: a ``DataLoader`` or a list of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    samples: int


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, progress: bool = False, description: str = "eval") -> EvalResult:
    """Mean cross-entropy and top-1 accuracy in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    loss_sum, correct, seen = 0.0, 0, 0
    if progress:
        from rich.progress import track

        total = len(batches) if hasattr(batches, "__len__") else None
        batches = track(batches, description=description, total=total, transient=True)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: no samples")
    return EvalResult(loss_sum / seen, correct / seen, seen)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def repair_batchnorm(model: nn.Module, batches: Batches) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``batches``, in place.

    After a block is removed or changed, each later layer sees inputs with other statistics;
    stale running means and variances then dominate any accuracy measured in eval mode. Only the
    BatchNorm layers run in train mode here (dropout and the like stay in eval mode), and the
    statistics are a plain average over the batches (``momentum=None``), not a running one.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return model
    was_training = model.training
    saved = [(m, m.momentum, m.training) for m in layers]
    device = _device(model)
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return model


def fit(
    model: nn.Module,
    batches: Batches,
    *,
    epochs: int = 1,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Train with SGD and a cosine schedule; ``batches`` is iterated once per epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    device = _device(model)
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
        sched.step()
    model.eval()
    return model

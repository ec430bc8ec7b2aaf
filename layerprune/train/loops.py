"""A plain training loop for a few epochs (tests and examples); evaluation and BatchNorm repair
live in :mod:`layerprune.evaluation` and are re-exported here.

Batches are any iterable of ``(images, labels)`` pairs: a ``DataLoader`` or a list of tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from layerprune.evaluation import Batches, EvalResult, evaluate, model_device, repair_batchnorm
from layerprune.tasks import IMAGE_CLASSIFICATION, Task

__all__ = ["Batches", "EvalResult", "evaluate", "fit", "repair_batchnorm"]


def fit(
    model: nn.Module,
    batches: Batches,
    *,
    epochs: int = 1,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    task: Task = IMAGE_CLASSIFICATION,
) -> nn.Module:
    """Train with SGD and a cosine schedule; ``batches`` is iterated once per epoch. ``task``
    (:mod:`layerprune.tasks`) says what a batch is and its loss (default image classification)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    device = model_device(model)
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            logits, targets, _ = task.rows(task.forward(model, x.to(device)), y.to(device))
            F.cross_entropy(logits, targets).backward()
            opt.step()
        sched.step()
    model.eval()
    return model

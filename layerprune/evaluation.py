"""Measure a classifier and re-estimate its BatchNorm statistics: what criteria, the pruner and
the training loops all need, in a room below each of them.

Batches are any iterable of ``(images, labels)`` pairs: a ``DataLoader`` or a list of tensors.
"""

from __future__ import annotations

from typing import Callable, Iterable

from layerprune.lazy import lazy_import, no_grad
from layerprune.hooks import eval_mode, model_device  # noqa: F401  (model_device: its home was here)
from layerprune.tasks import IMAGE_CLASSIFICATION, EvalResult  # noqa: F401  (EvalResult: its home was here)

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

Batches = Iterable[tuple["torch.Tensor", "torch.Tensor"]]


def evaluate(model: nn.Module, batches: Batches, *, progress: bool = False, description: str = "eval",
             until: Callable[[float, int, int], bool] | None = None) -> EvalResult | None:
    """Mean cross-entropy and top-1 accuracy in eval mode (the model's mode is restored): the image
    classification task's measurement (:meth:`layerprune.tasks.Task.evaluate`).

    ``until(loss_sum, correct, seen)``, asked after each batch, may stop the evaluation early
    (the ``greedy`` oracle's candidates that can no longer win): the result is then ``None``.
    """
    return IMAGE_CLASSIFICATION.evaluate(model, batches, progress=progress, description=description, until=until)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@no_grad
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
    saved = [(m, m.momentum, m.training) for m in layers]
    device = model_device(model)
    with eval_mode(model):
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
    return model

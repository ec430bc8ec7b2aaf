"""What a training run is asked to do, checked once, and its learning rate at every epoch.

>>> s = TrainSettings(epochs=10, lr=0.1, warmup_epochs=2)
>>> [round(s.lr_at(e), 4) for e in (0, 1, 2)]
[0.01, 0.055, 0.1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from layerprune.errors import LayerpruneError

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("32", "bf16", "fp16")
# Settings that change speed, not the result: a checkpoint written with other values resumes.
SPEED_ONLY = ("channels_last", "compile")
SCHEDULES = ("cosine", "step", "constant")
WARMUP_START = 0.1  # warm-up starts at lr * WARMUP_START


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser, learning-rate schedule and loss of one training run.

    The schedule is stepped once per epoch and is a pure function of the epoch index (see
    :meth:`lr_at`), so resuming needs no scheduler state. Invalid values raise
    :class:`LayerpruneError` listing every offending field at once.

    >>> round(TrainSettings(epochs=30, optimizer="adamw", lr=1e-3, weight_decay=0.05).lr_at(15), 6)
    0.0005
    """

    epochs: int
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only; ignored when momentum is 0 (torch refuses that combination)
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of `epochs` where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr/10, before the schedule
    label_smoothing: float = 0.0
    distill_alpha: float = 0.0  # weight of the distillation term; 0 = no distillation
    distill_temperature: float = 4.0
    precision: str = "32"  # "32" | "bf16" | "fp16": autocast for forward and loss (fp16 adds loss scaling)
    channels_last: bool = False  # NHWC memory layout for model and images (faster convs on GPUs)
    compile: bool = False  # torch.compile the training forward pass
    sync_batchnorm: bool = False  # under DDP: BatchNorm statistics over the global batch (CUDA only)

    def __post_init__(self) -> None:
        # Recipes arrive from YAML as lists; a tuple keeps the dataclass hashable and comparable.
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        problems = self.problems()
        if problems:
            raise LayerpruneError("; ".join(problems))

    def problems(self) -> list[str]:
        """One ``field: must be …, got …`` message per invalid field."""
        out: list[str] = []

        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                out.append(f"{field}: must be {rule}, got {getattr(self, field)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.epochs) and self.epochs >= 0, "epochs", "an integer ≥ 0")
        need(self.optimizer in OPTIMIZERS, "optimizer", "'sgd' or 'adamw'")
        need(is_num(self.lr) and self.lr > 0, "lr", "> 0")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(isinstance(self.nesterov, bool), "nesterov", "true or false")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "≥ 0")
        need(self.schedule in SCHEDULES, "schedule", "'cosine', 'step' or 'constant'")
        need(isinstance(self.milestones, tuple) and all(is_num(m) and 0 < m < 1 for m in self.milestones),
             "milestones", "fractions of epochs in (0, 1)")
        need(is_num(self.gamma) and 0 < self.gamma <= 1, "gamma", "in (0, 1]")
        warmup_ok = is_int(self.warmup_epochs) and self.warmup_epochs >= 0
        if warmup_ok and self.warmup_epochs > 0 and is_int(self.epochs) and self.epochs > 0:
            # A run that is all warm-up never reaches its lr: almost certainly a typo. (epochs = 0
            # skips training altogether, so any warm-up is harmless there.)
            warmup_ok = self.warmup_epochs < self.epochs
        need(warmup_ok, "warmup_epochs", f"an integer ≥ 0 and < epochs ({self.epochs})")
        need(is_num(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)")
        need(is_num(self.distill_alpha) and 0 <= self.distill_alpha <= 1, "distill_alpha", "in [0, 1]")
        need(is_num(self.distill_temperature) and self.distill_temperature > 0, "distill_temperature", "> 0")
        need(self.precision in PRECISIONS, "precision", "'32', 'bf16' or 'fp16'")
        for flag in ("channels_last", "compile", "sync_batchnorm"):
            need(isinstance(getattr(self, flag), bool), flag, "true or false")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (milestones as a list): JSON- and ``weights_only``-safe."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for full precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-based).

        With ``W = warmup_epochs``, ``E = epochs``:

        * warm-up, ``epoch < W``: ``lr * (0.1 + 0.9 * epoch / W)`` — linear from lr/10, reaching
          ``lr`` at epoch ``W``;
        * ``"constant"``: ``lr``;
        * ``"cosine"``: ``lr * (1 + cos(pi * (epoch - W) / (E - W))) / 2`` — as
          ``CosineAnnealingLR(T_max=E - W)`` stepped per epoch, so the last epoch is still > 0;
        * ``"step"``: ``lr * gamma ** n``, ``n`` = how many milestones ``m`` have
          ``epoch >= round(m * E)`` (milestones count from epoch 0, warm-up included).
        """
        w, e = self.warmup_epochs, self.epochs
        if epoch < w:
            return self.lr * (WARMUP_START + (1 - WARMUP_START) * epoch / w)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * (epoch - w) / max(e - w, 1)))
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(epoch >= round(m * e) for m in self.milestones)
        return self.lr

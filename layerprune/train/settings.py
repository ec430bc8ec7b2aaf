"""What a training run is asked to do, checked once, and its learning rate at every epoch.

:class:`TrainConfig` holds the settings a recipe's ``pretrain`` and ``finetune`` sections share (the
recipe schema uses it as it is); :class:`TrainSettings`, what :func:`layerprune.train.train` takes,
adds the distillation weights.

>>> s = TrainSettings(epochs=10, lr=0.1, warmup_epochs=2)
>>> [round(s.lr_at(e), 4) for e in (0, 1, 2)]
[0.01, 0.055, 0.1]
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from layerprune.errors import LayerpruneError
from layerprune.lazy import lazy_import

torch = lazy_import("torch")

Optimizer = Literal["sgd", "adamw"]
Precision = Literal["32", "bf16", "fp16"]
Schedule = Literal["cosine", "step", "constant"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Settings that change speed, not the result: a checkpoint written with other values resumes.
SPEED_ONLY = ("channels_last", "compile")
SCHEDULES: tuple[str, ...] = get_args(Schedule)
WARMUP_START = 0.1
NUMBERS = (int, float, Optional[int], Optional[float])  # warm-up starts at lr * WARMUP_START


class _Invalid(ValueError):
    """A check across fields that names the field it blames (the recipe loader reads ``str()``,
    :class:`TrainSettings` the parts)."""

    def __init__(self, field: str, rule: str, value: Any) -> None:
        super().__init__(f"{field}: {rule}, got {value}")
        self.field, self.rule, self.value = field, rule, value


class TrainConfig(BaseModel):
    """An SGD/AdamW schedule (pretraining).

    The settings shared by a recipe's ``pretrain`` and ``finetune`` sections and by
    :class:`TrainSettings`, defined once: the recipe schema uses this model as its ``pretrain``
    section, and ``docs/recipes.md`` prints these fields and descriptions.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    epochs: int = Field(ge=0, description="epochs (0 skips the stage)")
    optimizer: Optimizer = Field("sgd", description="sgd (with momentum) or adamw")
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    schedule: Schedule = Field("cosine", description="learning-rate schedule, stepped per epoch")
    milestones: tuple[float, ...] = Field((0.5, 0.75),
                                          description="step schedule: fractions of the epochs where lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: lr factor at each milestone")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")
    batches_per_epoch: Optional[int] = Field(None, gt=0, description="end each epoch after this many batches, a "
                                             "fresh random part of the training split each epoch (default: all of it)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")
    precision: Precision = Field("32", description="32: full precision; bf16/fp16: mixed precision (autocast; fp16 with loss scaling)")
    channels_last: bool = Field(False, description="NHWC memory layout for model and images (faster convolutions on GPUs)")
    compile: bool = Field(False, description="torch.compile the training step (pays off on long GPU runs)")
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over the global batch (CUDA only)")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode would read true as 1
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation in NUMBERS:
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("milestones")
    @classmethod
    def _milestones_are_fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in value):
            raise ValueError("each must be a fraction in (0, 1)")
        return value

    @model_validator(mode="after")
    def _warmup_before_the_end(self) -> TrainConfig:
        # A run that is all warm-up never reaches its lr: almost certainly a typo. (epochs = 0
        # skips training altogether, so any warm-up is harmless there.)
        if self.epochs > 0 and self.warmup_epochs >= self.epochs:
            raise _Invalid("warmup_epochs", f"must be < epochs ({self.epochs})", self.warmup_epochs)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (milestones as a list): JSON- and ``weights_only``-safe."""
        return self.model_dump(mode="json")

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


class TrainSettings(TrainConfig):
    """Optimiser, learning-rate schedule and loss of one training run: a :class:`TrainConfig`
    plus distillation, immutable.

    The schedule is stepped once per epoch and is a pure function of the epoch index (see
    :meth:`lr_at`), so resuming needs no scheduler state. Invalid values raise
    :class:`LayerpruneError` listing every offending field at once (``field: message (got VALUE)``).

    >>> round(TrainSettings(epochs=30, optimizer="adamw", lr=1e-3, weight_decay=0.05).lr_at(15), 6)
    0.0005
    """

    model_config = ConfigDict(frozen=True)

    distill_alpha: float = Field(0.0, ge=0, le=1, description="weight of the distillation term; 0 = no distillation")
    distill_temperature: float = Field(4.0, gt=0, description="softmax temperature of the distillation term")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise LayerpruneError("; ".join(_problems(type(self), values, exc))) from None

    @classmethod
    def from_config(cls, config: TrainConfig, *, epochs: int | None = None, distill_alpha: float = 0.0,
                    distill_temperature: float = 4.0) -> TrainSettings:
        """The settings of a recipe section (fields a section adds, such as ``finetune.distill``,
        are not copied), with ``epochs`` replaced when given."""
        values: dict[str, Any] = {name: getattr(config, name) for name in TrainConfig.model_fields}
        if epochs is not None:
            values["epochs"] = epochs
        return cls(**values, distill_alpha=distill_alpha, distill_temperature=distill_temperature)


def _problems(cls: type[TrainConfig], values: dict[str, Any], exc: ValidationError) -> list[str]:
    """One ``field: message (got VALUE)`` per problem, in field order."""
    errors = exc.errors()
    failed = {e["loc"][0] for e in errors if e["loc"]}
    if failed and "epochs" not in failed:
        # Checks across fields (all TrainConfig's) run only once every field is valid: run them on
        # the valid rest too.
        try:
            TrainConfig.model_validate({k: v for k, v in values.items()
                                        if k not in failed and k in TrainConfig.model_fields})
        except ValidationError as again:
            errors += [e for e in again.errors() if not e["loc"]]
    order = list(cls.model_fields)
    problems: list[tuple[int, str]] = []
    for e in errors:
        error = (e.get("ctx") or {}).get("error")
        if not e["loc"] and isinstance(error, _Invalid):
            field, message, value = error.field, error.rule, error.value
        elif not e["loc"]:
            problems.append((-1, e["msg"].removeprefix("Value error, ")))
            continue
        else:
            field, message, value = ".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "), e["input"]
        if e["type"] == "missing":
            text = f"{field}: required"
        elif e["type"] == "extra_forbidden":
            text = f"{field}: unknown setting (got {value!r})"
        else:
            text = f"{field}: {message} (got {value!r})"
        name = field.split(".")[0]
        problems.append((order.index(name) if name in order else len(order), text))
    return [text for _, text in sorted(problems, key=lambda p: p[0])]

"""Training checkpoints: written atomically after every epoch, read back to resume a run exactly.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` reads (no code runs):

``format``        ``"layerprune.train/1"``
``state_dict``    the model's weights and buffers (so :func:`layerprune.load_checkpoint` reads it too)
``optimizer``     the optimiser's state dict (momentum buffers, Adam moments, step counts)
``epochs_done``   how many epochs are finished; the run continues at this (0-based) epoch
``history``       one dict per finished epoch (the fields of ``EpochRecord``)
``settings``      ``TrainSettings.to_dict()`` of the run that wrote it
``seed``          the run's seed
``scaler``        the fp16 loss scaler's state (``precision: fp16`` only)

There is no scheduler state: the learning rate is a pure function of the epoch
(``TrainSettings.lr_at``), and the random state of epoch ``e`` is re-seeded from ``seed + e``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from layerprune.errors import CheckpointError, first_line
from layerprune.io import save_torch
from layerprune.models.checkpoint import read_checkpoint
from layerprune.train.settings import SPEED_ONLY, TrainSettings

FORMAT = "layerprune.train/1"
_MISSING = "<missing>"


def save_training_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    seed: int,
    history: list[dict[str, Any]],
    scaler: "torch.amp.GradScaler | None" = None,
) -> None:
    """Write the run's state after ``len(history)`` epochs; readers never see a partial file."""
    state = {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epochs_done": len(history),
        "history": history,
        "settings": settings.to_dict(),
        "seed": seed,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    save_torch(state, path)


def load_training_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    seed: int,
    scaler: "torch.amp.GradScaler | None" = None,
) -> list[dict[str, Any]]:
    """Restore ``model``, ``optimizer`` (and ``scaler``) from ``path`` in place; return the history.

    Refuses a checkpoint written with other settings or another seed: continuing it would give a
    model that neither run describes.
    """
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint written by layerprune.train "
                              f"(expected format {FORMAT!r}); delete it or choose another checkpoint path")
    _check_same_run(path, state, settings, seed)
    try:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = first_line(exc)
        raise CheckpointError(f"{path} does not fit this model or optimizer: {first}") from exc
    history = list(state["history"])
    if state["epochs_done"] != len(history):
        raise CheckpointError(f"{path}: epochs_done is {state['epochs_done']} but the history has "
                              f"{len(history)} epochs")
    return history


def _check_same_run(path: str | Path, state: dict[str, Any], settings: TrainSettings, seed: int) -> None:
    stored = dict(state.get("settings") or {}, seed=state.get("seed", _MISSING))
    wanted = dict(settings.to_dict(), seed=seed)
    for name, f in TrainSettings.model_fields.items():  # fields added later: older checkpoints used the default
        if name not in stored and not f.is_required():
            default = f.get_default(call_default_factory=True)
            stored[name] = list(default) if isinstance(default, tuple) else default  # as to_dict() writes it
    for key in SPEED_ONLY:  # the same run, only faster or slower
        stored.pop(key, None)
        wanted.pop(key, None)
    for field in [*wanted, *(k for k in stored if k not in wanted)]:  # first difference, in field order
        old, new = stored.get(field, _MISSING), wanted.get(field, _MISSING)
        if old != new:
            raise CheckpointError(
                f"{path}: written with other settings — {field}: {old!r} in the checkpoint, {new!r} now; "
                "resuming would mix two runs (use the same settings, or delete the checkpoint to start over)"
            )

"""Load model weights from the checkpoint formats people actually have."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from layerprune.errors import CheckpointError

# Keys under which training scripts nest the model's state dict, most specific first.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
# Prefixes added by wrappers: DataParallel/DDP ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # how many offending keys an error lists


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict or of ``{"state_dict": ..., "epoch": ...}``-style wrappers,
    with wrapper prefixes (``module.``, ``_orig_mod.``) removed."""
    state = obj
    if not _is_state_dict(state) and isinstance(state, Mapping):
        for key in _NESTED_KEYS:
            if _is_state_dict(state.get(key)):
                state = state[key]
                break
    if not _is_state_dict(state):
        found = sorted(map(str, obj.keys()))[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{source}: no state dict found (looked for tensors at the top level and under "
            f"{', '.join(_NESTED_KEYS)}; found {found})"
        )
    cleaned = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def read_checkpoint(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True`` (no code runs), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only also reads the legacy (pre-1.6, non-zip) format of older releases.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle non-tensor objects with weights_only=True ({first}); "
            "re-save the checkpoint as a plain state dict"
        ) from exc
    except Exception as exc:  # truncated files, not a torch file at all, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place) and return the model.

    Accepts a bare state dict, ``{"state_dict": ..., "epoch": ..., "best_prec1": ...}``,
    ``module.``-prefixed keys (DataParallel/DDP) and files saved by older PyTorch releases.

    >>> model = load_checkpoint(timm.create_model("cifar_resnet56"), "resnet56.th")  # doctest: +SKIP
    """
    return load_state(model, extract_state_dict(read_checkpoint(path), source=str(path)), source=str(path),
                      strict=strict)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, strict: bool = True) -> nn.Module:
    """Load a state dict into ``model`` (in place) after checking its keys and shapes; the
    error names ``source`` and the offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(_listing("shape mismatch", mismatched))
    if strict and missing:
        problems.append(_listing("missing", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected", unexpected))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    return model


def _listing(what: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}{more}"

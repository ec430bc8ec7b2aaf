"""Load model weights from the checkpoint formats people actually have."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from layerprune.errors import CheckpointError, LayerpruneError, first_line

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


# torch.save's legacy (pre-1.6) format opens with its magic number, pickled with protocol 2.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
_FORMATS = "neither the zip archive torch.save writes, nor its legacy format, nor safetensors"


def read_checkpoint(path: str | Path) -> object:
    """The object in a checkpoint file, read without running code (``torch.load`` with
    ``weights_only=True``, or safetensors), with one-line errors that say what the file is when
    it is not a checkpoint: empty, text, damaged or truncated, or holding pickled objects.

    ``path`` may be an ``http(s)://`` URL: fetched once into torch hub's cache and verified
    (:func:`layerprune.models.remote.fetch`)."""
    from layerprune.models.remote import local_checkpoint

    path = local_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(4096)
    if not head:
        raise CheckpointError(f"{path}: an empty file, not a PyTorch checkpoint")
    if _is_safetensors(path, head):
        return read_safetensors(path)
    if head.startswith(_ZIP_MAGIC):
        _check_zip(path)
    elif not head.startswith(_LEGACY_MAGIC):
        raise CheckpointError(f"{path}: {_describe(head)}, not a PyTorch checkpoint ({_FORMATS})")
    try:
        # weights_only also reads the legacy (pre-1.6, non-zip) format of older releases.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: holds pickled Python objects{what} besides tensors, which are not loaded because "
            "unpickling can run code; if you trust the file, re-save its weights as a plain state dict "
            "(torch.save(model.state_dict(), PATH))") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in many ways inside torch.load
        first = first_line(exc)
        raise CheckpointError(f"{path}: a damaged or truncated PyTorch checkpoint ({type(exc).__name__}: "
                              f"{first}); was the download or copy interrupted?") from None


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: a damaged or truncated zip archive ({exc}), not a readable PyTorch "
                              "checkpoint; was the download or copy interrupted?") from None
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path}: a zip archive without data.pkl, not a PyTorch checkpoint "
                              f"(it holds {', '.join(names[:_SHOW]) or 'nothing'})")


def _is_safetensors(path: Path, head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read_safetensors(path: Path, error: type[LayerpruneError] = CheckpointError,
                     what: str = "a damaged safetensors file") -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file; ``error`` (one line: the path, ``what``, the reason)
    when it cannot be read. The one safetensors reader: checkpoints and pruned-model folders."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path}: {what} ({exc})") from None


def _describe(head: bytes) -> str:
    """What a file that is not a checkpoint looks like, from its first bytes."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[:exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\n\r\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starting {first!r})" if first else "a text file"
    return f"a binary file (starting {head[:8].hex(' ')})"


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place) and return the model.

    Accepts a bare state dict, ``{"state_dict": ..., "epoch": ..., "best_prec1": ...}``,
    ``module.``-prefixed keys (DataParallel/DDP) and files saved by older PyTorch releases;
    ``path`` may be an ``http(s)://`` URL (downloaded once into torch hub's cache, verified).

    >>> model = load_checkpoint(timm.create_model("cifar_resnet56"), "resnet56.th")  # doctest: +SKIP
    """
    return load_state(model, extract_state_dict(read_checkpoint(path), source=str(path)), source=str(path),
                      strict=strict)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, strict: bool = True) -> nn.Module:
    """Load a state dict into ``model`` (in place) after checking its keys and shapes; the
    error names ``source`` and the offending keys, and leaves the model as it was.

    Keys are judged as PyTorch judges them: what its modules fill in for state dicts of older
    releases (BatchNorm's ``num_batches_tracked``, weight norm's ``weight_g``/``weight_v``) is
    not missing.
    """
    own = model.state_dict()
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {_listing('shape mismatch', mismatched)}")
    state = dict(state)  # no ``_metadata``: every module reads it as a state dict of its oldest version
    if set(own) == set(state) or not strict:
        model.load_state_dict(state, strict=strict)
        return model
    backup = {k: v.detach().clone() for k, v in own.items()}  # the keys differ: PyTorch may still fill them
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes met only after an upgrade hook renamed keys
        model.load_state_dict(backup)
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {first}") from None
    problems = []
    if result.missing_keys:
        problems.append(_listing("missing", list(result.missing_keys)))
    if result.unexpected_keys:
        problems.append(_listing("unexpected", list(result.unexpected_keys)))
    if problems:
        model.load_state_dict(backup)
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    return model


def _listing(what: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}{more}"

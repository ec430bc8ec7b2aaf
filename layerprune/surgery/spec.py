"""Pruned-model folders: "timm model + kwargs + edits" as JSON beside safetensors weights.

A pruned model is rebuilt from ``timm.create_model(architecture, **model_args)``, its block edits,
its channel edits (Torch-Pruning's pruning history, when channels were pruned) and a state dict —
no pickle anywhere. A folder holds, in the layout the Hugging Face / timm ecosystem uses:

- ``config.json``: ``architecture``, ``model_args``, ``pretrained_cfg.input_size`` and, under
  ``layerprune``, the edits (``removed``, ``collapsed``, ``stand_ins`` where a removed block
  passed a tuple on, ``channels``), versions and format;
- ``model.safetensors``: the weights;
- ``README.md``: a model card (what was removed, params, MACs, and what the run measured).

Folders of format 1 (``spec.json`` + ``weights.pth``) still load.

>>> spec = PruneSpec.for_model(pruned, "cifar_resnet56", input_size=(3, 32, 32))   # doctest: +SKIP
>>> save_pruned(pruned, spec, "runs/r56-pruned")                                    # doctest: +SKIP
>>> model = load_pruned("runs/r56-pruned")                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import model_device
from layerprune.io import atomic_dir, write_json, write_text
from layerprune.surgery.edit import EDITS_ATTR, apply_edits

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
# Torch-Pruning's pruning history of a channel-pruned model: [[module, out_channels?, [indices]], ...]
CHANNELS_ATTR = "_layerprune_channels"
OLD_SPEC_FILE, OLD_WEIGHTS_FILE = "spec.json", "weights.pth"  # format 1, still read
FORMAT_VERSION = 2


def _versions() -> dict[str, str]:
    import timm
    import torch_pruning

    from layerprune.version import __version__

    return {"layerprune": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "torch_pruning": torch_pruning.__version__}


@dataclass
class PruneSpec:
    """What was removed from which model."""

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    collapsed: dict[str, list[str]] = field(default_factory=dict)
    # removed blocks not replaced by a pass-through of their first argument: block → "tuple:N"
    # (it passed N arguments on) or "zeros" (a residual branch, level="sublayer")
    stand_ins: dict[str, str] = field(default_factory=dict)
    channels: list[list[Any]] = field(default_factory=list)
    input_size: list[int] | None = None
    versions: dict[str, str] = field(default_factory=_versions)
    format: int = FORMAT_VERSION

    @classmethod
    def for_model(cls, pruned: nn.Module, model: str, model_kwargs: dict[str, Any] | None = None,
                  input_size: list[int] | tuple[int, ...] | None = None) -> "PruneSpec":
        """The spec of a model returned by :func:`remove_blocks` (which records its edits), and
        of its channels where they were pruned afterwards (the recorded pruning history)."""
        edits = getattr(pruned, EDITS_ATTR, None)
        channels = getattr(pruned, CHANNELS_ATTR, None)
        if edits is None and channels is None:
            raise SurgeryError("this model was not pruned by layerprune (no edits recorded)")
        edits = edits or {}
        return cls(
            model=model, model_kwargs=dict(model_kwargs or {}),
            removed=[n for n, c in edits.items() if not c or isinstance(c, str)],
            collapsed={n: list(c) for n, c in edits.items() if c and not isinstance(c, str)},
            stand_ins={n: c for n, c in edits.items() if c and isinstance(c, str)},
            channels=[[str(n), bool(out), [int(i) for i in idx]] for n, out, idx in channels or []],
            input_size=list(input_size) if input_size else None,
        )

    @property
    def edits(self) -> dict[str, tuple[str, ...] | str]:
        return {**{n: () for n in self.removed}, **{n: tuple(c) for n, c in self.collapsed.items()},
                **dict(self.stand_ins)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "PruneSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SurgeryError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        if "model" not in data:
            raise SurgeryError(f"{source}: missing key 'model'")
        if data.get("format", FORMAT_VERSION) > FORMAT_VERSION:
            raise SurgeryError(f"{source}: format {data['format']} is newer than this layerprune reads ({FORMAT_VERSION})")
        return cls(**data)

    def to_config(self) -> dict[str, Any]:
        """``config.json``: timm's names at the top level, the edits under ``layerprune``."""
        return {"architecture": self.model, "model_args": self.model_kwargs,
                "pretrained_cfg": {"input_size": self.input_size},
                "layerprune": {"format": self.format, "removed": self.removed, "collapsed": self.collapsed,
                               **({"stand_ins": self.stand_ins} if self.stand_ins else {}), "channels": self.channels, "versions": self.versions}}

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "config.json") -> "PruneSpec":
        if not isinstance(data, dict) or "architecture" not in data:
            raise SurgeryError(f"{source}: missing key 'architecture'")
        edits = data.get("layerprune")
        if not isinstance(edits, dict):
            raise SurgeryError(f"{source}: missing key 'layerprune' (this folder was not written by layerprune)")
        return cls.from_dict({"model": data["architecture"], "model_kwargs": data.get("model_args") or {},
                              "input_size": (data.get("pretrained_cfg") or {}).get("input_size"), **edits},
                             source=source)

    def save(self, path: str | Path) -> None:
        """``config.json`` (a path ending in ``spec.json`` gets the format-1 layout)."""
        write_json(path, self.to_dict() if Path(path).name == OLD_SPEC_FILE else self.to_config())

    @classmethod
    def load(cls, path: str | Path) -> "PruneSpec":
        """From a pruned-model folder (``config.json``, or a format-1 ``spec.json``) or either file."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE if (path / CONFIG_FILE).is_file() or not (path / OLD_SPEC_FILE).is_file() \
                else path / OLD_SPEC_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SurgeryError(f"prune spec not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise SurgeryError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict) and "architecture" not in data and "model" in data:  # a format-1 spec
            return cls.from_dict(data, source=str(path))
        return cls.from_config(data, source=str(path))


def is_pruned_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a pruned model (``config.json``, or a format-1 ``spec.json``)."""
    return (Path(path) / CONFIG_FILE).is_file() or (Path(path) / OLD_SPEC_FILE).is_file()


def apply_spec(model: nn.Module, spec: PruneSpec) -> nn.Module:
    """Apply the spec's removals, collapses and channel edits to ``model`` in place (structure
    only) and return it."""
    apply_edits(model, spec.edits)
    if spec.channels:
        apply_channels(model, spec.channels, spec.input_size)
    return model


def apply_channels(model: nn.Module, history: list[list[Any]], input_size: list[int] | None) -> nn.Module:
    """Redo a Torch-Pruning pruning history on ``model`` (in place): the same channels go."""
    import torch_pruning as tp

    if not input_size:
        raise SurgeryError("the spec prunes channels but records no input_size to trace the model with")
    was_training = model.training
    example = torch.randn(1, *input_size, device=model_device(model))
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    try:
        graph.load_pruning_history([(name, bool(out), list(idx)) for name, out, idx in history])
    except (AttributeError, IndexError, KeyError) as exc:
        raise SurgeryError(f"the channel edits do not fit this {type(model).__name__}: {exc}") from exc
    setattr(model, CHANNELS_ATTR, [list(h) for h in history])
    return model.train(was_training)


def save_pruned(model: nn.Module, spec: PruneSpec, directory: str | Path, *,
                card: dict[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the ``README.md`` model card to
    ``directory`` atomically (all or nothing). ``card`` adds what the caller measured (see
    :func:`~layerprune.surgery.card.model_card`); without it the card holds the architecture,
    the edits, params and MACs."""
    from safetensors.torch import save_model

    from layerprune.surgery.card import model_card

    directory = Path(directory)
    if spec.input_size is None:
        from layerprune.surgery.find import default_input

        # timm's pretrained_cfg keeps the default size; the keywords in_chans and img_size change it
        size = list(default_input(model).shape[1:])
        kwargs = spec.model_kwargs
        if kwargs.get("in_chans"):
            size[0] = int(kwargs["in_chans"])
        if kwargs.get("img_size") and len(size) == 3:
            img = kwargs["img_size"]
            size[1:] = [int(img), int(img)] if isinstance(img, (int, float)) else [int(v) for v in img]
        spec = PruneSpec(**{**asdict(spec), "input_size": size})
    text = model_card(model, spec, card or {})
    with atomic_dir(directory) as tmp:
        spec.save(tmp / CONFIG_FILE)
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"}, force_contiguous=True)
        write_text(tmp / CARD_FILE, text)
    return directory


def load_pruned(directory: str | Path) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned` (or a format-1 folder): timm model +
    edits + weights, in eval mode; a transformers folder (``save_pretrained``) loads through
    transformers itself."""
    from layerprune.models import create_model, load_checkpoint
    from layerprune.models.checkpoint import load_state

    directory = Path(directory)
    from layerprune.surgery import hf

    if hf.is_hf_folder(directory):  # a transformers model's own folder (save_pretrained)
        from layerprune.models.hf import load_hf_model
        from layerprune.surgery.hf_sublayers import STAND_INS_FILE, apply_stand_ins

        if not (directory / STAND_INS_FILE).is_file():
            return load_hf_model(str(directory))
        model, missing = load_hf_model(str(directory), expect_missing=True)  # removed sub-layers
        return apply_stand_ins(model, directory, missing)
    spec = PruneSpec.load(directory)
    model = apply_spec(create_model(spec.model, **spec.model_kwargs), spec)
    if (directory / WEIGHTS_FILE).is_file() or not (directory / OLD_WEIGHTS_FILE).is_file():
        load_state(model, read_weights(directory / WEIGHTS_FILE, model), source=str(directory / WEIGHTS_FILE))
    else:
        load_checkpoint(model, directory / OLD_WEIGHTS_FILE)
    return model.eval()


def read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, with tensors that ``save_model`` stored once (tied weights)
    filled in under every name the model uses for them."""
    from layerprune.models.checkpoint import read_safetensors

    if not path.is_file():
        raise SurgeryError(f"weights not found: {path}")
    state = read_safetensors(path, SurgeryError, "not a readable safetensors file")
    own = model.state_dict()
    by_storage: dict[int, str] = {}
    for name, tensor in own.items():
        by_storage.setdefault(tensor.data_ptr(), name)
    for name, tensor in own.items():
        first = by_storage[tensor.data_ptr()]
        if name not in state and first in state and tensor.numel():
            state[name] = state[first]
    return state

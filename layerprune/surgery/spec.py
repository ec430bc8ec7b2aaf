"""Prune specs: a pruned model as "timm model + kwargs + edits", saved as JSON beside its weights.

A pruned model is rebuilt from ``timm.create_model(spec.model, **spec.model_kwargs)``, the edits
and a state dict — no pickled code. A saved folder holds ``spec.json`` and ``weights.pth``.

>>> spec = PruneSpec.for_model(pruned, "cifar_resnet56")          # doctest: +SKIP
>>> save_pruned(pruned, spec, "runs/r56-pruned")                   # doctest: +SKIP
>>> model = load_pruned("runs/r56-pruned")                         # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.io import atomic_dir, write_json
from layerprune.surgery.edit import EDITS_ATTR, apply_edits

SPEC_FILE, WEIGHTS_FILE = "spec.json", "weights.pth"
FORMAT_VERSION = 1


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
    input_size: list[int] | None = None
    versions: dict[str, str] = field(default_factory=_versions)
    format: int = FORMAT_VERSION

    @classmethod
    def for_model(cls, pruned: nn.Module, model: str, model_kwargs: dict[str, Any] | None = None,
                  input_size: list[int] | tuple[int, ...] | None = None) -> "PruneSpec":
        """The spec of a model returned by :func:`remove_blocks` (which records its edits)."""
        edits = getattr(pruned, EDITS_ATTR, None)
        if edits is None:
            raise SurgeryError("this model was not pruned by layerprune.remove_blocks (no edits recorded)")
        return cls(
            model=model, model_kwargs=dict(model_kwargs or {}),
            removed=[n for n, c in edits.items() if not c],
            collapsed={n: list(c) for n, c in edits.items() if c},
            input_size=list(input_size) if input_size else None,
        )

    @property
    def edits(self) -> dict[str, tuple[str, ...]]:
        return {**{n: () for n in self.removed}, **{n: tuple(c) for n, c in self.collapsed.items()}}

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

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PruneSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SurgeryError(f"prune spec not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise SurgeryError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))


def apply_spec(model: nn.Module, spec: PruneSpec) -> nn.Module:
    """Apply the spec's removals and collapses to ``model`` in place (structure only) and return it."""
    return apply_edits(model, spec.edits)


def save_pruned(model: nn.Module, spec: PruneSpec, directory: str | Path) -> Path:
    """Write ``spec.json`` and ``weights.pth`` to ``directory`` atomically (all or nothing)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        spec.save(tmp / SPEC_FILE)
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
    return directory


def load_pruned(directory: str | Path) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned`: timm model + spec + weights."""
    from layerprune.models import create_model, load_checkpoint

    directory = Path(directory)
    spec = PruneSpec.load(directory / SPEC_FILE)
    model = apply_spec(create_model(spec.model, **spec.model_kwargs), spec)
    load_checkpoint(model, directory / WEIGHTS_FILE)
    return model.eval()

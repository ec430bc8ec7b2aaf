"""The ``README.md`` model card of a pruned-model folder: what the model is, what was cut, and
what was measured (as the Hugging Face hub renders it: YAML front matter, then markdown)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

if TYPE_CHECKING:
    from layerprune.surgery.spec import PruneSpec

# What a caller may know beyond the model itself (every key optional):
#   dataset, criterion, selection (e.g. "budget macs 0.5"), command, metric (e.g. "test accuracy"),
#   base / pruned: {"params", "macs", "accuracy", "latency_ms"}, latency (how it was measured).
CARD_KEYS = ("dataset", "criterion", "selection", "command", "metric", "base", "pruned", "latency")


def _num(x: float | int | None, unit: str = "") -> str:
    if x is None:
        return ""
    if unit == "%":
        return f"{100 * x:.2f}%"
    if unit == "ms":
        return f"{x:.2f} ms"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x:,}"


def model_card(model: nn.Module, spec: "PruneSpec", info: dict[str, Any]) -> str:
    """The card's text: the pruned model's own params and MACs (measured here at
    ``spec.input_size``), the edits, and whatever ``info`` adds."""
    import torch

    from layerprune.hooks import model_device
    from layerprune.surgery.cost import model_cost

    unknown = sorted(set(info) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"model card: unknown key {unknown[0]!r} (known: {', '.join(CARD_KEYS)})")
    x = torch.zeros(1, *spec.input_size, device=model_device(model))
    was_training = model.training
    cost = model_cost(model.eval(), x)
    model.train(was_training)
    pruned = {"params": cost.params, "macs": cost.macs, **(info.get("pruned") or {})}
    base = info.get("base") or {}
    removed = spec.removed + list(spec.collapsed)
    tags = ["image-classification", "timm", "layerprune", "pruned"]
    lines = ["---", "library_name: timm", "tags:"] + [f"- {t}" for t in tags]
    if info.get("dataset"):
        lines += ["datasets:", f"- {info['dataset']}"]
    lines += ["---", "", f"# {spec.model}, pruned by layerprune", ""]
    what = f"{len(removed)} block{'s' * (len(removed) != 1)} removed"
    if spec.channels:
        what += f" and channels pruned in {len({n for n, _, _ in spec.channels})} layers"
    lines += [f"`{spec.model}` (timm) with {what}"
              + (f", chosen by the `{info['criterion']}` criterion" if info.get("criterion") else "")
              + (f" ({info['selection']})" if info.get("selection") else "")
              + (f", on {info['dataset']}" if info.get("dataset") else "") + ".", ""]
    rows = [("parameters", "params", ""), ("MACs per sample", "macs", ""),
            (info.get("metric") or "accuracy", "accuracy", "%"), ("latency", "latency_ms", "ms")]
    lines += ["| | base | pruned |", "|---|---:|---:|"]
    for label, key, unit in rows:
        if key in pruned or key in base:
            lines.append(f"| {label} | {_num(base.get(key), unit)} | {_num(pruned.get(key), unit)} |")
    lines.append("")
    if info.get("latency"):
        lines += [f"Latency: {info['latency']}.", ""]
    lines += [f"Input size: {' × '.join(map(str, spec.input_size))}. Model arguments: "
              f"`{spec.model_kwargs or {}}`.", ""]
    if removed:
        lines += ["Removed blocks: " + ", ".join(f"`{n}`" for n in spec.removed)
                  + ("" if not spec.collapsed else "; collapsed to their shortcut: "
                     + ", ".join(f"`{n}`" for n in spec.collapsed)), ""]
    if info.get("command"):
        lines += ["Made by:", "", "```sh", info["command"], "```", ""]
    lines += ["## Use", "", "```python", "import layerprune", "", 'model = layerprune.load_pruned("PATH/TO/THIS/FOLDER")',
              "```", "",
              "`config.json` names the timm architecture, its arguments and the edits; `model.safetensors` "
              "holds the weights (no pickle). Versions: "
              + ", ".join(f"{k} {v}" for k, v in spec.versions.items()) + ".", ""]
    return "\n".join(lines)

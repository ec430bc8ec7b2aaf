"""Low-rank adapters (LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR
2022) for healing a pruned transformers model, through ``peft``: the adapters are trained while
the weights stay frozen, then merged into the weights, so the saved model is a plain one (no
adapter weights; it loads without ``peft`` or layerprune).

A recipe puts them, by default, on every linear layer inside the model's layer list
(:func:`layerprune.surgery.hf.linear_layers`): the attention and MLP projections of the layers
pruning kept (``q_proj`` … ``down_proj`` of a Llama, ``c_attn`` … ``c_proj`` of a GPT-2).

>>> model = add_lora(pruned, linear_layers(pruned), r=8, alpha=16)   # doctest: +SKIP
>>> train(model, ...)                          # doctest: +SKIP
>>> model = merge_lora(model)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

from layerprune.errors import LayerpruneError, MissingExtraError, first_line
from layerprune.lazy import lazy_import

nn = lazy_import("torch.nn")

EXTRA = "LoRA needs peft, in the optional extra [hf]: pip install 'layerprune[hf]'"


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingExtraError(EXTRA) from None
    return peft


def add_lora(model: nn.Module, targets: Sequence[str], *, r: int = 8, alpha: float = 16,
             dropout: float = 0.0) -> nn.Module:
    """``model`` with LoRA adapters of rank ``r`` (scale ``alpha / r``) on ``targets`` (module
    names or name suffixes; :func:`layerprune.surgery.hf.linear_layers` lists a transformers
    model's kept layers' projections), every other weight frozen."""
    peft = _peft()
    chosen = list(targets)
    if not chosen:
        raise LayerpruneError(f"finetune.lora.targets: no module of {type(model).__name__} to put adapters on")
    conv1d = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(chosen))
    config = peft.LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen, bias="none",
                             fan_in_fan_out=conv1d)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target name that matches no module
        raise LayerpruneError(f"finetune.lora.targets: {first_line(exc)}") from None


def is_lora(model: Any) -> bool:
    """Whether ``model`` carries LoRA adapters (a ``peft`` model)."""
    return type(model).__module__.startswith("peft.") or hasattr(model, "merge_and_unload")


def merge_lora(model: nn.Module) -> nn.Module:
    """The model with its adapters merged into the weights and the ``peft`` wrapping removed."""
    return model.merge_and_unload() if is_lora(model) else model


__all__ = ["add_lora", "is_lora", "merge_lora"]

"""The attention and MLP sub-layers of a transformers model's layers (``level="sublayer"``).

A pre-norm layer computes ``h = h + attn(norm(h))`` and then ``h = h + mlp(norm(h))`` (or both
from the same ``h``, side by side): each sub-layer is a residual branch. Dropping one (He et al.,
"What Matters in Transformers? Not All Attention Is Needed", 2024) means the branch adds nothing,
so the sub-layer is replaced by :class:`ZeroBranch`: zeros where its output went, its weights and
compute gone. The sub-layers offered are a layer's direct children named or classed as attention
(``self_attn``, ``attention``, ``attn``) and MLP (``mlp``, ``feed_forward``, ``ffn``, mixtures of
experts), and only where they really are residual branches: with all of them returning zeros the
layer must return its input exactly (checked in one forward pass). A post-norm layer (BERT's
``LayerNorm(h + attn(h))``) is not, and is offered whole.

A removed attention sub-layer still tells the KV cache that the tokens went by (it stores one
number per token, where the attention stored keys and values of every head): the cache's length is
read from a layer's entry (the first layer's, for positions during ``generate``), which must count
every token even where the attention is gone.

A stock configuration cannot say that a layer has no attention, so a model with removed sub-layers
is saved with its own ``save_pretrained`` plus ``layerprune.json`` naming the stand-ins, and loads
through :func:`layerprune.load_pruned` (its model card says so).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import eval_mode, forward_hooks
from layerprune.surgery.hf_config import INDEX_ATTRS

STAND_INS_FILE = "layerprune.json"
ATTENTION_NAMES = ("self_attn", "self_attention", "attention", "attn")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
ATTENTION_CLASSES = ("attention",)
MLP_CLASSES = ("mlp", "feedforward", "moe", "ffn", "experts")
NOT_ATTENTION = ("linear", "mamba", "deltanet", "recurrent", "cross")
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


class ZeroBranch(nn.Module):
    """What a removed attention or MLP sub-layer becomes: zeros of its input's shape (so the layer
    adds nothing there), in the structure the sub-layer answered with (a tensor, or a tuple whose
    other entries are ``None``). A removed attention keeps the KV cache's count of tokens for its
    layer (``layer_idx``), storing one number per token."""

    stands_in = True  # for a removed sub-layer (what a rebuild from the configuration does not see)

    def __init__(self, kind: str, outputs: int = 0, layer_idx: int | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.outputs = int(outputs)
        if layer_idx is not None:
            self.layer_idx = int(layer_idx)

    def forward(self, *args: Any, **kwargs: Any):  # noqa: D102
        hidden = hidden_input(args, kwargs)
        if self.kind == "attention" and hasattr(self, "layer_idx"):
            cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
            layers = getattr(cache, "layers", None)
            entry = layers[self.layer_idx] if isinstance(layers, list) and self.layer_idx < len(layers) else cache
            if cache is not None and hasattr(cache, "update") and hasattr(entry, "update"):
                token = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
                cache.update(token, token, self.layer_idx)
        zeros = torch.zeros_like(hidden)
        return zeros if not self.outputs else (zeros, *([None] * (self.outputs - 1)))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, outputs={self.outputs}" + (f", layer_idx={self.layer_idx}"
                                                                 if hasattr(self, "layer_idx") else "")


def _kind(name: str, module: nn.Module) -> str | None:
    cls = type(module).__name__.lower()
    if isinstance(module, ZeroBranch):
        return module.kind
    if any(word in cls for word in NOT_ATTENTION) or any(word in name for word in NOT_ATTENTION):
        return None
    if name in ATTENTION_NAMES or any(word in cls for word in ATTENTION_CLASSES):
        return "attention"
    if name in MLP_NAMES or any(word in cls for word in MLP_CLASSES):
        return "mlp"
    return None


def branches(layer: nn.Module) -> dict[str, str]:
    """The layer's direct children that are attention or MLP (by name or class), ``{name: kind}``;
    at most one of each kind, else none (the layer's shape is not the one handled)."""
    found = {name: _kind(name, child) for name, child in layer.named_children()
             if isinstance(child, ZeroBranch) or any(True for _ in child.parameters())}
    found = {name: kind for name, kind in found.items() if kind}
    kinds = list(found.values())
    if kinds.count("attention") > 1 or kinds.count("mlp") > 1:
        return {}
    return found


def _zero_output(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return torch.zeros_like(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)([torch.zeros_like(output[0]), *([None] * (len(output) - 1))])
    return output


def hidden_input(args: tuple, kwargs: dict) -> Any:
    """The hidden states a layer or sub-layer was called with (first argument, or by keyword)."""
    return args[0] if args else kwargs.get("hidden_states")


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def residual_branches(model: nn.Module, path: str, input_ids: torch.Tensor) -> tuple[dict[str, str], dict[str, int]]:
    """The sub-layers of the stack at ``path`` that are residual branches (``{name: kind}``, in
    forward order) and the structure each answers with (0: a tensor, N: a tuple of N). Two forward
    passes: one records each layer's input; in the second every layer is given that input again
    (real hidden states, not what earlier zeroed layers made of them) with every candidate
    answering zeros, and a layer's candidates count only where it then returns that input (a layer
    that fails so, using a second value its sub-layers return, answers as before and keeps them)."""
    layers = model.get_submodule(path)
    candidates = {f"{path}.{i}.{name}": kind for i, layer in enumerate(layers) for name, kind in branches(layer).items()}
    outputs: dict[str, int] = {}
    inputs: dict[int, torch.Tensor] = {}
    returned: dict[int, Any] = {}

    def zero(name: str):
        def hook(module, args, kwargs, output):
            hidden = hidden_input(args, kwargs)
            first = output if isinstance(output, torch.Tensor) else (output[0] if isinstance(output, (tuple, list))
                                                                     and output else None)
            if isinstance(first, torch.Tensor) and isinstance(hidden, torch.Tensor) and first.shape == hidden.shape:
                outputs[name] = 0 if isinstance(output, torch.Tensor) else len(output)
            return _zero_output(output)
        return hook

    def record(i: int):
        def hook(module, args, kwargs):
            inputs[i] = hidden_input(args, kwargs).detach().clone()
        return hook

    def replay(i: int):
        def hook(module, args, kwargs):
            return _with_hidden(args, kwargs, inputs[i])
        return hook

    def answer(i: int):
        def hook(module, args, kwargs, output):
            returned[i] = output
        return hook

    def keep(i: int):
        def hook(module, args, kwargs, output):
            first[i] = output
        return hook

    first: dict[int, Any] = {}
    failed: set[int] = set()
    after = {str(i): keep(i) for i in range(len(layers))}
    with eval_mode(model):
        with _pre_hooks(layers, record), forward_hooks(layers, after=after, with_kwargs=True):
            model(input_ids)
        with _pre_hooks(layers, replay), forward_hooks(model, after={n: zero(n) for n in candidates}, with_kwargs=True), \
                forward_hooks(layers, after={str(i): answer(i) for i in range(len(layers))}, with_kwargs=True), \
                _guarded(layers, first, failed):
            model(input_ids)
    found = {}
    for i in range(len(layers)):
        mine = {n: k for n, k in candidates.items() if n.startswith(f"{path}.{i}.")}
        out = _first(returned.get(i))
        if (mine and i in inputs and i not in failed and isinstance(out, torch.Tensor) and all(n in outputs for n in mine)
                and out.shape == inputs[i].shape and torch.equal(out, inputs[i])
                and _passed_on(returned[i]) == _passed_on(first.get(i))):
            found.update(mine)
    return found, outputs


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) and output else output


def _passed_on(output: Any) -> tuple[bool, ...]:
    """Which of what a layer returns beside its hidden states is there (not ``None``): with its
    sub-layers answering zeros a layer must pass on what it passed on before (RWKV's recurrent
    state is returned by its attention; zeroed, the next layer would get none)."""
    return tuple(x is not None for x in output[1:]) if isinstance(output, (tuple, list)) else ()


@contextlib.contextmanager
def _guarded(layers: nn.ModuleList, fallback: dict[int, Any], failed: set[int]) -> Iterator[None]:
    """Each layer ``i`` that raises answers ``fallback[i]`` (what it answered before) and is put in
    ``failed``: a layer that cannot run with its sub-layers answering zeros (it uses a second value
    they return: a recurrent state, router weights) keeps them, and the other layers are still
    checked."""
    def guard(i: int, forward):
        def call(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            except Exception:  # noqa: BLE001 - any failure means "not removable", the pass goes on
                if i not in fallback:
                    raise
                failed.add(i)
                return fallback[i]
        return call

    own = [layer.__dict__.get("forward") for layer in layers]  # accelerate's hooks set one
    for i, layer in enumerate(layers):
        layer.forward = guard(i, layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


@contextlib.contextmanager
def _pre_hooks(layers: nn.ModuleList, make) -> Iterator[None]:
    """``make(i)`` as a forward pre-hook (with keyword arguments) on each layer ``i``."""
    handles = [layer.register_forward_pre_hook(make(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def split(names: list[str], path: str) -> tuple[list[str], list[str]]:
    """``names`` split into whole layers of the stack at ``path`` and sub-layers of its layers."""
    layers, subs = [], []
    for name in names:
        rest = name[len(path) + 1:] if name.startswith(path + ".") else ""
        (subs if "." in rest else layers).append(name)
    return layers, subs


def check_sublayers(model: nn.Module, path: str, names: list[str], input_ids: torch.Tensor) -> dict[str, tuple[str, int]]:
    """``{name: (kind, outputs)}`` for sub-layers that may be removed; :class:`SurgeryError` naming
    the first that is not an attention or MLP residual branch of a layer."""
    if not names:
        return {}
    found, outputs = residual_branches(model, path, input_ids)
    for name in names:
        if name not in found:
            raise SurgeryError(f"{name}: not an attention or MLP residual branch of a layer of {type(model).__name__} "
                               f"(see find_blocks(model, input_ids, level='sublayer'))")
    return {name: (found[name], outputs[name]) for name in names}


def zero_hooks(names: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Forward hooks making the sub-layers ``names`` answer zeros (the reference of their removal)."""
    return {name: (lambda module, args, kwargs, output: _zero_output(output)) for name in names}


def replace(model: nn.Module, names: dict[str, tuple[str, int]]) -> None:
    """Put a :class:`ZeroBranch` in place of each sub-layer (its layer index kept for the cache)."""
    for name, (kind, outputs) in names.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        index = next((getattr(old, a) for a in INDEX_ATTRS if isinstance(getattr(old, a, None), int)), None)
        if index is None:
            index = next((getattr(m, a) for m in old.modules() for a in INDEX_ATTRS
                          if isinstance(getattr(m, a, None), int)), None)
        setattr(parent, attr, ZeroBranch(kind, outputs, index if kind == "attention" else None))


def stand_ins(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The model's :class:`ZeroBranch` stand-ins, by module name (what ``layerprune.json`` lists)."""
    return {name: {"kind": m.kind, "outputs": m.outputs, **({"layer_idx": m.layer_idx} if hasattr(m, "layer_idx") else {})}
            for name, m in model.named_modules() if isinstance(m, ZeroBranch)}


def write_stand_ins(model: nn.Module, directory: Path) -> None:
    found = stand_ins(model)
    if found:
        (directory / STAND_INS_FILE).write_text(json.dumps({"stand_ins": found}, indent=2) + "\n", encoding="utf-8")


def apply_stand_ins(model: nn.Module, directory: Path, missing: list[str]) -> nn.Module:
    """Put back the stand-ins a saved folder lists (after ``from_pretrained``, whose freshly made
    sub-layers they replace); :class:`SurgeryError` when weights are missing elsewhere."""
    file = Path(directory) / STAND_INS_FILE
    found = json.loads(file.read_text(encoding="utf-8"))["stand_ins"] if file.is_file() else {}
    for name, spec in found.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, ZeroBranch(spec["kind"], spec["outputs"], spec.get("layer_idx")))
    elsewhere = [k for k in missing if not any(k.startswith(name + ".") for name in found)]
    if elsewhere:
        raise SurgeryError(f"{directory}: weights missing for {', '.join(elsewhere[:3])}"
                           + (f" (and {len(elsewhere) - 3} more)" if len(elsewhere) > 3 else ""))
    return model

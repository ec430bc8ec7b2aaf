"""Transformers language models (Hugging Face ``transformers``): their layer list as blocks, and
removal that leaves a model the library itself can run, cache, save and reload.

The blocks are the entries of the model's own layer list (``model.layers.N``, ``transformer.h.N``,
``gpt_neox.layers.N``, ``bert.encoder.layer.N``, ...), found from the model's structure: the one
``ModuleList`` whose length is the configuration's ``num_hidden_layers`` and whose entries are all
of one class and hold weights (or, in a hybrid stack, entries of several classes that are all
transformers' layers: Jamba's attention and Mamba layers). Everything else (embeddings, final
norm, head) is fixed.

A removed layer is deleted from the list (nothing stands in for it), and the model is made
consistent again: the per-layer indices of the kept layers (``layer_idx`` and its kin, which the KV
cache is addressed by) are what a rebuild from the cut configuration gives them (``0 … n−1``,
or the model's own rule: two cache slots a layer, a count of attention layers only), checked to
number the layers in order, ``config.num_hidden_layers`` is the new count, and every
per-layer list of the configuration (``layer_types`` and the like) keeps the kept layers' entries.
The removal is then checked against the reference it must equal: the original model with the
removed layers skipped (a hook passes their input through), on the example tokens.

>>> blocks = find_blocks(model, torch.randint(0, 100, (1, 16)))        # doctest: +SKIP
>>> pruned = remove_layers(model, ["model.layers.1", "model.layers.3"], input_ids)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import sys
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError, first_line
from layerprune.hooks import eval_mode, forward_hooks, model_device
from layerprune.surgery.blocks import Block, check_level, is_conv1d_projection
from layerprune.surgery.hf_config import Cut, cut_checked, indices, text_config
from layerprune.surgery.hf_sublayers import (check_sublayers, hidden_input, replace, residual_branches, split,
                                             stand_ins, write_stand_ins, zero_hooks)
from layerprune.tasks import logits_of

EXAMPLE_TOKENS = 16


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a ``transformers`` ``PreTrainedModel`` (without importing transformers)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _text_config(model: nn.Module):
    return text_config(model.config)


# Configuration keys that count a stack's layers, most common first.
COUNT_KEYS = ("num_hidden_layers", "decoder_layers", "num_decoder_layers", "n_layer", "num_layers", "n_layers")


def layer_counts(model: nn.Module) -> dict[str, int]:
    """The layer counts the (text) configuration states, by key."""
    config = _text_config(model)
    counts = {}
    for key in COUNT_KEYS:
        try:
            value = getattr(config, key, None)
        except Exception:  # noqa: BLE001 - a property of an odd configuration
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[key] = value
    if not counts:
        raise SurgeryError(f"{type(model).__name__}: its configuration states no layer count "
                           f"({', '.join(COUNT_KEYS)}), so its layer list cannot be told from other lists of modules")
    return counts


def count_key(model: nn.Module, path: str, length: int) -> str:
    """The configuration key that counts the stack at ``path`` (of ``length`` layers): a decoder's
    own count for a stack under ``decoder``, else ``num_hidden_layers`` where it agrees."""
    keys = [k for k, v in layer_counts(model).items() if v == length]
    if "decoder" in path.split("."):
        keys.sort(key=lambda k: "decoder" not in k)
    return keys[0]


def _has_encoder(model: nn.Module) -> bool:
    """Whether the model runs an encoder of its own (a seq2seq model; ``BartForCausalLM`` is the
    decoder alone though its configuration says encoder-decoder)."""
    try:
        encoder = model.get_encoder()
    except (AttributeError, NotImplementedError, ValueError):
        return False
    return isinstance(encoder, nn.Module) and encoder is not model


def _is_library_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of transformers' layers (its ``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return isinstance(module, GradientCheckpointingLayer)


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's layer list: its dotted name and the ``ModuleList``; :class:`SurgeryError` when
    the model is not one the engine handles (an encoder-decoder, no such list, or several)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) and _has_encoder(model):
        raise SurgeryError(f"{type(model).__name__}: an encoder-decoder model (two layer stacks joined by "
                           "cross-attention); only decoder-only and encoder-only models are handled")
    lengths = set(layer_counts(model).values())
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) in lengths
             and all(any(True for _ in m.parameters()) for m in module)]
    found = [(name, module) for name, module in lists if len({type(m) for m in module}) == 1]
    if not found:  # a hybrid stack: layers of several classes, each one of transformers' decoder layers
        found = [(name, module) for name, module in lists if all(map(_is_library_layer, module))]
    if not found:
        stated = ", ".join(f"{k} = {v}" for k, v in layer_counts(model).items())
        raise SurgeryError(f"{type(model).__name__}: no list of layers of one class as long as its configuration "
                           f"says ({stated}) was found in the model")
    # A list nested in another found one (a layer's own sub-lists) is not the stack.
    outer = [(n, m) for n, m in found if not any(n != o and n.startswith(o + ".") for o, _ in found)]
    if len(outer) > 1:
        raise SurgeryError(f"{type(model).__name__}: several lists of layers ({', '.join(n for n, _ in outer)}); "
                           "which one is the stack is ambiguous")
    return outer[0]


def default_tokens(model: nn.Module, batch_size: int = 1, length: int = EXAMPLE_TOKENS) -> torch.Tensor:
    """Random token ids within the model's vocabulary."""
    vocab = getattr(_text_config(model), "vocab_size", None) or 100
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch_size, length), generator=generator).to(model_device(model))


def check_tokens(model: nn.Module, input_ids: Any) -> torch.Tensor:
    if input_ids is None:
        return default_tokens(model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
        raise SurgeryError(f"{type(model).__name__}: the example input must be a tensor of token ids (integers, "
                           f"batch × length), got {getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.dim() != 2:
        raise SurgeryError(f"{type(model).__name__}: token ids must be batch × length, got shape {tuple(input_ids.shape)}")
    return input_ids


def _linear_macs(model: nn.Module, input_ids: torch.Tensor) -> tuple[dict[str, int], dict[str, tuple]]:
    """Multiply-accumulates per sequence of every layer-list entry's matrix products (each module
    with a 2-D weight, as ``nn.Linear`` and GPT-2's ``Conv1D``: tokens × weight size), and the
    hidden-state shapes into and out of each module called."""
    macs: dict[str, int] = {}
    shapes: dict[str, tuple] = {}

    def hook(name: str, weighted: bool):
        def record(module, args, kwargs, output):
            x = hidden_input(args, kwargs)
            if isinstance(x, torch.Tensor):
                y = logits_of(output) if not isinstance(output, torch.Tensor) else output
                shapes.setdefault(name, (tuple(x.shape[1:]), tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else ()))
                if weighted:
                    tokens = x.numel() // x.shape[-1] // x.shape[0]
                    macs[name] = macs.get(name, 0) + tokens * module.weight.numel()
        return record

    def weighted(module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding)
                and not module._modules)

    hooks = {name: hook(name, weighted(module)) for name, module in model.named_modules()}
    with forward_hooks(model, after=hooks, with_kwargs=True), torch.no_grad():
        model(input_ids[:1])
    return macs, shapes


def count_macs(model: nn.Module, input_ids: torch.Tensor | None = None) -> int:
    """Multiply-accumulates per sequence of the model's matrix products (see :func:`_linear_macs`)."""
    with eval_mode(model):
        macs, _ = _linear_macs(model, check_tokens(model, input_ids))
    return sum(macs.values())


def find_blocks(model: nn.Module, input_ids: torch.Tensor | None = None, level: str = "block") -> list[Block]:
    """The layers of a transformers model as blocks (every one removable), with its embeddings,
    final norm and head as fixed parts, in forward order. Nothing is copied."""
    check_level(level)
    input_ids = check_tokens(model, input_ids)
    path, layers = layer_list(model)
    with eval_mode(model):
        macs, shapes = _linear_macs(model, input_ids)
    subs = residual_branches(model, path, input_ids)[0] if level == "sublayer" else {}
    total = max(sum(macs.values()), 1)

    def under(prefix: str) -> int:
        return sum(v for k, v in macs.items() if k == prefix or k.startswith(prefix + "."))

    parts: list[str] = []
    for name, child in model.named_children():
        _walk_fixed(name, child, path, parts)
    before, after = parts[:parts.index(path)], parts[parts.index(path) + 1:]
    blocks = []
    for name in before:
        blocks.append(_fixed(model, name, under(name), total, shapes, "embeddings, before the layers"))
    for i, layer in enumerate(layers):
        name = f"{path}.{i}"
        mine = {n: kind for n, kind in subs.items() if n.startswith(name + ".")}
        for sub, kind in mine.items():
            in_shape, out_shape = shapes.get(sub, ((), ()))
            blocks.append(Block(name=sub, stage=path, kind="plain", removable=True, stand_in="zeros",
                                reason=f"the {kind} residual branch of {name} (replaced by zeros"
                                       + ("; the KV cache still counts its tokens)" if kind == "attention" else ")"),
                                params=sum(p.numel() for p in model.get_submodule(sub).parameters()), macs=under(sub),
                                macs_share=under(sub) / total, in_shape=in_shape, out_shape=out_shape))
        if mine:
            continue
        in_shape, out_shape = shapes.get(name, ((), ()))
        blocks.append(Block(name=name, stage=path, kind="identity", removable=True,
                            reason="a layer of the stack (deleted from the list, the rest renumbered)",
                            params=sum(p.numel() for p in layer.parameters()), macs=under(name),
                            macs_share=under(name) / total, in_shape=in_shape, out_shape=out_shape))
    for name in after:
        blocks.append(_fixed(model, name, under(name), total, shapes, "after the layers (final norm, head)"))
    return blocks


def _walk_fixed(name: str, module: nn.Module, path: str, into: list[str]) -> None:
    """The parts around the layer stack in module order, as deep as needed to keep the stack out
    of them (the stack itself appears as ``path``); parts without weights are left out."""
    if name == path:
        into.append(name)
    elif path.startswith(name + "."):
        for child_name, child in module.named_children():
            _walk_fixed(f"{name}.{child_name}", child, path, into)
    elif any(True for _ in module.parameters()):
        into.append(name)


def _fixed(model: nn.Module, name: str, macs: int, total: int, shapes: dict, where: str) -> Block:
    module = model.get_submodule(name)
    in_shape, out_shape = shapes.get(name, ((), ()))
    return Block(name=name, stage="", kind="fixed", removable=False, reason=f"fixed: {where}",
                 params=sum(p.numel() for p in module.parameters()), macs=macs, macs_share=macs / total,
                 in_shape=in_shape, out_shape=out_shape)


# -- removal ----------------------------------------------------------------------------------------
def plan(model: nn.Module, names: list[str] | tuple[str, ...]) -> tuple[str, list[int]]:
    """The layer list's name and the indices of the layers to remove; :class:`SurgeryError` for a
    name that is not one of its layers, and for a plan that removes every layer."""
    path, layers = layer_list(model)
    indices = []
    for name in names:
        prefix, _, index = name.rpartition(".")
        if prefix != path or not index.isdigit() or int(index) >= len(layers):
            raise SurgeryError(f"{name}: not a layer of {type(model).__name__} (its layers are {path}.0 … "
                               f"{path}.{len(layers) - 1})")
        indices.append(int(index))
    if len(set(indices)) >= len(layers):
        raise SurgeryError(f"removing {', '.join(names)} would leave {type(model).__name__} without layers; keep at "
                           "least one")
    return path, sorted(set(indices))


def _carried(given: Any, value: Any) -> Any:
    """``given`` (what a layer was called with) where it is a tensor of ``value``'s shape (what the
    layer returns there): a state carried from layer to layer, which an absent layer passes on."""
    if isinstance(given, torch.Tensor) and isinstance(value, torch.Tensor) and given.shape == value.shape:
        return given
    return value


def _pass_input_on(module, args, kwargs, output):
    """A forward hook that makes a layer return its input hidden states (in its output's structure:
    a tensor, a tuple, namedtuple or list whose first entry is the hidden states, or a dict holding
    them), and, beside them, any state it carries from layer to layer as it was given: the entry
    of a tuple whose positional argument is a tensor of that shape (Zaya's router states), the
    entry of a dict whose keyword argument, or ``prev_`` one, is (Reformer's second stream)."""
    hidden = hidden_input(args, kwargs)
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a namedtuple
        fields = output._fields
        return output._replace(**{fields[0]: hidden}, **{
            k: _carried(kwargs.get(k, kwargs.get("prev_" + k)), getattr(output, k)) for k in fields[1:]})
    if isinstance(output, (tuple, list)):
        rest = [_carried(args[j] if j < len(args) else None, v) for j, v in enumerate(output) if j]
        return type(output)([hidden, *rest])
    if isinstance(output, dict):
        key = "hidden_states" if "hidden_states" in output else next(iter(output))
        return type(output)({**{k: _carried(kwargs.get(k, kwargs.get("prev_" + k)), v) for k, v in output.items()},
                             key: hidden})
    return hidden


@contextlib.contextmanager
def skipping(model: nn.Module, path: str, indices: list[int], zeroed: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, the layers ``indices`` of the stack at ``path`` pass their input on and
    the sub-layers ``zeroed`` answer zeros: the reference a removal must equal (they still run and
    fill their part of the KV cache, which nothing reads)."""
    hooks = {**zero_hooks(zeroed), **{f"{path}.{i}": _pass_input_on for i in indices}}
    with forward_hooks(model, after=hooks, with_kwargs=True):
        yield


@torch.no_grad()
def skip_reference(model: nn.Module, path: str, removed: list[int], input_ids: torch.Tensor,
                   zeroed: Iterable[str] = ()) -> torch.Tensor:
    """The original model's logits with the ``removed`` layers skipped (each passes its input on)
    and the sub-layers ``zeroed`` answering zeros."""
    with skipping(model, path, removed, zeroed), eval_mode(model):
        return logits_of(model(input_ids)).detach().clone()


def _indices(layers: nn.ModuleList) -> Iterator[tuple[int, str, nn.Module, str, int]]:
    """Every per-layer index (:data:`INDEX_ATTRS`) inside the layers: ``(position in the list,
    module name inside the layer, module, attribute, value)``."""
    for position, layer in enumerate(layers):
        for (name, attr), value in indices(layer).items():
            yield position, name, layer.get_submodule(name) if name else layer, attr, value


def renumber(layers: nn.ModuleList, numbers: list[dict[tuple[str, str], Any]]) -> None:
    """Give the kept layers (``layers``) the per-layer indices, position flags and references to
    other layers a rebuild from the cut configuration gives them (``numbers``, from
    :func:`~layerprune.surgery.hf_config.cut_checked`)."""
    for layer, given in zip(layers, numbers):
        modules = dict(layer.named_modules())
        for (name, attr), value in given.items():
            if name in modules and hasattr(modules[name], attr):
                setattr(modules[name], attr, value)


def adopt(model: nn.Module, change: Cut, kept: list[int]) -> None:
    """Outside the layer list, what the rebuild from the cut configuration has: weights holding a
    slice per layer keep the kept layers' slices (Gemma's per-layer input embeddings and their
    projection), and plain values derived from the layer count take the rebuild's."""
    for name, (dim, width) in change.slices.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        old = getattr(module, attr)
        index = torch.cat([torch.arange(i * width, (i + 1) * width) for i in kept]).to(old.device)
        new = old.detach().index_select(dim, index)
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[attr] = new
    for owner, values in change.values.items():
        module = model.get_submodule(owner) if owner else model
        for key, value in values.items():
            setattr(module, key, value)


def _numbered(values: dict[int, int], slope: int) -> bool:
    """Whether one per-layer index, ``{position: value}`` over the layers that have it, numbers
    them in order: ``a·position + b`` (``a`` ≥ 1 slots a layer, ``0 ≤ b < a``: the position, or
    LongCat-Flash's two attentions a layer), or the same of its rank among those layers (a count
    of the attention layers of a hybrid stack). ``slope`` is ``a`` where one entry cannot tell."""
    positions = sorted(values)
    for xs in (positions, list(range(len(positions)))):
        ys = [values[p] for p in positions]
        a = (ys[1] - ys[0]) // (xs[1] - xs[0]) if len(xs) > 1 and xs[1] != xs[0] else slope
        b = ys[0] - a * xs[0]
        if a >= 1 and 0 <= b < a and all(y == a * x + b for x, y in zip(xs, ys)):
            return True
    return False


def check_consistent(model: nn.Module) -> None:
    """The layer list, its configured count, the per-layer lists and the layer indices agree."""
    path, layers = layer_list(model)  # raises when the configured count no longer matches the list
    found: dict[tuple[str, str], dict[int, int]] = {}
    for position, name, _, attr, value in _indices(layers):
        found.setdefault((name, attr), {})[position] = value
    steps = [(v[q] - v[p]) // (q - p) for v in found.values() if len(v) > 1 for p, q in [sorted(v)[:2]]]
    slope = max([1, *steps])
    for (name, attr), values in found.items():
        if not _numbered(values, slope):
            where = ", ".join(f"{path}.{p}: {v}" for p, v in sorted(values.items())[:4])
            raise SurgeryError(f"{path}: {'.'.join(filter(None, [name, attr]))} does not number the layers in order "
                               f"({where})")


def renumber_device_map(model: nn.Module, path: str, kept: list[int]) -> None:
    """A dispatched model's ``hf_device_map`` (``device_map=``: where each module lives, read when
    the KV cache is placed) follows the kept layers to their new names; removed ones leave it."""
    mapping = getattr(model, "hf_device_map", None)
    if not isinstance(mapping, dict):
        return
    new = {old: position for position, old in enumerate(kept)}
    renamed = {}
    for key, device in mapping.items():
        index, _, rest = key[len(path) + 1:].partition(".") if key.startswith(path + ".") else ("", "", "")
        if index.isdigit():
            if int(index) not in new:
                continue
            key = f"{path}.{new[int(index)]}" + (f".{rest}" if rest else "")
        renamed[key] = device
    model.hf_device_map = renamed


def remove_layers(model: nn.Module, names: list[str] | tuple[str, ...], input_ids: torch.Tensor | None = None,
                  *, inplace: bool = False, atol: float | None = None) -> nn.Module:
    """``model`` without the layers ``names``: deleted from its layer list, the rest renumbered, its
    configuration cut to match (checked first to rebuild the kept layers as they are:
    :mod:`layerprune.surgery.hf_config`), and its logits checked against the original's with those
    layers skipped. Names may also be attention or MLP sub-layers of layers
    (``find_blocks(..., level="sublayer")``): each becomes a
    :class:`~layerprune.surgery.hf_sublayers.ZeroBranch`, checked against the original with that
    sub-layer answering zeros. ``inplace=True`` edits ``model`` itself (no copy: for models that fit
    in memory once); otherwise a copy is edited and ``model`` is left as it was."""
    input_ids = check_tokens(model, input_ids)
    path, _ = layer_list(model)
    layer_names, sub_names = split(list(names), path)
    removed = plan(model, layer_names)[1] if layer_names else []
    gone = {f"{path}.{i}." for i in removed}
    subs = check_sublayers(model, path, [n for n in sub_names if not any(n.startswith(g) for g in gone)], input_ids)
    count = len(model.get_submodule(path))
    kept = [i for i in range(count) if i not in removed]
    change = cut_checked(model, path, count_key(model, path, count), kept, count) if removed else None
    reference = skip_reference(model, path, removed, input_ids, subs)
    pruned = model if inplace else copy.deepcopy(model)
    replace(pruned, subs)
    if removed:
        layers = pruned.get_submodule(path)
        parent_name, _, attr = path.rpartition(".")
        parent = pruned.get_submodule(parent_name) if parent_name else pruned
        setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
        renumber(parent.get_submodule(attr), change.numbers)
        adopt(pruned, change, kept)
        # The live configuration object is shared with the modules that read it: updated, not replaced.
        vars(_text_config(pruned)).update(vars(text_config(change.config)))
        renumber_device_map(pruned, path, kept)
    check_consistent(pruned)
    try:
        with torch.no_grad(), eval_mode(pruned):
            out = logits_of(pruned(input_ids))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the removal is what failed
        raise SurgeryError(f"{type(model).__name__} fails after removing {', '.join(names)}: "
                           f"{type(exc).__name__}: {first_line(exc, '')}") from exc
    tolerance = atol if atol is not None else (1e-4 if out.dtype == torch.float32 else 5e-2)
    if out.shape != reference.shape or not torch.allclose(out.float(), reference.float(), atol=tolerance, rtol=0):
        gap = (out.float() - reference.float()).abs().max().item() if out.shape == reference.shape else float("nan")
        raise SurgeryError(f"{type(model).__name__}: after removing {', '.join(names)} the logits differ from the "
                           f"original's with those layers skipped (max |Δ| {gap:.3g} > {tolerance:g})")
    return pruned


def linear_layers(model: nn.Module) -> list[str]:
    """The full names of the linear layers (``nn.Linear``, and GPT-2's ``Conv1D``) inside the
    model's layer list: its layers' attention and MLP projections (where LoRA adapters go)."""
    path, layers = layer_list(model)
    return [f"{path}.{name}" for name, module in layers.named_modules()
            if isinstance(module, nn.Linear) or is_conv1d_projection(module)]


def layer_indices(model: nn.Module) -> Iterator[tuple[str, int]]:
    """``(module path, index)`` of every per-layer index in the layer list (for checks and tests)."""
    path, layers = layer_list(model)
    for position, name, _, attr, value in _indices(layers):
        yield f"{path}.{position}{'.' + name if name else ''}.{attr}", value


# -- saving -----------------------------------------------------------------------------------------
def is_hf_folder(directory) -> bool:
    """Whether ``directory`` holds a transformers model (its ``config.json`` names a ``model_type``)."""
    import json
    from pathlib import Path

    config = Path(directory) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and "architecture" not in data


def model_card(model: nn.Module, *, base_model: str | None, removed: list[str], original_layers: int | None = None,
               info: dict[str, Any] | None = None, tokenizer: bool = False) -> str:
    """The ``README.md`` of a pruned transformers model: YAML front matter the hub reads
    (``base_model``, ``library_name``, tags), what was removed and how to load it."""
    info = info or {}
    path, layers = layer_list(model)
    gone, subs = split(list(removed), path)
    zeroed = stand_ins(model)
    causal = type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    lines = ["---", "library_name: transformers"]
    if base_model:
        lines += [f"base_model: {base_model}"]
    what = ", ".join(part for part in (f"{len(gone)} layers" if gone else "", f"{len(subs)} sub-layers" if subs else "")
                     if part) or "nothing"
    lines += [f"pipeline_tag: {'text-generation' if causal else 'text-classification'}", "tags:", "- layerprune",
              "- pruned", "---", "", f"# {base_model or type(model).__name__}, {what} removed by layerprune", ""]
    before = original_layers or len(layers) + len(gone)
    chosen = f", chosen by the `{info['criterion']}` criterion" if info.get("criterion") else ""
    lines += [f"`{type(model).__name__}` with {len(layers)} of its {before} layers (`{path}`)"
              + (": removed " + ", ".join(f"`{n}`" for n in gone) + " (numbered as in the original)" if gone else "")
              + (chosen if gone else "") + ".", ""]
    if subs:
        lines += ["Sub-layers removed (numbered as in the original; each now answers zeros, so its layer adds nothing "
                  "there, and its weights are gone)" + chosen + ": " + ", ".join(f"`{n}`" for n in subs) + ".", ""]
    if zeroed:
        lines += ["A stock configuration cannot say that a layer lacks its attention or MLP, so this folder loads "
                  "with layerprune (`layerprune.json` names the removed sub-layers). Plain transformers would build "
                  "them again with fresh random weights (reporting their weights as missing):", "", "```python",
                  "import layerprune", "", 'model = layerprune.load_pruned("THIS_FOLDER")', "```", ""]
    else:
        lines += ["The configuration says so (`num_hidden_layers` and every per-layer list cut to the kept layers, "
                  "the layers renumbered), so the folder loads with transformers alone:", "", "```python",
                  "import transformers", "", f'model = transformers.{auto}.from_pretrained("THIS_FOLDER")']
        if tokenizer:
            lines += ['tokenizer = transformers.AutoTokenizer.from_pretrained("THIS_FOLDER")']
        lines += ["```", ""]
    params = sum(p.numel() for p in model.parameters())
    lines += [f"Parameters: {params:,}.", ""]
    for key, value in info.items():
        if key != "criterion":
            lines.append(f"- {key}: {value}")
    return "\n".join(lines).rstrip() + "\n"


def save_pruned(model: nn.Module, directory, *, base_model: str | None = None, removed: list[str] = (),
                tokenizer: Any = None, original_layers: int | None = None, info: dict[str, Any] | None = None):
    """The model's own ``save_pretrained`` folder (config.json, model.safetensors,
    generation_config.json), with the tokenizer's files when there is a tokenizer and a README.md
    model card; written atomically (all or nothing). Returns the folder."""
    from pathlib import Path

    from layerprune.io import atomic_dir

    if not is_hf_model(model):
        raise SurgeryError(f"{type(model).__name__}: not a transformers model (timm models are saved with "
                           "layerprune.save_pruned and a PruneSpec)")
    check_consistent(model)
    directory = Path(directory)
    card = model_card(model, base_model=base_model, removed=list(removed), original_layers=original_layers, info=info,
                      tokenizer=tokenizer is not None)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        write_stand_ins(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return directory


__all__ = ["count_macs", "find_blocks", "is_hf_model", "layer_list", "remove_layers", "save_pruned", "skip_reference",
           "skipping"]

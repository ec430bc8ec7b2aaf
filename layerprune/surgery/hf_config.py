"""The configuration side of removing layers from a transformers model.

A transformers folder is rebuilt from its ``config.json`` alone: ``from_pretrained`` constructs the
model from the configuration and only then loads the weights. A removal is therefore correct for
the library only when the cut configuration rebuilds, layer for layer, the model the removal left.
This module cuts the configuration to the kept layers and checks exactly that, before anything is
changed:

* the layer count, every per-layer list (``layer_types``, sliding-window flags, ...) and every
  per-layer mapping keyed by layer index (``per_layer_config``) keep the kept layers' entries;
* lists of layer indices (``moe_layers``, ``mlp_only_layers``, ...) keep the kept layers,
  renumbered; lists naming the earlier layer each layer reads from (``kv_source_layers``) are
  renumbered too; ``first_k_dense_replace`` counts the dense layers kept, ``num_kv_shared_layers``
  the sharing layers kept, and a second count of the same layers (``num_blocks``) follows; counts of
  consecutive sections (Dory's input, recurrent and output layers) count the kept layers in each; a residual scale divided by
  the square root of the layer count (``scale_depth``) is kept as it was; where mixture-of-experts
  layers are placed by a step (``decoder_sparse_step``), the kept dense layers are listed in
  ``mlp_only_layers`` instead;
* the cut configuration is round-tripped through JSON as ``save_pretrained`` writes it, the model
  is rebuilt from it on the ``meta`` device (no memory), and each kept layer is compared with the
  layer the rebuild puts in its place: module classes, weight names and shapes, and the plain
  numbers and strings a module keeps (a layer whose computation depends on its index or on the
  layer count, DiffLlama's ``lambda_init`` say, differs there; what already differs between the
  model and a rebuild of its own configuration is state a forward pass set, and is not compared).
  A difference is a
  :class:`SurgeryError` that names it: the removal would save a folder that reloads as another model.
* what the rebuild derives from the layers' positions and count is adopted from it: the per-layer
  indices (``layer_idx`` and its kin, which the KV cache is addressed by: the position, two cache
  slots a layer in LongCat-Flash, whatever the model's own rule is), which layer stores the keys
  and values KV-sharing layers read (Gemma 3n and 4), weights outside the stack that hold a slice
  per layer (Gemma's per-layer input embeddings: the kept layers' slices are kept) and plain values
  of model-level modules derived from the layer count. The removal's logits check guards all of it.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError, first_line

# Other keys that count the same layers in some configurations (xLSTM's num_blocks beside
# num_hidden_layers): cut with the count where they equal it.
SECOND_COUNTS = ("num_blocks", "num_layers", "n_layer", "n_layers", "num_hidden_layers")
SECTION = re.compile(r"^(n|num)_\w+_layers$")
# Attributes that number a layer (the KV cache and per-layer settings are looked up by them).
INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index", "block_idx")
# Flags a configuration derives from a layer's position for the library's own bookkeeping: Gemma 3n
# and 4 mark the last layer of each attention type before the KV-sharing layers to store its keys
# and values (what the sharing layers, and an assistant model, read). Like the indices, a kept
# layer takes them from the rebuild: where sharing layers read them, a changed source changes the
# logits, which the removal's check compares.
POSITION_FLAGS = ("store_full_length_kv",)


def text_config(config):
    """The configuration of the language part (``text_config`` of a multimodal model, else itself)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _is_index(value: Any, count: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count


def _values(config) -> dict[str, Any]:
    """The configuration's values as it holds them (``to_dict`` may write them otherwise: Dory
    writes two entries a layer), by the names ``to_dict`` gives."""
    found = {}
    for key, written in config.to_dict().items():
        try:
            found[key] = getattr(config, key)
        except Exception:  # noqa: BLE001 - a name only the written form has, or one held per layer
            found[key] = written
    return found


def index_list_keys(config, count: int) -> list[str]:
    """Lists of layer indices: named for layers, strictly increasing integers within the stack."""
    keys = []
    for key, value in _values(config).items():
        if (isinstance(value, (list, tuple)) and value and ("layer" in key or "idx" in key)
                and all(_is_index(v, count) for v in value) and list(value) == sorted(set(value))
                and not (len(value) == count and list(value) != list(range(count)))):
            keys.append(key)
    return keys


def _is_source_list(key: str, value: Any, count: int) -> bool:
    """A per-layer list naming, for each layer, a layer at or before it (``kv_source_layers``: the
    layer whose keys and values it reads)."""
    return (isinstance(value, (list, tuple)) and len(value) == count and ("layer" in key or "source" in key)
            and all(_is_index(v, count) and v <= i for i, v in enumerate(value)) and list(value) != list(range(count))
            and any(v != i for i, v in enumerate(value)))


def per_layer_keys(config, count: int) -> list[str]:
    """Per-layer lists: one entry per layer (lists of layer indices excepted)."""
    indices = set(index_list_keys(config, count))
    return [k for k, v in _values(config).items()
            if isinstance(v, (list, tuple)) and len(v) == count and count > 1 and k != "architectures"
            and k not in indices]


def _layer_key(key: Any, count: int) -> int | None:
    if _is_index(key, count):
        return key
    if isinstance(key, str) and key.isdigit() and int(key) < count:
        return int(key)
    return None


def per_layer_mappings(config, count: int) -> list[str]:
    """Mappings named for layers and keyed by layer index (every key one), such as transformers'
    ``per_layer_config`` of per-layer overrides (``id2label`` is keyed by small integers too)."""
    return [k for k, v in config.to_dict().items()
            if isinstance(v, dict) and v and "layer" in k and all(_layer_key(key, count) is not None for key in v)]


def section_keys(config, key: str, count: int) -> list[str]:
    """Counts of consecutive sections of the stack (``n_input_layers``, ``n_recurrent_layers``,
    ``n_output_layers``), in the configuration's order: two or more that add up to the layer count."""
    keys = [k for k, v in vars(config).items() if k != key and k not in SECOND_COUNTS and SECTION.match(k)
            and isinstance(v, int) and not isinstance(v, bool) and v >= 0]
    return keys if len(keys) > 1 and sum(getattr(config, k) for k in keys) == count else []


def cut(config, key: str, kept: list[int], count: int) -> None:
    """Cut ``config`` (a text configuration) to the ``kept`` layers of a stack of ``count``, whose
    count is ``key``."""
    new = {old: position for position, old in enumerate(kept)}
    for name in index_list_keys(config, count):
        value = getattr(config, name)
        setattr(config, name, type(value)(new[i] for i in value if i in new))
    for name in per_layer_keys(config, count):
        value = getattr(config, name)
        if _is_source_list(name, value, count):
            lost = [(i, value[i]) for i in kept if value[i] not in new]
            if lost:
                raise SurgeryError(f"{name}: layer {lost[0][0]} reads from layer {lost[0][1]}, which would be removed")
            setattr(config, name, type(value)(new[value[i]] for i in kept))
        else:
            setattr(config, name, type(value)(value[i] for i in kept))
    shared = getattr(config, "num_kv_shared_layers", None)
    if _is_index(shared, count + 1) and shared:
        # The last N layers read the keys and values of earlier ones: as many as are kept of them.
        config.num_kv_shared_layers = sum(1 for i in kept if i >= count - shared)
    for other in SECOND_COUNTS:
        if other != key and getattr(config, other, None) == count:
            try:
                setattr(config, other, len(kept))
            except (AttributeError, NotImplementedError):  # derived from the counted keys (ProphetNet)
                pass
    start = 0
    for name in section_keys(config, key, count):
        # Consecutive sections of the stack (Dory's input, recurrent and output layers): each
        # counts the layers kept in it.
        size = getattr(config, name)
        setattr(config, name, sum(1 for i in kept if start <= i < start + size))
        start += size
    mappings = {name: config.to_dict()[name] for name in per_layer_mappings(config, count)}
    first_dense = getattr(config, "first_k_dense_replace", None)
    if _is_index(first_dense, count + 1):
        config.first_k_dense_replace = sum(1 for i in kept if i < first_dense)
    scale = getattr(config, "scale_depth", None)
    if isinstance(scale, float) and key == "num_hidden_layers":
        # A residual branch scaled by scale_depth / sqrt(layer count) (MiniCPM) keeps its scale.
        config.scale_depth = scale * math.sqrt(len(kept) / count)
    setattr(config, key, len(kept))
    # Set after the count: a mapping's keys are checked against it (transformers' per_layer_config).
    for name, value in mappings.items():
        setattr(config, name, {new[_layer_key(k, count)]: v for k, v in value.items() if _layer_key(k, count) in new})


def rebuild(model: nn.Module, config) -> nn.Module:
    """The model ``from_pretrained`` would construct from ``config`` as ``save_pretrained`` writes
    it (``config.json`` written and read back), on the ``meta`` device: structure without memory."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            fresh_config = type(config).from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on the saved configuration
        raise SurgeryError(f"{type(model).__name__}: the configuration cut to the kept layers is refused when "
                           f"reloaded: {type(exc).__name__}: {first_line(exc, '')}") from exc
    ours, theirs = text_config(config).to_dict(), text_config(fresh_config).to_dict()
    for key, value in ours.items():
        if isinstance(value, list) and theirs.get(key) != value:
            raise SurgeryError(f"{type(model).__name__}: the configuration cut to the kept layers is rewritten when "
                               f"reloaded ({key}: {value} → {theirs.get(key)}), so a saved folder would be another model")
    try:
        with torch.device("meta"):
            return type(model)._from_config(fresh_config)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises building from it
        raise SurgeryError(f"{type(model).__name__}: the configuration cut to the kept layers is refused when "
                           f"rebuilt: {type(exc).__name__}: {first_line(exc, '')}") from exc


def _scalars(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and k not in INDEX_ATTRS + POSITION_FLAGS
            and (v is None or isinstance(v, (bool, int, float, str)))}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def _layer_diffs(layer: nn.Module, fresh: nn.Module) -> dict[str, str]:
    """How ``fresh`` (a rebuilt layer) differs from ``layer``, by what differs inside the layer
    (``sub`` for a module's class, ``sub.key`` for a weight, buffer or value): module classes,
    weights and buffers (names and shapes), and the plain values the modules keep."""
    found: dict[str, str] = {}
    ours, theirs = dict(layer.named_modules()), dict(fresh.named_modules())
    # A removed sub-layer (hf_sublayers.ZeroBranch) stands in for what the configuration builds
    # there: not a difference.
    removed = [sub for sub, module in ours.items() if getattr(module, "stands_in", False)]
    for sub in sorted(set(ours) | set(theirs), key=lambda s: (s.count("."), s)):
        if any(sub == r or sub.startswith(r + ".") for r in removed):
            continue
        a, b = ours.get(sub), theirs.get(sub)
        if a is None or b is None or type(a) is not type(b):
            found[sub] = (f"{type(b).__name__ if b is not None else 'nothing'} when rebuilt, "
                          f"{type(a).__name__ if a is not None else 'nothing'} here")
            continue
        tensors_a = {k: tuple(v.shape) for k, v in [*a.named_parameters(recurse=False), *a.named_buffers(recurse=False)]
                     if v is not None}
        tensors_b = {k: tuple(v.shape) for k, v in [*b.named_parameters(recurse=False), *b.named_buffers(recurse=False)]
                     if v is not None}
        for key in sorted(set(tensors_a) | set(tensors_b)):
            if tensors_a.get(key) != tensors_b.get(key):
                found[f"{sub}.{key}"] = f"{tensors_b.get(key, 'absent')} when rebuilt, {tensors_a.get(key, 'absent')} here"
        values_a, values_b = _scalars(a), _scalars(b)
        for key in sorted(set(values_a) & set(values_b)):
            if not _same(values_a[key], values_b[key]):
                found[f"{sub}.{key}"] = f"{values_b[key]!r} when rebuilt, {values_a[key]!r} here"
    return found


def layer_differences(layer: nn.Module, fresh: nn.Module, name: str, ignore: set[str] = frozenset()) -> list[str]:
    """:func:`_layer_diffs` as messages naming ``name``, except those ``ignore`` holds."""
    return [f"{name}.{key}".rstrip(".") + f": {message}" for key, message in _layer_diffs(layer, fresh).items()
            if key not in ignore]


def indices(layer: nn.Module) -> dict[tuple[str, str], int]:
    """The per-layer indices (:data:`INDEX_ATTRS`) inside a layer, ``{(module name, attribute): value}``."""
    return {(name, attr): value for name, module in layer.named_modules() for attr in INDEX_ATTRS
            if isinstance(value := getattr(module, attr, None), int) and not isinstance(value, bool)}


def positional(layer: nn.Module) -> dict[tuple[str, str], int | bool]:
    """What a layer gets from its position (:func:`indices` and :data:`POSITION_FLAGS`)."""
    flags = {(name, attr): value for name, module in layer.named_modules() for attr in POSITION_FLAGS
             if isinstance(value := getattr(module, attr, None), bool)}
    return {**indices(layer), **flags}


def _references(layer: nn.Module, fresh: nn.Module, kept: list[int]) -> dict[tuple[str, str], int]:
    """Plain integers inside a kept layer, named for a layer, that name a kept layer and that the
    rebuild renumbers with it (Kolibri's ``kv_source_layer``, the layer whose keys and values it
    reads): old ``j`` where the rebuild has ``kept.index(j)``. ``{(module name, attribute): new value}``.
    A value that names a removed layer stays a difference (its source would be gone)."""
    theirs = dict(fresh.named_modules())
    found = {}
    for name, module in layer.named_modules():
        if name not in theirs:
            continue
        other = _scalars(theirs[name])
        for attr, value in _scalars(module).items():
            if (("layer" in attr or "source" in attr) and isinstance(value, int) and not isinstance(value, bool)
                    and value in kept
                    and other.get(attr) == kept.index(value) != value):
                found[(name, attr)] = other[attr]
    return found


class Cut(NamedTuple):
    """What a removal changes besides the layer list, as a rebuild from the cut configuration has it."""

    config: Any  #: the configuration cut to the kept layers
    numbers: list[dict]  #: per kept layer, what it gets from its position (:func:`positional`)
    slices: dict[str, tuple[int, int]]  #: model-level weights holding one slice per layer: ``{name: (dim, width)}``
    values: dict[str, dict[str, Any]]  #: model-level modules' plain values derived from the layer count


def _tensors(model: nn.Module, path: str) -> dict[str, tuple[int, ...]]:
    """Shapes of what is saved outside the stack at ``path`` (weights and persistent buffers)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(path + ".")}


def _slice(ours: tuple[int, ...], theirs: tuple[int, ...], count: int, kept: int) -> tuple[int, int] | None:
    """``(dim, width)`` where a weight holds ``width`` entries for each of ``count`` layers along
    ``dim`` and the rebuild holds them for the ``kept`` layers (Gemma's per-layer input embeddings)."""
    if len(ours) != len(theirs):
        return None
    dims = [d for d, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    if len(dims) != 1 or ours[dims[0]] % count:
        return None
    width = ours[dims[0]] // count
    return (dims[0], width) if theirs[dims[0]] == width * kept else None


def _outside_values(model: nn.Module, fresh: nn.Module, path: str) -> dict[str, dict[str, Any]]:
    """Plain values of the modules outside the stack that differ in ``fresh``: ``{module: {name: value}}``."""
    theirs = dict(fresh.named_modules())
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if name == path or name.startswith(path + ".") or name not in theirs:
            continue
        a, b = _scalars(module), _scalars(theirs[name])
        changed = {k: b[k] for k in set(a) & set(b) if not _same(a[k], b[k])}
        if changed:
            found[name] = changed
    return found


def differences(model: nn.Module, path: str, kept: list[int], config, own: nn.Module) -> tuple[list[str], Cut]:
    """How the model rebuilt from ``config`` differs from ``model`` with only the ``kept`` layers of
    the stack at ``path`` (compared before anything is removed: kept layer ``i`` against rebuilt
    layer ``kept.index(i)``; outside the stack, weights by name and shape), and what the rebuild
    gives that the removal is to adopt (:class:`Cut`): what each kept layer gets from its position,
    weights holding a slice per layer, and model-level values derived from the layer count. What
    already differs between the model and ``own``, a rebuild of its own configuration, is state a
    forward pass set (BigBird swaps its attention for short inputs): neither compared nor adopted."""
    fresh = rebuild(model, config)
    layers, rebuilt = model.get_submodule(path), fresh.get_submodule(path)
    if len(rebuilt) != len(kept):
        return [f"{path}: {len(rebuilt)} layers when rebuilt, {len(kept)} kept"], Cut(config, [], {}, {})
    noise: set[str] = set()
    for layer, again in zip(layers, own.get_submodule(path)):
        noise.update(_layer_diffs(layer, again))
    found, numbers = [], [positional(layer) for layer in rebuilt]
    for position, old in enumerate(kept):
        references = _references(layers[old], rebuilt[position], kept)
        numbers[position].update(references)
        ignore = noise | {f"{sub}.{attr}" for sub, attr in references}
        found += layer_differences(layers[old], rebuilt[position], f"{path}.{old}", ignore)
    ours, theirs, slices = _tensors(model, path), _tensors(fresh, path), {}
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs:
            found.append(f"{key}: {'absent' if key not in theirs else 'present'} when rebuilt")
        elif ours[key] != theirs[key]:
            where = _slice(ours[key], theirs[key], len(layers), len(kept))
            if where is None:
                found.append(f"{key}: {theirs[key]} when rebuilt, {ours[key]} here")
            else:
                slices[key] = where
    runtime = _outside_values(model, own, path)
    values = {name: {k: v for k, v in changed.items() if k not in runtime.get(name, {})}
              for name, changed in _outside_values(model, fresh, path).items()}
    return found, Cut(config, numbers, slices, {k: v for k, v in values.items() if v})


def _mlp_only(model: nn.Module, path: str, kept: list[int], config) -> bool:
    """Where mixture-of-experts layers are placed by a step (``decoder_sparse_step``, a layer is
    sparse when ``(index + 1) % step == 0`` unless listed in ``mlp_only_layers``): step 1 and the
    kept layers the rebuild makes sparse but are dense here listed instead. Whether it applied."""
    text = text_config(config)
    if not hasattr(text, "decoder_sparse_step") or not isinstance(getattr(text, "mlp_only_layers", None), list):
        return False
    text.decoder_sparse_step, text.mlp_only_layers = 1, []
    fresh = rebuild(model, config).get_submodule(path)
    layers = model.get_submodule(path)
    text.mlp_only_layers = [position for position, old in enumerate(kept)
                            if layer_differences(layers[old], fresh[position], "")]
    return True


def cut_checked(model: nn.Module, path: str, key: str, kept: list[int], count: int) -> Cut:
    """The model's configuration cut to ``kept`` (a copy), checked to rebuild the kept layers as
    they are (:class:`SurgeryError` naming what would differ), with what else the removal is to
    adopt from the rebuild (:class:`Cut`). The model is not changed."""
    config = copy.deepcopy(model.config)
    cut(text_config(config), key, kept, count)
    own = rebuild(model, copy.deepcopy(model.config))  # what a forward pass changed shows against it
    found, result = differences(model, path, kept, config, own)
    if found and _mlp_only(model, path, kept, config):
        found, result = differences(model, path, kept, config, own)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise SurgeryError(f"{type(model).__name__}: its configuration cannot describe the model left after removing "
                           f"{', '.join(f'{path}.{i}' for i in range(count) if i not in kept)}: a folder saved from it "
                           f"would reload as another model ({'; '.join(found[:3])}{more})")
    return result

"""Layer surgery across transformers: every model type of its causal-LM and sequence-classification
auto mappings, built from a tiny configuration on the CPU (a benchmark, not a test).

Each model type gets its own configuration's defaults made tiny (``tiny_config``), random weights,
float32, eval mode. The tiny configuration:

* sizes: hidden 64, heads of 16 (4 query heads; 2 key/value heads, or 4 where the default has as
  many as query heads), vocabulary 256, 4 experts (2 per token, or the default's 1), multi-head
  latent attention of rank 16 with 8 rotary + 8 other query dimensions; sizes that depend on each
  other keep the default's relation (a head size equal to the rotary part, an indexer's heads, an
  adapter as wide as the model, Mamba-2 heads spanning the inner width, ...); a size the default
  turns off (0) stays off. The same in each sub-configuration (``text_config``, a
  ``decoder``, ...); vision and audio towers get hidden 32 and one layer;
* 4 layers chosen from the default stack so that each per-layer setting keeps its kinds: every list
  with an entry per layer, list of layer indices and dict keyed by layer index is cut to 4 layers of
  the default (renumbered), chosen so that each kind (sliding and full attention, linear and full
  attention, dense and MoE, ...) sits at an even and an odd position where it can: removing layers
  1 and 3 then keeps one of each, and the family must accept the choice (KV sharing keeps its
  producing layers); counts of a part of the stack (KV-shared layers, input and output layers, ...)
  shrink in proportion; placements set by integers (an attention period and offset, an interval)
  are searched for the values that keep the kinds the same way;
* a decoder, for a causal LM of an encoder family whose configuration says (``is_decoder``);
* ``FAMILY``: what a family needs that its defaults lack (each its own rule, commented there).

Then:

* ``built``: the tiny model exists (a model type that cannot be built this way fails here, with
  transformers' reason); where the auto class's model is made from a sub-configuration (a
  ``decoder``'s), from that sub-configuration, as transformers itself does for a ``text_config``;
* ``found``: ``find_blocks`` offers exactly the layer list's entries (as many as the configuration's
  layer count), its time as a multiple of one forward pass of the same tokens (batch 2 × 16);
* ``removed``: layers 1 and 3 taken out (``remove_blocks``), logits equal to the original with
  those layers skipped within 1e-5, the original untouched;
* ``generate`` (causal LMs): 8 greedy new tokens through the KV cache equal the reference's;
* ``reload``: ``save_pretrained`` → ``AutoModelFor….from_pretrained``: no missing or unexpected
  keys, the same logits, the layer count and per-layer lists as saved;
* ``sublayers``: how many attention and MLP sub-layers ``find_blocks(level="sublayer")`` offers
  (none is an answer: a post-norm layer is offered whole); where it offers some, the first layer's
  attention and the last layer's MLP removed, logits equal to the original with them answering
  zeros within 1e-5, 8 greedy tokens through the KV cache equal to that reference's (causal LMs),
  and ``save_pruned`` → ``load_pruned`` the same logits. A wrong sub-layer removal fails the model.

    python benchmarks/hf_zoo.py --out hf_zoo.jsonl --markdown hf_zoo.md     # resumes an earlier --out
    python benchmarks/hf_zoo.py --only llama gpt2 --task causal-lm --out /tmp/z.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

VOCAB = 256
LAYERS = 4
SIZES = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": LAYERS, "head_dim": 16, "vocab_size": VOCAB, "unpadded_vocab_size": VOCAB,
    "max_position_embeddings": 256,
    "d_model": 64, "encoder_layers": LAYERS, "decoder_layers": LAYERS, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_layers": LAYERS,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "ffn_hidden_size": 128,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "sliding_window": 8, "rotary_dim": 8,
    "index_head_dim": 16, "index_n_heads": 4, "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16,
}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "depth": 1,
          "num_heads": 2, "num_experts": 4, "num_local_experts": 4, "moe_intermediate_size": 32}
# The keys that count a configuration's layers, in the order they are looked for.
COUNT_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "decoder_layers")
# Integer settings that place layer kinds by index (a period, an offset, an interval, ...) or count a part of
# the stack: searched for the placement that keeps every layer kind (see `_place`).
PLACEMENT = re.compile(r"period|offset|interval|_step$|_freq$|every|_layers$")
# Integer settings that count a part of the stack: kept in proportion.
PART = re.compile(r"(n|num)_\w+_layers")
# Widths that are, by default, one of the hidden sizes (an adapter's output is the text model's width, ...).
WIDTH = re.compile(r"(hidden|adapter|embed)\w*_(dim|size)$")
# Integer lists that name layers by index (attention layers, MoE layers, ...).
INDEX_LIST = re.compile(r"(_layers|_ids|_idxs|_indices)$")
TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id")
# What a family needs that its defaults lack or that no general rule derives, by the model type of the
# (sub-)configuration it applies to, or as "<model type>.<sub-configuration>": each is that family's own rule.
FAMILY = {
    # The defaults place no attention layer, and transformers' masking needs one (released checkpoints have some).
    "bamba": {"attn_layer_indices": [1, 2]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention", "full_attention", "linear_attention"]},
    # `block_types` is a pattern the stack cycles through (3 entries by default); 4 entries give each of the 4
    # layers its own, so that each kind sits at an even and an odd position.
    "recurrent_gemma": {"block_types": ["recurrent", "attention", "attention", "recurrent"]},
    # The rotary settings are per layer type, and the default has none (released checkpoints set them).
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    # The attention sub-configuration carries the rotary base in released checkpoints; the class omits it.
    "dbrx.attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0},
    # An assistant reads every layer's keys and values from its target model: no per-layer inputs.
    "gemma4_assistant": {"text_config": {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}},
    # The default names no layer kinds (released checkpoints mix short convolutions and attention).
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "full_attention", "conv"]},
    # Indexed-attention layers need the QSA indexer's sizes, which default to None.
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
                       "indexer_compress_ratio": 4},
    # The decoder reads its codebooks as consecutive rows of input ids: one codebook, one row per example; its
    # generation starts from the decoder start token (which released generation configurations set).
    "musicgen_decoder": {"num_codebooks": 1, "decoder_start_token_id": 1},
    "musicgen_melody_decoder": {"num_codebooks": 1, "decoder_start_token_id": 1},
    # Input, recurrent and output sections (8, 20, 8 by default): one input and one output layer around 2 recurrent.
    "dory": {"n_input_layers": 1, "n_output_layers": 1},
    # The language the adapters use when the input names none (what `set_default_language` stores).
    "xmod": {"default_language": "en_XX"},
    # The query/key width (hidden × qk_dim_factor) must be a multiple of 64: the cache rounds it up, the layer not.
    "xlstm": {"hidden_size": 128, "embedding_dim": 128},
    # The 2-D position embedding concatenates 4 coordinates and 2 shapes to the hidden size: 4 × 12 + 2 × 8 = 64.
    "layoutlmv3": {"coordinate_size": 12, "shape_size": 8},
    # The layout embedding concatenates 6 embeddings of hidden_size // 6: the hidden size is a multiple of 6.
    "lilt": {"hidden_size": 96},
    # Axial position embeddings: the shape multiplies to the longest sequence, the widths sum to the hidden size.
    "reformer": {"axial_pos_shape": (16, 16), "axial_pos_embds_dim": (16, 48)},
}
CHECKS = ("built", "found", "removed", "generate", "reload")


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise Timeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_count(config) -> tuple[str | None, int]:
    for key in COUNT_KEYS:
        value = getattr(config, key, None)
        if _is_int(value) and value > 0:
            return key, value
    return None, 0


def _kind(name: str, value, count: int) -> str | None:
    """How ``value`` is a per-layer setting of a ``count``-layer stack: ``"index"`` (a list of layer indices),
    ``"source"`` (a list naming, for each layer, the earlier layer it reads from), ``"list"`` (one entry per layer),
    ``"dict"`` (keyed by layer index); None when it is none."""
    if count < 2 or name in ("architectures", "id2label", "label2id"):
        return None
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value) and INDEX_LIST.search(name):
        if all(0 <= v < count for v in value) and list(value) == sorted(set(value)):
            return "index"
        if len(value) == count and all(0 <= v <= i for i, v in enumerate(value)):
            return "source"
    if isinstance(value, (list, tuple)) and len(value) == count:
        return "list"
    if isinstance(value, dict) and value and "layer" in name and all(str(k).isdigit() for k in value) \
            and all(int(k) < count for k in value):
        return "dict"
    return None


def _per_layer(name: str, value, count: int) -> list | None:
    """``value`` as one hashable entry per layer (see `_kind`), or None."""
    kind = _kind(name, value, count)
    if kind == "index":
        return [i in value for i in range(count)]
    if kind == "source":
        return ["own" if v == i else "earlier" for i, v in enumerate(value)]
    if kind == "dict":
        by_index = {int(k): v for k, v in value.items()}
        return [json.dumps(by_index.get(i), sort_keys=True, default=str) for i in range(count)]
    if kind == "list":
        return [json.dumps(v, sort_keys=True, default=str) for v in value]
    return None


def _layer_settings(config, count: int) -> dict[str, list] | None:
    """Every per-layer setting of ``config`` (its fields and its properties, such as a ``layers_block_type``
    derived from a period), as one hashable entry per layer; None when a property refuses the configuration."""
    values = config.to_dict()
    names = set(values) | {n for n in dir(type(config))
                           if not n.startswith("_") and isinstance(getattr(type(config), n, None), property)}
    out = {}
    for name in sorted(names):
        try:
            value = values[name] if name in values else getattr(config, name)
        except ValueError:
            return None  # e.g. KV sharing whose producing layers are missing
        except Exception:  # noqa: BLE001 - a property that is no per-layer setting
            continue
        entries = _per_layer(name, value, count)
        if entries is not None:
            out[name] = entries
    return out


def _variety(rows) -> tuple[int, int, int]:
    """How well 4 layers keep each setting's kinds: kinds present, kinds at both an even and an odd position
    (removing layers 1 and 3 keeps one and removes one), kinds among the kept layers."""
    present = both = kept = 0
    for row in rows:
        even, odd = set(row[0::2]), set(row[1::2])
        present, both, kept = present + len(even | odd), both + len(even & odd), kept + len(even)
    return present, both, kept


def _choices(settings: dict[str, list], values: dict, count: int, layers: int) -> list[list[int]]:
    """Choices of ``layers`` layers of the default stack (in order), the ones that keep the most of the variety
    of its per-layer settings (``settings``: those the configuration takes, an entry per layer) first, the
    earliest first among equals."""
    kinds = [tuple(s[i] for s in settings.values()) for i in range(count)]
    where = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in dict.fromkeys(kinds)}
    pool = sorted({i for at in where.values() for i in at[:layers] + at[-1:]})[:28]
    sources = [values[n] for n in settings if _kind(n, values[n], count) == "source"]

    def score(chosen):
        if any(value[i] not in chosen for value in sources for i in chosen):
            return None  # a layer would read from a layer left out
        return _variety([[s[i] for i in chosen] for s in settings.values()]), -sum(chosen)

    scored = [(s, chosen) for chosen in itertools.combinations(pool, layers) if (s := score(chosen)) is not None]
    return [list(chosen) for _, chosen in sorted(scored, reverse=True)]


def _cut(name: str, value, chosen: list[int], count: int):
    """The per-layer setting ``value`` for the layers ``chosen`` (renumbered 0…3)."""
    kind = _kind(name, value, count)
    if kind == "dict":
        by_index = {int(k): v for k, v in value.items()}
        return {new: by_index[old] for new, old in enumerate(chosen) if old in by_index}
    if kind == "index":
        return type(value)(new for new, old in enumerate(chosen) if old in value)
    if kind == "source":
        return type(value)(chosen.index(value[old]) for old in chosen)
    return type(value)(value[old] for old in chosen)


def _sizes(values: dict, config, sizes: dict, widths: dict | None = None) -> dict:
    """The tiny ``sizes`` for the keys this configuration has (under their own names, not their aliases; a size
    the default turns off with 0 stays off), with the sizes that depend on one another kept in the
    relation the default has; ``widths`` maps other default widths (a text model's) to their tiny ones."""
    aliases = getattr(config, "attribute_map", {})

    def default(key):
        return values.get(aliases.get(key, key))

    out = {aliases.get(k, k): v for k, v in sizes.items() if (k in values or k in aliases) and default(k) != 0}
    if default("num_key_value_heads") == default("num_attention_heads") and "num_key_value_heads" in out:
        out["num_key_value_heads"] = out.get(aliases.get("num_attention_heads", "num_attention_heads"))  # no GQA
    rope, nope = default("qk_rope_head_dim"), default("qk_nope_head_dim")
    for key in ("head_dim", "qk_head_dim"):  # multi-head latent attention: the rotary part, or rotary + rest
        if key in values and rope is not None and values[key] == rope:
            out[key] = SIZES["qk_rope_head_dim"]
        elif key in values and rope is not None and nope is not None and values[key] == rope + nope:
            out[key] = SIZES["qk_rope_head_dim"] + SIZES["qk_nope_head_dim"]
    if _is_int(values.get("index_num_heads")):  # the indexer's heads read one key/value head's query heads
        out["index_num_heads"] = out.get("num_attention_heads", 4) // out.get("num_key_value_heads", 2)
    if _is_int(default("n_group")) and default("n_group") > 1:  # expert groups: 2 of 2 experts, 1 chosen
        out.update({aliases.get("n_group", "n_group"): 2, aliases.get("topk_group", "topk_group"): 1})
    top_k = aliases.get("num_experts_per_tok", "num_experts_per_tok")
    if _is_int(values.get(top_k)) and values[top_k] < SIZES["num_experts_per_tok"]:
        out[top_k] = values[top_k]
    if all(_is_int(values.get(k)) for k in ("expand", "num_heads", "head_dim")):  # Mamba-2: heads span the inner width
        out["num_heads"] = out.get("hidden_size", 64) * values["expand"] // out["head_dim"]
    widths = {default("hidden_size"): out.get(aliases.get("hidden_size", "hidden_size")), **(widths or {})}
    for key, value in values.items():  # adapters and embeddings as wide as this model or the text model
        if key not in out and _is_int(value) and WIDTH.search(key) and widths.get(value):
            out[key] = widths[value]
    return out


def _tiny(values: dict, config, base: dict, sizes: dict = SIZES, layers: int = LAYERS, widths=None) -> dict:
    """The tiny settings (``sizes``, ``layers`` layers) of one (sub-)configuration whose defaults are ``values``
    (``config`` built from them) and which is made from ``base`` updated with them."""
    out = _sizes(values, config, sizes, widths)
    for key in TOKEN_KEYS:
        token = values.get(key)
        if isinstance(token, int) and token >= VOCAB:
            out[key] = 1
        elif isinstance(token, list):
            out[key] = [t if t < VOCAB else 1 for t in token]
    if "pad_token_id" in values and values.get("pad_token_id") is None:
        out["pad_token_id"] = 0  # a classifier reads the last token before padding
    key, count = _layer_count(config)
    if count <= layers:
        return out
    for name, value in values.items():
        if isinstance(value, list) and len(value) == count and name in sizes:  # a size per layer
            out[name] = [sizes[name]] * layers
        elif _is_int(value) and 0 < value <= count and PART.fullmatch(name) and name not in out:
            out[name] = max(1, round(value * layers / count))  # a part of the stack, in proportion
    defaults = _layer_settings(config, count) or {}
    settings = {n: s for n, s in defaults.items() if n in values and n not in out}  # those the configuration takes
    best = None
    for chosen, ratio in itertools.product((_choices(settings, values, count, layers) if settings else [])[:50],
                                           (True, False)):
        trial = dict(out)  # the first choice the family accepts (KV sharing needs its producing layers, ...)
        for name in settings:
            trial[name] = _cut(name, values[name], chosen, count)
            size = next((k for k in sizes if k in name and _is_int(values.get(k)) and k in out), None)
            if size and isinstance(trial[name], list) and all(_is_int(v) for v in trial[name]):
                trial[name] = [max(1, round(out[size] * v / values[size])) for v in trial[name]]  # a size per layer
            if isinstance(trial[name], dict):  # per-layer overrides: their sizes made tiny too
                trial[name] = {i: _override(entry, values, out, config, sizes, ratio)
                               for i, entry in trial[name].items()}
        best = best or trial
        if _accepted(type(config), {**base, **trial}, layers):
            best = trial
            break
    kinds = {n: set(s) for n, s in defaults.items()  # the layer kinds by name, or whether a layer is named
             if all(isinstance(e, bool) or e.startswith('"') for e in s)}
    return _place(type(config), values, base, best or out, key, layers, kinds)


def _override(entry, values: dict, out: dict, config, sizes: dict, ratio: bool):
    """A per-layer override's sizes made tiny: in the ratio the default has to the global size (``ratio``), or
    as the tiny global size with the relations of `_sizes`."""
    if not isinstance(entry, dict):
        return entry
    plain = {k: v for k, v in _sizes({**values, **entry}, config, sizes).items() if k in entry}
    scaled = {k: max(1, round(out[k] * v / values[k])) for k, v in entry.items()
              if ratio and _is_int(v) and _is_int(values.get(k)) and values[k] and _is_int(out.get(k))}
    return {**entry, **plain, **scaled}


def _accepted(cls, settings: dict, layers: int) -> bool:
    try:
        return _layer_settings(cls(**settings), layers) is not None
    except Exception:  # noqa: BLE001 - a configuration this family refuses
        return False


def _place(cls, values: dict, base: dict, out: dict, count_key: str | None, layers: int, kinds: dict) -> dict:
    """``out`` with the integer placement settings (periods, offsets, intervals, ...) changed where that keeps
    more of the default's layer kinds (``kinds``, by setting) in ``layers`` layers (each kind at an even and an
    odd position where it can be), and no kind the default lacks."""

    def rate(settings: dict):
        try:
            config = cls(**{**base, **settings})
        except Exception:  # noqa: BLE001 - a configuration this family refuses
            return None
        lists = _layer_settings(config, layers)
        if lists is None or any(not set(s) <= kinds[n] for n, s in lists.items() if n in kinds):
            return None
        return _variety(lists.values())

    knobs = [k for k, v in values.items() if _is_int(v) and v >= 0 and PLACEMENT.search(k)
             and not PART.fullmatch(k) and k not in SIZES and k not in COUNT_KEYS and k != count_key]
    best = rate(out) if knobs else None
    for _ in range(2 if knobs else 0):
        for knob in knobs:
            for value in range(layers + 1):
                trial = {**out, knob: value}
                score = rate(trial)
                if score is not None and (best is None or score > best):
                    out, best = trial, score
    return out


def _tiny_tree(config, keys: tuple[str, ...], base: dict, widths: dict, tower: bool = False) -> dict:
    """The tiny settings of ``config`` and of each of its sub-configurations, with what ``FAMILY`` holds for it
    under any of ``keys``: vision and audio towers (``tower``) with `VISION`'s sizes and one layer."""
    values = config.to_dict()
    out = _tiny(values, config, base, *((VISION, 1) if tower else (SIZES, LAYERS)), widths=widths)
    family = {k: v for key in keys for k, v in FAMILY.get(key, {}).items()}
    subs = getattr(config, "sub_configs", {})
    for name in subs:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            own = _tiny_tree(sub, (sub.model_type, f"{keys[0]}.{name}"), sub.to_dict(), widths,
                             tower or "vision" in name or "audio" in name)
            out[name] = {**sub.to_dict(), **own, **family.get(name, {})}
    return {**out, **{k: v for k, v in family.items() if k not in subs}}


def tiny_config(model_type: str, task: str = "causal-lm"):
    """``model_type``'s configuration with the tiny sizes and 4 layers that keep its layer kinds (a decoder where
    the family's configuration says whether it is one and ``task`` is a causal LM)."""
    import transformers

    try:
        default = transformers.AutoConfig.for_model(model_type)
    except Exception:  # noqa: BLE001 - a default that only builds with the family's own settings
        default = transformers.AutoConfig.for_model(model_type, **FAMILY.get(model_type, {}))
    try:
        text = default.get_text_config(decoder=True)
    except ValueError:  # more than one
        text = default
    kwargs = _tiny_tree(default, (model_type,), {}, {getattr(text, "hidden_size", None): SIZES["hidden_size"]})
    if task == "causal-lm" and "is_decoder" in default.to_dict():
        kwargs["is_decoder"] = True  # an encoder family's causal LM (BertLMHeadModel, ...) runs as a decoder
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def build(auto, config):
    """``auto``'s model for ``config``; where that model's class is made from a sub-configuration (a decoder's),
    from that sub-configuration, as transformers does for a ``text_config``."""
    model_class = auto._model_mapping[type(config)]
    wanted = getattr(model_class, "config_class", None)
    if wanted is not None and not isinstance(config, wanted):
        for name in getattr(config, "sub_configs", {}):
            if isinstance(getattr(config, name, None), wanted):
                return model_class._from_config(getattr(config, name))
    return auto.from_config(config)


def logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def check(model_type: str, task: str, limit: int) -> dict:
    import transformers

    from layerprune import find_blocks, remove_blocks
    from layerprune.surgery.hf import layer_list, skip_reference, skipping

    record: dict = {"model_type": model_type, "task": task, **{c: None for c in CHECKS}, "sublayers": None}
    auto = transformers.AutoModelForCausalLM if task == "causal-lm" else transformers.AutoModelForSequenceClassification
    step = "built"
    try:
        with time_limit(limit):
            torch.manual_seed(0)
            model = build(auto, tiny_config(model_type, task)).eval()
            record.update(built=True, cls=type(model).__name__)
            step = "found"
            ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(ids)  # warm-up: lazy initialisation, caches
                passes = []
                for _ in range(3):
                    start = time.perf_counter()
                    model(ids)
                    passes.append(time.perf_counter() - start)
            forward = statistics.median(passes)
            start = time.perf_counter()
            blocks = find_blocks(model, ids)
            record["find_x_forward"] = round((time.perf_counter() - start) / max(forward, 1e-6), 2)
            path, layers = layer_list(model)
            offered = [b.name for b in blocks if b.removable]
            record.update(layers=path, count=len(layers))
            if offered != [f"{path}.{i}" for i in range(len(layers))] or len(layers) < 3:
                raise AssertionError(f"offered {offered} of {path} ({len(layers)} layers)")
            record["found"] = True
            step = "removed"
            before = {k: v.clone() for k, v in model.state_dict().items()}
            names = [f"{path}.{i}" for i in range(1, len(layers), 2)]
            removed = [i for i in range(1, len(layers), 2)]
            reference = skip_reference(model, path, removed, ids)
            pruned = remove_blocks(model, names, ids)
            with torch.no_grad():
                gap = (logits(pruned(ids)) - reference).abs().max().item()
            untouched = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            record["max_abs_diff"] = gap
            if gap > 1e-5 or not untouched:
                raise AssertionError(f"max |Δ| {gap:.3g} vs the skip reference" if gap > 1e-5 else "original changed")
            record["removed"] = True
            if task == "causal-lm":
                step = "generate"
                prompt = ids[:1, :6]
                kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
                with skipping(model, path, removed), torch.no_grad():
                    expected = model.generate(prompt, **kwargs)
                with torch.no_grad():
                    got = pruned.generate(prompt, **kwargs)
                if not torch.equal(got, expected):
                    raise AssertionError("generated tokens differ from the reference's")
                record["generate"] = True
            step = "reload"
            with tempfile.TemporaryDirectory() as folder:
                pruned.save_pretrained(folder)
                again, info = auto.from_pretrained(folder, output_loading_info=True)
                again.eval()
                with torch.no_grad():
                    same = torch.equal(logits(again(ids)), logits(pruned(ids)))
                problems = [f"{k}: {sorted(info[k])[:3]}" for k in ("missing_keys", "unexpected_keys") if info[k]]
                if len(again.get_submodule(path)) != len(layers) - len(removed):
                    problems.append(f"{len(again.get_submodule(path))} layers reloaded")
                if not same:
                    problems.append("other logits")
                if problems:
                    raise AssertionError("; ".join(problems))
            record["reload"] = True
            step = "sublayers"
            record["sublayers"] = sublayers(model, path, ids, task)
    except Exception as exc:  # noqa: BLE001 - one model never stops the sweep
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        record[step] = False
        record["failure"] = f"{step}: {type(exc).__name__}: {first[:300]}"
        if "--trace" in sys.argv:
            traceback.print_exc()
    return record


def sublayers(model, path: str, ids: torch.Tensor, task: str) -> int:
    """How many sub-layers ``find_blocks(level="sublayer")`` offers; where it offers some, the first
    layer's attention and the last layer's MLP are removed: logits equal to the original with them
    answering zeros (within 1e-5), 8 greedy tokens through the KV cache equal to that reference's
    (causal LMs), and ``save_pruned`` → ``load_pruned`` gives the same logits (AssertionError if not)."""
    from layerprune import find_blocks, load_pruned, remove_blocks
    from layerprune.surgery.hf import save_pruned, skip_reference, skipping
    from layerprune.surgery.hf_sublayers import residual_branches

    offered = [b.name for b in find_blocks(model, ids, level="sublayer") if b.stand_in == "zeros"]
    if not offered:
        return 0
    kinds = residual_branches(model, path, ids)[0]
    attention = [n for n in offered if kinds.get(n) == "attention"]
    mlp = [n for n in offered if kinds.get(n) == "mlp"]
    names = attention[:1] + mlp[-1:]
    reference = skip_reference(model, path, [], ids, names)
    pruned = remove_blocks(model, names, ids)
    with torch.no_grad():
        gap = (logits(pruned(ids)) - reference).abs().max().item()
    if gap > 1e-5:
        raise AssertionError(f"sub-layers {names}: max |Δ| {gap:.3g} vs the reference")
    if task == "causal-lm":
        prompt, kwargs = ids[:1, :6], dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        with skipping(model, path, [], names), torch.no_grad():
            expected = model.generate(prompt, **kwargs)
        with torch.no_grad():
            if not torch.equal(pruned.generate(prompt, **kwargs), expected):
                raise AssertionError(f"sub-layers {names}: generated tokens differ from the reference's")
    with tempfile.TemporaryDirectory() as folder:
        again = load_pruned(save_pruned(pruned, Path(folder) / "m", removed=names))
        with torch.no_grad():
            if not torch.equal(logits(again(ids)), logits(pruned(ids))):
                raise AssertionError(f"sub-layers {names}: other logits after load_pruned")
    return len(offered)


def families(task: str) -> list[str]:
    from transformers.models.auto import modeling_auto

    mapping = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task == "causal-lm"
               else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    return list(mapping)


def passed(record: dict) -> bool:
    needed = CHECKS if record["task"] == "causal-lm" else tuple(c for c in CHECKS if c != "generate")
    return all(record.get(c) for c in needed) and record.get("sublayers") is not False


def markdown(records: list[dict]) -> str:
    lines = []
    for task in ("causal-lm", "sequence-classification"):
        rows = sorted((r for r in records if r["task"] == task), key=lambda r: r["model_type"])
        if not rows:
            continue
        ok = [r for r in rows if passed(r)]
        times = [r["find_x_forward"] for r in rows if r.get("find_x_forward") is not None]
        lines += [f"### {task}: {len(ok)} of {len(rows)} model types pass every check", "",
                  f"Median `find_blocks` time: {statistics.median(times):.2f}× one forward pass "
                  f"(max {max(times):.2f}×)." if times else "", "",
                  "| model type | class | layers | found | removed | generate | reload | sub-layers | find × fwd | failure |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        mark = {True: "yes", False: "**no**", None: ""}
        for r in rows:
            lines.append(f"| {r['model_type']} | {r.get('cls', '')} | {r.get('layers', '')} | {mark[r['found']]} | "
                         f"{mark[r['removed']]} | {mark[r['generate']]} | {mark[r['reload']]} | "
                         f"{mark.get(r.get('sublayers'), r.get('sublayers'))} | "
                         f"{r.get('find_x_forward', '')} | {r.get('failure', '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="hf_zoo.jsonl", help="one JSON record per line; resumed when it exists")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--only", nargs="*", default=[], help="these model types")
    parser.add_argument("--task", choices=["causal-lm", "sequence-classification"], action="append")
    parser.add_argument("--time-limit", type=int, default=180)
    parser.add_argument("--trace", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    out = Path(args.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["task"], r["model_type"])] = r
    for task in args.task or ["causal-lm", "sequence-classification"]:
        for model_type in families(task):
            if (args.only and model_type not in args.only) or (task, model_type) in done:
                continue
            record = check(model_type, task, args.time_limit)
            record["transformers"], record["commit"] = transformers.__version__, commit
            done[(task, model_type)] = record
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{task:24} {model_type:28} {'ok' if passed(record) else record.get('failure', '')}", flush=True)
    records = list(done.values())
    for task in ("causal-lm", "sequence-classification"):
        rows = [r for r in records if r["task"] == task]
        if rows:
            print(f"{task}: {sum(passed(r) for r in rows)} of {len(rows)} pass")
    if args.markdown:
        Path(args.markdown).write_text(markdown(records))


if __name__ == "__main__":
    main()

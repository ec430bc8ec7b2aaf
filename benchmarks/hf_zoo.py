"""Layer surgery across transformers: every model type of its causal-LM and sequence-classification
auto mappings, built from a tiny configuration on the CPU (a benchmark, not a test).

Each model type gets its own configuration's defaults with the sizes made tiny (hidden 64, 4 layers
of 4 heads, 2 key/value heads, vocabulary 256, 4 experts where it has experts; the same in a
``text_config`` where the model keeps one), random weights, float32, eval mode. Then:

* ``built``: the tiny model exists (a model type that cannot be built this way fails here, with
  transformers' reason);
* ``found``: ``find_blocks`` offers exactly the layer list's entries (as many as the configuration's
  layer count), its time as a multiple of one forward pass of the same tokens (batch 2 × 16);
* ``removed``: layers 1 and 3 taken out (``remove_blocks``), logits equal to the original with
  those layers skipped within 1e-5, the original untouched;
* ``generate`` (causal LMs): 8 greedy new tokens through the KV cache equal the reference's;
* ``reload``: ``save_pretrained`` → ``AutoModelFor….from_pretrained``: no missing or unexpected
  keys, the same logits, the layer count and per-layer lists as saved;
* ``sublayers``: whether attention and MLP sub-layers are offered.

    python benchmarks/hf_zoo.py --out hf_zoo.jsonl --markdown hf_zoo.md     # resumes an earlier --out
    python benchmarks/hf_zoo.py --only llama gpt2 --task causal-lm --out /tmp/z.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

VOCAB = 256
SIZES = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 4, "head_dim": 16, "vocab_size": VOCAB, "max_position_embeddings": 256,
    "d_model": 64, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_layers": 4,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "ffn_hidden_size": 128,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "sliding_window": 8, "rotary_dim": 8,
}
TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id")
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


def _tiny(values: dict, reference) -> dict:
    known = set(values) | set(getattr(reference, "attribute_map", {}))
    out = {k: v for k, v in SIZES.items() if k in known}
    for key in TOKEN_KEYS:
        token = values.get(key)
        if isinstance(token, int) and token >= VOCAB:
            out[key] = 1
        elif isinstance(token, list):
            out[key] = [t if t < VOCAB else 1 for t in token]
    if "pad_token_id" in values and values.get("pad_token_id") is None:
        out["pad_token_id"] = 0  # a classifier reads the last token before padding
    if isinstance(values.get("layer_types"), list):
        out["layer_types"] = None  # made again for 4 layers where the configuration derives it
    return out


def tiny_config(model_type: str):
    import transformers

    default = transformers.AutoConfig.for_model(model_type)
    kwargs = _tiny(default.to_dict(), default)
    sub = getattr(default, "text_config", None)
    if sub is not None and hasattr(sub, "to_dict"):
        kwargs["text_config"] = {**sub.to_dict(), **_tiny(sub.to_dict(), sub)}
    for name in ("vision_config", "audio_config"):
        part = getattr(default, name, None)
        if part is not None and hasattr(part, "to_dict"):
            values = part.to_dict()
            kwargs[name] = {**values, **{k: v for k, v in {"hidden_size": 32, "intermediate_size": 64,
                                                          "num_hidden_layers": 1, "num_attention_heads": 2,
                                                          "depth": 1, "num_heads": 2}.items() if k in values}}
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    if getattr(config, "layer_types", "absent") is None:
        config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in kwargs.items() if k != "layer_types"})
    return config


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
            model = auto.from_config(tiny_config(model_type)).eval()
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
            try:
                record["sublayers"] = sum(b.removable for b in find_blocks(model, ids, level="sublayer"))
            except Exception:  # noqa: BLE001 - not offered is the answer
                record["sublayers"] = 0
    except Exception as exc:  # noqa: BLE001 - one model never stops the sweep
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        record[step] = False
        record["failure"] = f"{step}: {type(exc).__name__}: {first[:300]}"
        if "--trace" in sys.argv:
            traceback.print_exc()
    return record


def families(task: str) -> list[str]:
    from transformers.models.auto import modeling_auto

    mapping = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task == "causal-lm"
               else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    return list(mapping)


def passed(record: dict) -> bool:
    needed = CHECKS if record["task"] == "causal-lm" else tuple(c for c in CHECKS if c != "generate")
    return all(record.get(c) for c in needed)


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
                  "| model type | class | layers | found | removed | generate | reload | find × fwd | failure |",
                  "|---|---|---|---|---|---|---|---|---|"]
        mark = {True: "yes", False: "**no**", None: ""}
        for r in rows:
            lines.append(f"| {r['model_type']} | {r.get('cls', '')} | {r.get('layers', '')} | {mark[r['found']]} | "
                         f"{mark[r['removed']]} | {mark[r['generate']]} | {mark[r['reload']]} | "
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

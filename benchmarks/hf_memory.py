"""Memory of layer removal on a large transformers model (a benchmark, not a test).

A random-init Llama of about 1B parameters (hidden 2048, 16 layers, vocabulary 32,000; 16 query
and 8 key/value heads) in bf16 is built, then half its layers are removed in place
(``remove_blocks(..., inplace=True)``, after ``find_blocks``). The peak resident memory of the
process is reset (``/proc/self/clear_refs``) once the model is built, so the figure is what finding
and removing added on top of the model: the goal is at most 10% of the model's size.

    python benchmarks/hf_memory.py [--layers 16] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    import transformers

    from layerprune import find_blocks, remove_blocks
    from layerprune.surgery.hf import layer_indices

    config = transformers.AutoConfig.for_model(
        "llama", hidden_size=args.hidden, intermediate_size=args.hidden * 4, num_hidden_layers=args.layers,
        num_attention_heads=16, num_key_value_heads=8, vocab_size=args.vocab, max_position_embeddings=2048)
    start = time.perf_counter()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    built = time.perf_counter() - start
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    params_before = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, args.vocab, (1, args.tokens))
    reset_peak()
    base = rss_kib("VmRSS")
    start = time.perf_counter()
    blocks = find_blocks(model, ids)
    found = time.perf_counter() - start
    names = [b.name for b in blocks if b.removable][1::2]
    start = time.perf_counter()
    pruned = remove_blocks(model, names, ids, inplace=True, blocks=blocks)
    removed = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    assert pruned is model and [v for _, v in layer_indices(model)] == list(range(args.layers - len(names)))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    added = (peak - base) * 1024
    print(json.dumps({
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
        "model_bytes_before": size,
        "layers": [args.layers, args.layers - len(names)], "build_s": round(built, 1), "find_s": round(found, 2),
        "remove_s": round(removed, 2), "rss_before_mib": round(base / 1024), "peak_mib": round(peak / 1024),
        "peak_added_mib": round(added / 2**20, 1), "peak_added_share_of_model": round(added / size, 4),
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()

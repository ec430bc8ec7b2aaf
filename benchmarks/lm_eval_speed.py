"""Throughput of perplexity evaluation against a bare loop (a benchmark, not a test).

A random-init Llama (hidden 256, 4 layers, vocabulary 4,096) measures 64 windows of 128 tokens,
8 windows a batch, two ways, alternately in one process so that both see the same machine:
``layerprune.tasks.CausalLM.evaluate`` (next-token NLL and hits over every predicted token), and a
bare loop summing ``model(input_ids, labels=input_ids).loss`` times the predicted tokens under
``torch.no_grad``. Both give the same perplexity (checked); the figure is the ratio of their
throughputs (tokens per second), median over the rounds: the goal is at least 0.95.

    python benchmarks/lm_eval_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    import transformers

    from layerprune.tasks import CausalLM

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                                      num_key_value_heads=4, num_hidden_layers=4, vocab_size=4096,
                                      max_position_embeddings=args.seq_len)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 4096, (args.windows, args.seq_len), generator=torch.Generator().manual_seed(1))
    task, batches = CausalLM(args.seq_len), CausalLM.batches(windows, 8)
    tokens = args.windows * (args.seq_len - 1)

    def ours() -> float:
        return task.evaluate(model, batches).perplexity

    def bare() -> float:
        total = 0.0
        with torch.no_grad():
            for x, y in batches:
                total += float(model(x, labels=y).loss) * len(x) * (args.seq_len - 1)
        return math.exp(total / tokens)

    ours(), bare()  # warm-up
    times: dict[str, list[float]] = {"layerprune": [], "bare": []}
    values = {}
    for _ in range(args.rounds):
        for name, fn in (("layerprune", ours), ("bare", bare)):
            start = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - start)
    assert math.isclose(values["layerprune"], values["bare"], rel_tol=1e-4), values
    ratios = [b / o for o, b in zip(times["layerprune"], times["bare"])]
    print(json.dumps({
        "windows": args.windows, "seq_len": args.seq_len, "tokens_scored": tokens, "perplexity": values["bare"],
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "throughput_ratios": [round(r, 3) for r in ratios],
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()

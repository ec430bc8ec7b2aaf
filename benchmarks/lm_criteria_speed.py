"""Cost of the one-pass criteria on a language model against one forward pass (a benchmark, not a test).

A random-init Llama scores its layers on calibration windows of a real text (the standard
library's documentation, tokenized by a BPE tokenizer trained on it) with ``angular``,
``block_influence`` and ``modularity`` (next-token classes: at most 1,000 positions a batch), each
in a fresh scoring context, so each pays its own pass over the features. The reference is one
forward pass of the same windows (``model(input_ids, use_cache=False)`` under ``torch.no_grad``,
batch by batch as the stream cuts them). Rounds alternate the four in one process; the figure is
each criterion's median time over the forward pass's median: the goal is at most 1.5.

    python benchmarks/lm_criteria_speed.py [--hidden 512 --layers 8 --seq-len 512 --windows 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CRITERIA = ("angular", "block_influence", "modularity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=32, help="calibration windows per batch")
    parser.add_argument("--batches", type=int, default=2, help="calibration batches")
    args = parser.parse_args()

    import transformers

    from layerprune import Calibration, Pruner
    from layerprune.calibration import MICRO_BATCH
    from layerprune.data import build_dataset
    from layerprune.tasks import CausalLM

    data = build_dataset("text", corpus="pydoc", seq_len=args.seq_len, vocab_size=4096)
    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                                      num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 128,
                                      num_hidden_layers=args.layers, vocab_size=data.num_classes,
                                      max_position_embeddings=args.seq_len)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    task = CausalLM(args.seq_len)
    calibration = Calibration(samples=args.windows, batches=args.batches)
    windows = [x for x, _ in Pruner("random", task=task, calibration=calibration).context(model, data).batches()]

    def forward() -> None:
        with torch.no_grad():
            for batch in windows:
                for piece in batch.split(MICRO_BATCH):
                    model(piece, use_cache=False)

    def scorer(name: str):
        def score() -> None:
            Pruner(name, task=task, calibration=calibration).score(model, data)
        return score

    runs = {"forward": forward, **{c: scorer(c) for c in CRITERIA}}
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({"setting": {"hidden": args.hidden, "layers": args.layers, "seq_len": args.seq_len,
                                  "windows": args.windows * args.batches, "threads": torch.get_num_threads()},
                      "forward_s": round(median["forward"], 3),
                      "ratio": {c: round(median[c] / median["forward"], 2) for c in CRITERIA}}, indent=1))


if __name__ == "__main__":
    main()

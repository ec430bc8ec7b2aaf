"""Surgery benchmarks (not tests): inspect time, and pruned ResNet-56 latency vs MACs.

1. How long ``find_blocks`` takes on timm's ``deit_tiny_patch16_224`` and ``resnet50`` (batch 2,
   224×224, 2 threads), as a multiple of one forward pass of the same batch timed alongside
   (goal ≤ 25×).
2. ResNet-56 with blocks [2, 3, 6] kept per stage (the paper's modularity choice: 16 of 27
   blocks removed; the two downsampling blocks stay): measured CPU latency speed-up next to
   its MACs ratio, at batch 1 and 128, base and pruned timed side by side in one run.

    python benchmarks/surgery_bench.py
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import layerprune  # noqa: F401
from layerprune.surgery import find_blocks, measure_latency, model_cost, remove_blocks


def kept_per_stage(per_stage: int, keep: list[int]) -> list[str]:
    """Names to remove so that stage i keeps its first ``keep[i]`` blocks."""
    return [f"layer{s + 1}.{j}" for s, k in enumerate(keep) for j in range(k, per_stage)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    for name in ("deit_tiny_patch16_224", "resnet50"):
        model = timm.create_model(name).eval()
        x = torch.randn(2, 3, 224, 224)
        find_blocks(model, x)  # warm-up (first-call costs of torch and torch-pruning)
        times, forwards = [], []
        for _ in range(3):  # alternating with a plain forward pass, the unit the time is given in
            t = time.perf_counter()
            find_blocks(model, x)
            times.append(time.perf_counter() - t)
            with torch.no_grad():
                t = time.perf_counter()
                model(x)
                forwards.append(time.perf_counter() - t)
        inspect_s, forward_s = sorted(times)[1], sorted(forwards)[1]
        print(f"find_blocks {name} (batch 2, 224×224): median {inspect_s:.2f} s over 3 runs = "
              f"{inspect_s / forward_s:.1f}× one forward pass ({forward_s * 1000:.0f} ms; goal ≤ 25×)")

    base = timm.create_model("cifar_resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    removed = kept_per_stage(9, [2, 3, 6])
    pruned = remove_blocks(base, removed, x)
    cb, cp = model_cost(base, x), model_cost(pruned, x)
    print(f"ResNet-56 keep [2,3,6]: removed {len(removed)} blocks; params {cp.params:,} / {cb.params:,} "
          f"({100 * (1 - cp.params / cb.params):.1f}% fewer), MACs {cp.macs / 1e6:.1f}M / {cb.macs / 1e6:.1f}M "
          f"({100 * (1 - cp.macs / cb.macs):.1f}% fewer), MACs ratio {cb.macs / cp.macs:.2f}×")
    for batch in (1, 128):
        repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
        lb = measure_latency(base, (3, 32, 32), batch_size=batch, repeats=repeats)
        lp = measure_latency(pruned, (3, 32, 32), batch_size=batch, repeats=repeats)
        print(f"  batch {batch:>3}: base {lb.median_ms:8.2f} ms, pruned {lp.median_ms:8.2f} ms, "
              f"speed-up {lb.median_ms / lp.median_ms:.2f}× (MACs ratio {cb.macs / cp.macs:.2f}×)")


if __name__ == "__main__":
    main()

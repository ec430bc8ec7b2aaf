"""What each criterion costs (not a test): seconds per criterion on one model, next to one
forward pass over the same calibration samples, all measured side by side in one run.

Each criterion gets a fresh ``ScoringContext`` (so none reuses another's features), then all
feature-based criteria are scored together through ``score_blocks`` to show what sharing the
feature pass saves. The model is untrained: cost does not depend on the weights.

    python benchmarks/criteria_cost.py                      # ResNet-56, 500 samples × 1 batch
    python benchmarks/criteria_cost.py --model cifar_resnet20 --samples 500 --batches 5
"""

from __future__ import annotations

import argparse
import time

import torch

from layerprune import build_dataset, create_model, get_criterion, list_criteria, score_blocks
from layerprune.criteria import ScoringContext

FEATURE_BASED = ["modularity", "block_influence", "angular", "cka", "linear_probe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--criteria", nargs="*", default=None, help="default: every built-in")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    n = args.samples * args.batches
    data = build_dataset("synthetic", num_samples=max(4 * n, 2000), val_fraction=0.25, test_fraction=0.1)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).eval()
    ctx_args = dict(samples=args.samples, batches=args.batches)

    probe = ScoringContext(model, data, **ctx_args)
    x = torch.cat([probe.batch(i)[0] for i in range(probe.num_batches)])
    with torch.no_grad():
        model(x[:64])  # warm-up
        t = time.perf_counter()
        for chunk in x.split(256):
            model(chunk)
        forward = time.perf_counter() - t
    print(f"{args.model}, {probe.num_batches} × {probe.samples} calibration samples, "
          f"{len(probe.scorable)} blocks; one forward pass over them: {forward:.2f} s\n")

    names = args.criteria or [c.name for c in list_criteria() if c.origin == "builtin"]
    print(f"{'criterion':<16}{'seconds':>9}{'× forward':>11}")
    for name in names:
        t = time.perf_counter()
        get_criterion(name)(ScoringContext(model, data, **ctx_args))
        took = time.perf_counter() - t
        print(f"{name:<16}{took:>9.2f}{took / forward:>11.1f}")

    shared = [c for c in FEATURE_BASED if c in names]
    if len(shared) > 1:
        t = time.perf_counter()
        score_blocks(model, data, shared, **ctx_args)
        took = time.perf_counter() - t
        print(f"\n{' + '.join(shared)} scored together (one feature pass): {took:.2f} s "
              f"({took / forward:.1f} × forward)")


if __name__ == "__main__":
    main()

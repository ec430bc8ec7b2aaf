"""What each criterion costs (not a test): seconds per criterion on one model, next to one
forward pass over the same calibration samples, all measured side by side in one run.

Each criterion gets a fresh ``ScoringContext`` (so none reuses another's features), then all
feature-based criteria are scored together through ``score_blocks`` to show what sharing the
feature pass saves. The model is untrained: cost does not depend on the weights.

``--compare`` times the oracles that change one block at a time (``ablation``, ``sr_init``,
``cka_removal``, ``modularity_removal``, ``greedy``) twice, side by side: with ``reuse=False``
(every candidate runs the whole network, as before prefix replay) and with the default
``reuse=True`` (the network before the changed block is computed once and replayed; ``greedy``
also stops a candidate once it cannot win), and checks that both give the same scores.

    python benchmarks/criteria_cost.py                      # ResNet-56, 500 samples × 1 batch
    python benchmarks/criteria_cost.py --model cifar_resnet20 --samples 500 --batches 5
    python benchmarks/criteria_cost.py --compare            # the oracles, full runs vs replayed
    python benchmarks/criteria_cost.py --compare --model vit_tiny_patch16_224 --samples 100
"""

from __future__ import annotations

import argparse
import time

import torch

from layerprune import build_dataset, create_model, get_criterion, list_criteria, score_blocks
from layerprune.criteria import ScoringContext

FEATURE_BASED = ["modularity", "block_influence", "angular", "cka", "linear_probe"]
ORACLES = ["ablation", "sr_init", "cka_removal", "modularity_removal", "greedy"]


def compare(names: list[str], model, data, ctx_args: dict, forward: float) -> bool:
    """Each oracle with ``reuse=False`` and ``reuse=True``, side by side; True when all agree."""
    print(f"{'criterion':<20}{'full s':>9}{'replayed s':>12}{'speed-up':>10}  same scores")
    agree = True
    for name in names:
        took, scores = {}, {}
        for reuse in (False, True):
            t = time.perf_counter()
            result = get_criterion(name, reuse=reuse)(ScoringContext(model, data, **ctx_args))
            took[reuse], scores[reuse] = time.perf_counter() - t, result.scores
        same = scores[False] == scores[True]
        agree &= same
        runs = result.diagnostics.get("replay", {})
        print(f"{name:<20}{took[False]:>9.2f}{took[True]:>12.2f}{took[False] / took[True]:>9.2f}×  "
              f"{'yes' if same else 'NO'}   ({took[False] / forward:.0f} → {took[True] / forward:.0f} × forward; "
              f"recording {runs.get('recording_mib')} MiB, {runs.get('full_runs')} full runs)")
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--criteria", nargs="*", default=None, help="default: every built-in (--compare: the oracles)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own input size")
    parser.add_argument("--compare", action="store_true", help="the oracles with and without prefix replay")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    n = args.samples * args.batches
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).eval()
    size = args.image_size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 32, 32))[-1]
    data = build_dataset("synthetic", num_samples=max(4 * n, 2000), val_fraction=0.25, test_fraction=0.1,
                         image_size=size)
    ctx_args = dict(samples=args.samples, batches=args.batches)

    probe = ScoringContext(model, data, **ctx_args)
    x = torch.cat([probe.batch(i)[0] for i in range(probe.num_batches)])
    with torch.no_grad():
        model(x[:64])  # warm-up
        t = time.perf_counter()
        for chunk in x.split(256):
            model(chunk)
        forward = time.perf_counter() - t
    print(f"{args.model} at {size} px, {probe.num_batches} × {probe.samples} calibration samples, "
          f"{len(probe.scorable)} blocks; one forward pass over them: {forward:.2f} s\n")

    if args.compare:
        raise SystemExit(0 if compare(args.criteria or ORACLES, model, data, ctx_args, forward) else 1)
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

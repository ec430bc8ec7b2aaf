"""Is feeding a CIFAR ResNet from an in-memory dataset a bottleneck? (a benchmark, not a test)

Measures, side by side in one run: images/s of the data loader alone (augmented train split),
images/s of ResNet-20 training steps on pre-built batches, and images/s of the two together.

    python benchmarks/data_throughput.py --dataset mnist5k --batches 20
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from layerprune.data import build_dataset, make_loader


def _rate(n_images: int, seconds: float) -> float:
    return n_images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    bundle = build_dataset(args.dataset)
    loader = make_loader(bundle.train, args.batch_size, shuffle=True, seed=0, drop_last=True)
    model = timm.create_model(args.model, in_chans=bundle.in_chans, num_classes=bundle.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def batches():
        while True:
            yield from loader

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    it = batches()
    warm = [next(it) for _ in range(2)]
    for x, y in warm:
        step(x, y)

    t = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    load = _rate(args.batches * args.batch_size, time.perf_counter() - t)

    fixed = [next(it) for _ in range(args.batches)]
    t = time.perf_counter()
    for x, y in fixed:
        step(x, y)
    train = _rate(args.batches * args.batch_size, time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(args.batches):
        step(*next(it))
    both = _rate(args.batches * args.batch_size, time.perf_counter() - t)

    print(f"{args.dataset} → {args.model}, batch {args.batch_size}, {args.batches} batches, "
          f"{torch.get_num_threads()} threads")
    print(f"loader alone        {load:10.0f} img/s")
    print(f"train steps alone   {train:10.0f} img/s")
    print(f"loader + train      {both:10.0f} img/s  ({both / train:.2f}× train-only speed)")
    print(f"loader / train      {load / train:10.1f}×")


if __name__ == "__main__":
    main()

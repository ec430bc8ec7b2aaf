"""Is feeding a CIFAR ResNet a bottleneck? (a benchmark, not a test)

Measures, side by side in one run: images/s of the data loader alone (augmented train split),
images/s of ResNet-20 training steps on pre-built batches, and images/s of the two together.

    python benchmarks/data_throughput.py --dataset mnist5k --batches 20

With ``--folder`` (an image folder of small images, e.g. CIFAR-10 as JPEG files), the folder is read
both ways, side by side: decoded on demand (per image, ``--workers`` loader processes) and decoded
once into memory (``in_memory: true``; the time that takes is printed too), each with the CIFAR
augmentation (``crop_flip``), next to the training steps:

    python benchmarks/data_throughput.py --folder ../shared/data/cifar10-jpeg --batches 20
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Iterator

import timm
import torch

from layerprune.data import build_dataset, make_loader


def _endless(loader) -> Iterator:
    while True:
        yield from loader


def _rate(batches: int, batch_size: int, work: Callable[[], None]) -> float:
    """Images per second of ``batches`` calls of ``work``."""
    start = time.perf_counter()
    for _ in range(batches):
        work()
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--folder", default=None, help="an image folder (train/, and val/ or test/) of small images")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="loader processes for the on-demand folder")
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    b = args.batch_size

    loaders: dict[str, Iterator] = {}
    if args.folder:
        options = dict(root=args.folder, input_size=args.input_size, augment="crop_flip")
        lazy = build_dataset("imagefolder", **options)
        start = time.perf_counter()
        bundle = build_dataset("imagefolder", in_memory=True, **options)
        decode = time.perf_counter() - start
        images = len(bundle.train) + len(bundle.test) + (len(bundle.val) if bundle.val is not None else 0)
        loaders[f"folder on demand ({args.workers} workers)"] = _endless(
            make_loader(lazy.train, b, shuffle=True, seed=0, drop_last=True, workers=args.workers))
        loaders["folder in memory"] = _endless(make_loader(bundle.train, b, shuffle=True, seed=0, drop_last=True))
        name = args.folder
    else:
        bundle = build_dataset(args.dataset)
        loaders["loader"] = _endless(make_loader(bundle.train, b, shuffle=True, seed=0, drop_last=True))
        name = args.dataset
    model = timm.create_model(args.model, in_chans=bundle.in_chans, num_classes=bundle.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    fastest = list(loaders.values())[-1]  # the in-memory loader: pre-built batches come from it
    for _ in range(2):  # warm-up: workers started, kernels chosen
        for it in loaders.values():
            step(*next(it))

    rates = {label: _rate(args.batches, b, lambda it=it: next(it)) for label, it in loaders.items()}
    fixed = [next(fastest) for _ in range(args.batches)]
    train = _rate(args.batches, b, lambda: step(*fixed.pop()))
    fed = {label: _rate(args.batches, b, lambda it=it: step(*next(it))) for label, it in loaders.items()}

    print(f"{name} → {args.model}, batch {b}, {args.batches} batches, {torch.get_num_threads()} threads")
    if args.folder:
        print(f"decoding {images} images into memory took {decode:.1f} s ({images / decode:.0f} img/s)")
    for label, rate in rates.items():
        print(f"{label + ' alone':44s} {rate:10.0f} img/s  ({rate / train:.1f}× training)")
    print(f"{'train steps alone':44s} {train:10.0f} img/s")
    for label, rate in fed.items():
        print(f"{label + ' + train steps':44s} {rate:10.0f} img/s  ({rate / train:.2f}× train-only speed)")

if __name__ == "__main__":
    main()

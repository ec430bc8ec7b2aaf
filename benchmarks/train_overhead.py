"""Does layerprune's training loop cost anything over a bare PyTorch loop? (not a test)

The same model, data loader and optimiser settings, one epoch at a time, alternating between
``layerprune.train.train`` and a bare ``zero_grad / forward / cross_entropy / backward / step``
loop, so that load from other processes hits both alike. Reports images per second of each and
their ratio (goal: ≥ 0.97).

    python benchmarks/train_overhead.py                      # ResNet-20 on digits, 3 rounds
    python benchmarks/train_overhead.py --model cifar_resnet56 --rounds 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import layerprune
from layerprune.data import make_loader
from layerprune.train import TrainSettings, train


def bare_epoch(model, loader, optimizer) -> None:
    model.train()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    data = layerprune.build_dataset("digits")
    n = len(data.train) // args.batch_size * args.batch_size
    torch.manual_seed(0)
    ours = layerprune.create_model(args.model, num_classes=10, in_chans=1)
    bare = layerprune.create_model(args.model, num_classes=10, in_chans=1)
    bare.load_state_dict(ours.state_dict())
    settings = TrainSettings(epochs=1, lr=0.01, schedule="constant")
    optimizer = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=0, drop_last=True)

    bare_epoch(bare, loader, optimizer)  # warm-up both
    train(ours, loader, settings)
    t_ours, t_bare = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        train(ours, loader, settings)
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_epoch(bare, loader, optimizer)
        t_bare.append(time.perf_counter() - start)
    ours_ips, bare_ips = n / min(t_ours), n / min(t_bare)
    print(f"{args.model}, {n} digits images per epoch, batch {args.batch_size}, best of {args.rounds} epochs each")
    print(f"  bare PyTorch loop      {bare_ips:8.1f} img/s")
    print(f"  layerprune train()     {ours_ips:8.1f} img/s")
    print(f"  ratio                  {ours_ips / bare_ips:8.3f}   (goal ≥ 0.97)")


if __name__ == "__main__":
    main()

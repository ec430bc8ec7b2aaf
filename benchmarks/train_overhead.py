"""Does layerprune's training loop cost anything over a bare PyTorch loop? (not a test)

The same model, data loader and optimiser settings, one epoch at a time: ``layerprune.train.train``
against a bare ``zero_grad / forward / cross_entropy / backward / step`` loop, plus a second copy
of the bare loop as a control. The control is identical work, so its ratio to the first bare loop
shows how much this machine's noise alone moves the figure. The order of the three rotates every
round, so neither position nor load from other processes favours one; each side's best epoch
counts. Goal: train() ≥ 0.97× the bare loop's images per second.

    python benchmarks/train_overhead.py                      # ResNet-20 on digits, 6 rounds
    python benchmarks/train_overhead.py --data mnist5k --model cifar_resnet56 --rounds 3
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
    parser.add_argument("--data", default="digits")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    data = layerprune.build_dataset(args.data)
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=0, drop_last=True)
    n = len(loader) * args.batch_size
    torch.manual_seed(0)
    models = [layerprune.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans)
              for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    settings = TrainSettings(epochs=1, lr=0.01, schedule="constant")
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
                  for m in models[1:]]
    contestants = {
        "layerprune train()": lambda: train(models[0], loader, settings),
        "bare PyTorch loop": lambda: bare_epoch(models[1], loader, optimizers[0]),
        "bare loop (control)": lambda: bare_epoch(models[2], loader, optimizers[1]),
    }
    for run in contestants.values():  # warm-up
        run()
    best = {name: float("inf") for name in contestants}
    names = list(contestants)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            start = time.perf_counter()
            contestants[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    ips = {name: n / best[name] for name in names}
    bare = ips["bare PyTorch loop"]
    print(f"{args.model}, {n} {args.data} images per epoch, batch {args.batch_size}, best of {args.rounds} epochs each")
    for name in names:
        print(f"  {name:22s} {ips[name]:8.1f} img/s   {ips[name] / bare:6.3f}x bare")
    print(f"  ratio train()/bare     {ips['layerprune train()'] / bare:8.3f}   (goal ≥ 0.97; the control's "
          f"{ips['bare loop (control)'] / bare:.3f} is the noise)")


if __name__ == "__main__":
    main()

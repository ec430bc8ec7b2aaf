"""Training throughput of one process against torchrun with N processes (not a test).

The same model, data and global batch: one process trains with batch B and all the threads; under
``torchrun --nproc_per_node N`` each rank trains on its DistributedSampler share with batch B/N
and threads/N threads, DDP averaging the gradients (gloo on CPU, NCCL on GPUs). Rounds alternate
between the two so that load from other processes hits both alike; each side's best epoch counts.

    python benchmarks/ddp_scaling.py                     # ResNet-20 on MNIST-5k, 2 ranks, 3 rounds
    python benchmarks/ddp_scaling.py --nproc 4 --model cifar_resnet56
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch


def worker(args: argparse.Namespace) -> None:
    """One training run (single process, or one rank under torchrun); prints epoch seconds."""
    from torch.utils.data.distributed import DistributedSampler

    import layerprune
    from layerprune.data import make_loader
    from layerprune import distributed
    from layerprune.train import TrainSettings, train

    distributed.init_from_env()
    world = distributed.world_size()
    torch.set_num_threads(max(1, args.threads // world))
    data = layerprune.build_dataset(args.data)
    sampler = DistributedSampler(data.train, shuffle=True, seed=0, drop_last=True) if world > 1 else None
    loader = make_loader(data.train, args.batch_size // world, shuffle=True, seed=0, drop_last=True, sampler=sampler)
    torch.manual_seed(0)
    model = layerprune.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans)
    history = train(model, loader, TrainSettings(epochs=args.epochs + 1, lr=0.05))
    images = len(loader) * (args.batch_size // world) * world
    if distributed.is_main():
        print(json.dumps({"images": images, "seconds": [h.seconds for h in history[1:]]}))  # epoch 1 warms up
    distributed.shutdown()


def measure(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["images"], min(result["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    common = [__file__, "--worker", "--model", args.model, "--data", args.data, "--threads", str(args.threads),
              "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    single, ddp = [], []
    for _ in range(args.rounds):
        single.append(measure([sys.executable, *common], env))
        ddp.append(measure([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", str(args.nproc), *common], env))
    (n1, s1), (n2, s2) = min(single, key=lambda r: r[1]), min(ddp, key=lambda r: r[1])
    one, many = n1 / s1, n2 / s2
    print(f"torch {torch.__version__}, {args.model} on {args.data}, global batch {args.batch_size}, "
          f"{args.threads} threads, best epoch of {args.rounds} rounds x {args.epochs} epochs")
    print(f"  1 process               {one:8.1f} img/s")
    print(f"  torchrun, {args.nproc} processes    {many:8.1f} img/s  (DDP, {'NCCL' if torch.cuda.is_available() else 'gloo'})")
    print(f"  ratio                   {many / one:8.3f}")


if __name__ == "__main__":
    main()

"""What each training fast path does on this machine's device (not a test).

Trains the same model on the same batches with ``layerprune.train.train`` under each setting —
full precision, bf16 and fp16 autocast, channels_last, and (with ``--compile``) torch.compile —
alternating settings round by round so that load from other processes hits all alike, and
reports each one's best images per second relative to full precision. On a GPU these are the
usual wins; on a CPU most of them are not, which is why every one is off by default.

    python benchmarks/train_fast_paths.py                 # ResNet-20, digits, 3 rounds
    # on a CPU, fp16 takes most of the time: the whole run with --compile took 12.6 min here
    python benchmarks/train_fast_paths.py --compile --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

import layerprune
from layerprune.data import make_loader
from layerprune.train import TrainSettings, train
from layerprune.distributed import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.compile (slow to start)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    variants = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp16": {"precision": "fp16"},
                "channels_last": {"channels_last": True}}
    if args.compile:
        variants["compile"] = {"compile": True}
    data = layerprune.build_dataset(args.data)
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=0, drop_last=True)
    images = len(loader) * args.batch_size
    torch.manual_seed(0)
    init = layerprune.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans).state_dict()
    models = {}
    for name, extra in variants.items():  # one model per setting, warmed up (and compiled) once
        models[name] = layerprune.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans)
        models[name].load_state_dict(init)
        models[name].to(device)
        train(models[name], loader, TrainSettings(epochs=1, lr=0.01, schedule="constant", **extra))
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, extra in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train(models[name], loader, TrainSettings(epochs=1, lr=0.01, schedule="constant", **extra))
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"torch {torch.__version__}, {args.model} on {args.data}, {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, best of {args.rounds} epochs each")
    for name in variants:
        print(f"  {name:14s} {images / best[name]:8.1f} img/s   {best['fp32'] / best[name]:6.3f}x fp32")


if __name__ == "__main__":
    main()

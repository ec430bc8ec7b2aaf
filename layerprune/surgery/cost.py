"""What a model costs: parameters, MACs (Torch-Pruning's counter) and measured latency."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from layerprune.hooks import eval_mode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total multiply-accumulates per sample and the share of every named module.

    Uses ``torch_pruning.utils.count_ops_and_params`` (which works on a copy of the model).
    """
    import torch_pruning as tp

    # Its counter prints a "variables __flops__ … already defined" line for every module it meets
    # twice (shared submodules); that is its own bookkeeping, not the user's business.
    with eval_mode(model), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        total, _params, layer_macs, _layer_params = tp.utils.count_ops_and_params(
            model, example_input, layer_wise=True
        )
    batch = example_input.shape[0]
    by_name = {}
    for name, module in model.named_modules():
        value = layer_macs.get(module)
        if value is not None:
            by_name[name] = int(value) // batch  # per-module counts cover the whole batch
    return int(total), by_name


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs}


def model_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Parameters and MACs per sample of ``model`` on inputs shaped like ``example_input``."""
    return Cost(params=count_params(model), macs=count_macs(model, example_input)[0])


@dataclass(frozen=True)
class Latency:
    median_ms: float
    min_ms: float
    batch_size: int
    device: str
    repeats: int

    @property
    def images_per_s(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)

    def to_dict(self) -> dict[str, float | int | str]:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "batch_size": self.batch_size,
                "device": self.device, "repeats": self.repeats, "images_per_s": self.images_per_s}


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
) -> Latency:
    """Median wall time of an eval-mode forward pass (after ``warmup`` passes).

    Timings are noisy on a shared machine: compare models side by side in one run, as ratios.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, *input_size, device=device)
    model = model.to(device)
    times = []
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return Latency(statistics.median(times), min(times), batch_size, str(device), repeats)

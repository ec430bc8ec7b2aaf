"""What a model costs: parameters, MACs (Torch-Pruning's counter) and measured latency."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from layerprune.lazy import lazy_import
from layerprune.hooks import eval_mode, model_device

torch = lazy_import("torch")
nn = lazy_import("torch.nn")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: torch.Tensor, *, disposable: bool = False) -> tuple[int, dict[str, int]]:
    """Total multiply-accumulates per sample and the share of every named module.

    Uses Torch-Pruning's counter (``torch_pruning.utils.count_ops_and_params``), which works on a
    copy of the model; a ``disposable`` model (a copy the caller throws away) is counted as it is,
    without a second copy.
    """
    import torch_pruning as tp

    # Its counter prints a "variables __flops__ … already defined" line for every module it meets
    # twice (shared submodules); that is its own bookkeeping, not the user's business.
    with eval_mode(model), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        if disposable:
            total, layer_macs = _count_in_place(model, example_input)
        else:
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


def _count_in_place(model: nn.Module, example_input: torch.Tensor) -> tuple[int, dict[nn.Module, Any]]:
    """``count_ops_and_params`` without its deep copy: the counter's hooks and attributes go on
    ``model`` itself, which the caller discards."""
    import sys

    from torch_pruning.utils import op_counter

    counted = op_counter.add_flops_counting_methods(model)
    counted.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
    try:
        counted(example_input)
        total, _params, layer_macs, _layer_params = counted.compute_average_flops_cost()
    finally:
        counted.stop_flops_count()
        op_counter.CUSTOM_MODULES_MAPPING = {}
    return total, layer_macs


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs}


def model_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Parameters and MACs per sample of ``model`` on inputs shaped like ``example_input`` (for a
    transformers model, the matrix products of its linear layers per sequence of that length)."""
    from layerprune.surgery import hf

    if hf.is_hf_model(model):
        return Cost(params=count_params(model), macs=hf.count_macs(model, example_input))
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


PRECISIONS = ("32", "bf16", "fp16")  # as training names them: 32 is full precision


def _autocast(device: torch.device, precision: str):
    """The mixed precision a model is timed at (``32``: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def _on(model: nn.Module, device: torch.device):
    """``model`` on ``device`` for the length of the block, then back where it was."""
    home = model_device(model)
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


def timed_calls(fn: Callable[[], Any], warmup: int, repeats: int, *, device: torch.device | None = None,
                each: Callable[[], None] | None = None) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``fn`` after ``warmup`` ones, synchronised on a GPU
    ``device``; ``each`` runs after every call, warm-up included (to collect what hooks measured).
    The one timing loop: model latency here, onnxruntime's in :mod:`layerprune.export.latency`."""
    cuda = device is not None and device.type == "cuda"
    times = []
    for i in range(warmup + repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
        if each is not None:
            each()
    return times


def _timed_passes(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int, precision: str,
                  each: Callable[[], None] | None = None) -> list[float]:
    """Wall times (ms) of ``repeats`` eval-mode forward passes after ``warmup`` ones."""
    with eval_mode(model), torch.inference_mode(), _autocast(x.device, precision):
        return timed_calls(lambda: model(x), warmup, repeats, device=x.device, each=each)


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    precision: str = "32",
) -> Latency:
    """Median wall time of an eval-mode forward pass (after ``warmup`` passes), at ``precision``
    (``bf16``/``fp16``: under autocast). The model is moved to ``device`` for the measurement and
    back afterwards.

    Timings are noisy on a shared machine: compare models side by side in one run, as ratios
    (:func:`compare_latency`).
    """
    return compare_latency([model], input_size, batch_size=batch_size, device=device, warmup=warmup,
                           repeats=repeats, precision=precision)[0]


def compare_latency(
    models: Sequence[nn.Module],
    input_size: tuple[int, ...],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    precision: str = "32",
) -> list[Latency]:
    """:func:`measure_latency` of several models, their passes interleaved (one pass of each in
    turn), so that a machine that speeds up or slows down mid-way does so for all of them alike."""
    from layerprune.surgery import hf

    device = torch.device(device)
    if hf.is_hf_model(models[0]):  # a language model's input: random token ids, input_size = (tokens,)
        x = hf.default_tokens(models[0], batch_size, *input_size).to(device)
    else:
        x = torch.randn(batch_size, *input_size, device=device)
    times: list[list[float]] = [[] for _ in models]
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(_on(model, device))
        for _ in range(warmup + repeats):
            for i, model in enumerate(models):
                times[i] += _timed_passes(model, x, 0, 1, precision)
    return [Latency(statistics.median(t[warmup:]), min(t[warmup:]), batch_size, str(device), repeats) for t in times]


@dataclass(frozen=True)
class BlockLatency:
    """A model's median latency and each block's median share of it, measured in one run."""

    total_ms: float
    shares: dict[str, float]
    batch_size: int
    device: str
    precision: str
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "shares": dict(self.shares), "batch_size": self.batch_size,
                "device": self.device, "precision": self.precision, "repeats": self.repeats}


def measure_block_latency(
    model: nn.Module,
    blocks: Sequence[str],
    input_size: tuple[int, ...],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    precision: str = "32",
    warmup: int = 5,
    repeats: int = 30,
) -> BlockLatency:
    """Each block's share of the model's latency, timed where it runs: from the block's forward
    pre-hook to its forward hook (synchronised on a GPU), the median over ``repeats`` passes
    divided by the median time of the whole pass. Not the block's share of the MACs: on a real
    device, layers of equal MACs can cost very different times."""
    device = torch.device(device)
    x = torch.randn(batch_size, *input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    started: dict[str, float] = {}
    taken: dict[str, float] = {}
    samples: dict[str, list[float]] = {name: [] for name in blocks}

    def before(name: str):
        def hook(module, args):
            sync(device)
            started[name] = time.perf_counter()
        return hook

    def after(name: str):
        def hook(module, args, output):
            sync(device)
            taken[name] = taken.get(name, 0.0) + (time.perf_counter() - started[name]) * 1000.0
        return hook

    def collect() -> None:
        for name in blocks:
            samples[name].append(taken.pop(name, 0.0))

    with _on(model, device):
        handles = []
        for name in blocks:
            module = model.get_submodule(name)
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        try:
            times = _timed_passes(model, x, warmup, repeats, precision, each=collect)
        finally:
            for h in handles:
                h.remove()
    total = statistics.median(times)
    shares = {name: statistics.median(samples[name][-repeats:]) / total for name in blocks}
    return BlockLatency(total, shares, batch_size, str(device), precision, repeats)

"""Runtime latency of a model as PyTorch eager and as onnxruntime runs it, side by side in one
process (timings on a shared machine are only comparable within one run)."""

from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from layerprune.export.runtime import ort_session
from layerprune.surgery.cost import measure_latency, timed_calls


def _median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    times = timed_calls(fn, warmup, repeats)
    return statistics.median(times), min(times)


def runtime_latency(model: nn.Module, input_size: tuple[int, ...], *, name: str, batch_sizes: tuple[int, ...],
                    onnx: bytes | None = None, warmup: int = 5, repeats: int = 20) -> list[dict[str, Any]]:
    """Median and fastest forward pass (ms) at each batch size: PyTorch eager on CPU, and
    onnxruntime's CPU provider for ``onnx`` (the model's ONNX bytes) when given, with the same
    number of threads."""
    threads = torch.get_num_threads()
    rows = []
    session = ort_session(onnx, threads) if onnx is not None else None
    for batch in batch_sizes:
        lat = measure_latency(model, input_size, batch_size=batch, device="cpu", warmup=warmup, repeats=repeats)
        rows.append({"model": name, "runtime": "pytorch eager", "batch_size": batch, "median_ms": lat.median_ms,
                     "min_ms": lat.min_ms, "threads": threads, "device": "cpu", "warmup": warmup, "repeats": repeats})
        if session is not None:
            feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
                (batch, *input_size), dtype=np.float32)}
            median, fastest = _median_ms(lambda: session.run(None, feed), warmup, repeats)  # noqa: B023
            rows.append({"model": name, "runtime": "onnxruntime", "batch_size": batch, "median_ms": median,
                         "min_ms": fastest, "threads": threads, "device": "cpu", "warmup": warmup,
                         "repeats": repeats})
    return rows

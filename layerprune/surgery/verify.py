"""Check a model after surgery: it runs, gives finite outputs of the original's shape, and
Torch-Pruning can still trace its dependency graph."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import eval_mode


def dependency_graph_check(model: nn.Module, example_input: torch.Tensor) -> None:
    """Re-trace ``model`` with Torch-Pruning; raises if the graph cannot be built."""
    import torch_pruning as tp

    # Torch-Pruning switches the model to eval mode; eval_mode puts every flag back afterwards.
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        # Only tracing here, never pruning channels: its advice on unwrapped parameters
        # (ViT's pos_embed, ConvNeXt's gamma) does not apply.
        warnings.simplefilter("ignore", UserWarning)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    # The graph's nodes refer to each other and hold the traced forward pass (every activation,
    # through its autograd history): break those cycles so that it is freed now, not at some later
    # cyclic collection (a full gc.collect would cost more than the trace on a small model).
    for node in graph.module2node.values():
        node.inputs, node.outputs, node.dependencies, node.grad_fn = [], [], [], None
    graph.module2node.clear()


def verify(original: nn.Module, pruned: nn.Module, example_input: torch.Tensor, names) -> None:
    """Same output shape as the original, finite values, and a Torch-Pruning re-trace."""
    what = ", ".join(names)
    with torch.no_grad():
        try:
            out = pruned(example_input)
        except Exception as exc:
            raise SurgeryError(f"model fails after removing {what}: {type(exc).__name__}: {exc}") from exc
        expected = original(example_input)
    if out.shape != expected.shape:
        raise SurgeryError(f"output shape {tuple(out.shape)} ≠ {tuple(expected.shape)} after removing {what}")
    if not torch.isfinite(out).all():
        raise SurgeryError(f"non-finite outputs after removing {what}")
    try:
        dependency_graph_check(pruned, example_input[:1])  # one sample traces the same graph
    except Exception as exc:
        if traceable(original, example_input[:1]):  # a failure the removal introduced
            raise SurgeryError(f"dependency graph cannot be traced after removing {what}: {exc}") from exc


def traceable(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Whether Torch-Pruning can trace ``model`` at all (some timm models it cannot, untouched)."""
    try:
        dependency_graph_check(model, example_input)
    except Exception:  # the reason is Torch-Pruning's; only the fact matters here
        return False
    return True

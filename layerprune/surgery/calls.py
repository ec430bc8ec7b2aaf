"""One recorded forward pass: each module's call, its input and output, and what it takes to re-run it.

Blocks are found by running the model once: :func:`_record_calls` records, for every parameterised
module, when it was called and which tensor it took and returned (the same storage and size means
the same tensor or a full view of it, so a chain of units shows in the keys), and keeps the
arguments and output of the modules of modules, which can be blocks, to run them again alone
(:func:`_zeroed_call`, with every parameter zeroed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from layerprune.hooks import forward_hooks, main_tensor


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _holds_params_inside(m: nn.Module) -> bool:
    """A module of modules: one of its children has parameters (a conv layer does not qualify)."""
    return any(_has_params(c) for c in m.children())


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _fmt(shape) -> str:
    return "×".join(map(str, shape))


def _close(a: Any, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 1.0
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def _version(x: Any) -> int:
    return x._version if isinstance(x, torch.Tensor) else -1


def _key(x: Any) -> tuple[int, int] | None:
    """What identifies a tensor's data: the same key means the same tensor or a full view of it
    (a reshape between two units does not break a chain)."""
    return (x.untyped_storage().data_ptr(), x.numel()) if isinstance(x, torch.Tensor) else None


@dataclass
class _Call:
    """One module's call: its order, the identity, version counter and shape of its first
    argument and of its output (versions tell whether a tensor was modified in place later, as by
    ``x += shortcut``), and — for modules of modules only, which can be blocks — references to its
    arguments and output, to re-run it. Single layers keep no references: holding every layer's
    output would hold every activation of the model."""

    order: int
    in_key: tuple[int, int] | None
    in_version: int  # of the first argument, when the call began
    in_shape: tuple[int, ...]
    out_key: tuple[int, int] | None
    out_version: int  # of the output, when the call returned
    out_shape: tuple[int, ...]
    args: tuple | None = None  # None: not kept (a single layer)
    kwargs: dict | None = None
    output: Any = None
    calls: int = 1

    @property
    def input_intact(self) -> bool:
        """The recorded first argument still holds the values the module was called with."""
        return bool(self.args) and _version(self.args[0]) == self.in_version


def _record_calls(model: nn.Module, names: list[str], kept: set[str],
                  example_input: torch.Tensor) -> tuple[dict[str, _Call], Any]:
    calls: dict[str, _Call] = {}
    started: dict[str, tuple] = {}
    counter = [0]

    def before(name: str):
        def fn(module, args):
            if name not in started:
                first = args[0] if args else None
                started[name] = (_key(first), _version(first), _shape(first))
        return fn

    def after(name: str):
        def fn(module, args, kwargs, output):
            counter[0] += 1
            if name in calls:
                calls[name].calls += 1
                return
            in_key, in_version, in_shape = started.get(name, (None, -1, ()))
            # A block returning (x, feat_size) still passes x on: the chain follows the first item.
            main = main_tensor(output)
            call = _Call(counter[0], in_key, in_version, in_shape, _key(main), _version(main), _shape(main))
            if name in kept:  # a list argument as it was (DenseNet's caller appends to it next)
                call.args = tuple(list(a) if isinstance(a, list) else a for a in args)
                call.kwargs, call.output = kwargs, output
            calls[name] = call
        return fn

    with forward_hooks(model, before={n: before(n) for n in names}, after={n: after(n) for n in names},
                       with_kwargs=True), torch.no_grad():
        out = model(example_input)
    return calls, out


def _passes_on(a: _Call, key: tuple[int, int] | None, version: int) -> bool:
    """``a``'s output reaches a later call (as the tensor ``key`` at ``version``) unchanged: the
    same tensor or a view, not modified in place in between."""
    return a.out_key is not None and a.out_key == key and version == a.out_version


def _zeroed_call(module: nn.Module, call: _Call, keep: str | None = None) -> Any:
    """The module's output on its recorded input with every parameter zeroed (except those of the
    submodule ``keep``); buffers such as BatchNorm statistics are left as they are."""
    params = {n: (p if keep is not None and (n == keep or n.startswith(keep + ".")) else torch.zeros_like(p))
              for n, p in module.named_parameters()}
    with torch.no_grad():
        return functional_call(module, params, call.args, call.kwargs, tie_weights=False, strict=False)

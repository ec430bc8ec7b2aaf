"""Forward hooks for the length of a ``with`` block, and eval mode likewise: the one way every
room reads tensors inside a model (block tracing, probes, Taylor gradients), and the one call
tracer built on them (:func:`trace_calls`).

>>> with forward_hooks(model, after={"layer1.0": lambda m, args, out: seen.append(out)}):  # doctest: +SKIP
...     model(x)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from layerprune.lazy import lazy_import

torch = lazy_import("torch")
nn = lazy_import("torch.nn")


Hook = Callable[..., Any]

@contextmanager
def forward_hooks(
    model: nn.Module,
    *,
    after: Mapping[str, Hook] | None = None,
    before: Mapping[str, Hook] | None = None,
    with_kwargs: bool = False,
) -> Iterator[None]:
    """Hooks on named submodules, removed when the block ends (also on an exception).

    ``after`` maps a module name to ``fn(module, args, output)`` (``fn(module, args, kwargs,
    output)`` with ``with_kwargs``), run after its forward; ``before`` to ``fn(module, args)``, run
    before it (returning new args replaces them). A hook returning a value from ``after`` replaces
    the output, as in PyTorch.
    """
    handles = []
    try:
        for name, fn in (after or {}).items():
            handles.append(model.get_submodule(name).register_forward_hook(fn, with_kwargs=with_kwargs))
        for name, fn in (before or {}).items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def main_tensor(output: Any, batch: int | None = None) -> Any:
    """The tensor a block passes on: its output, or the first tensor of a tuple or list it returns
    (``x, feat_size = blk(x, feat_size)``: the stream is ``x``) — with ``batch``, the first one with
    one row per sample (TNT's blocks return ``(pixel_embed, patch_embed)``, and only the patch
    stream has a row per image)."""
    if not isinstance(output, (tuple, list)):
        return output
    tensors, todo = [], list(output)
    while todo:
        item = todo.pop(0)
        if isinstance(item, (tuple, list)):
            todo[:0] = list(item)
        elif isinstance(item, torch.Tensor):
            tensors.append(item)
    if batch is not None:
        for t in tensors:
            if t.dim() and t.shape[0] == batch:
                return t
    return tensors[0] if tensors else output


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without parameters): the one device
    lookup every room uses."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass(frozen=True)
class Call:
    """One module call of a traced forward pass: when it started and ended (one clock that ticks at
    every start and every end, so a call inside another starts after it and ends before it), the
    index of the call that was running when it started, and the module's name ("" is the model)."""

    start: int
    end: int
    parent: int | None
    name: str
    output: Any = None  # what the call returned, when traced with ``outputs=True``


def trace_calls(model: nn.Module, example: Any, *, outputs: bool = False) -> list[Call]:
    """Every module call of one forward pass of ``model`` on ``example`` (eval mode, no grad), in
    the order the calls started, the model's own call first: the one call tracer (prefix replay
    reads the nesting, the feature stream each module's first start, last end and output)."""
    calls: list[list[Any]] = []
    stack: list[int] = []
    tick = [0]

    def before(name: str):
        def fn(module, args):
            calls.append([tick[0], None, stack[-1] if stack else None, name, None])
            stack.append(len(calls) - 1)
            tick[0] += 1
        return fn

    def after(module, args, out):
        call = calls[stack.pop()]
        call[1] = tick[0]
        if outputs:
            call[4] = out
        tick[0] += 1

    names = [name for name, _ in model.named_modules()]
    with torch.no_grad(), eval_mode(model), forward_hooks(model, before={n: before(n) for n in names},
                                                          after={n: after for n in names}):
        model(example)
    return [Call(*c) for c in calls]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; afterwards every submodule's own train/eval flag is
    put back as it was (a model may keep some parts in eval mode while training others)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training

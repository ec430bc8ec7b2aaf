"""Forward hooks for the length of a ``with`` block, and eval mode likewise: the one way every
room reads tensors inside a model (block tracing, probes, Taylor gradients).

>>> with forward_hooks(model, after={"layer1.0": lambda m, args, out: seen.append(out)}):  # doctest: +SKIP
...     model(x)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch.nn as nn

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

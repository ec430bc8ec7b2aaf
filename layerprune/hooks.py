"""Forward hooks for the length of a ``with`` block, and eval mode likewise: the one way every
room reads tensors inside a model (block tracing, probes, Taylor gradients).

>>> with forward_hooks(model, after={"layer1.0": lambda m, args, out: seen.append(out)}):  # doctest: +SKIP
...     model(x)
"""

from __future__ import annotations

from contextlib import contextmanager
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

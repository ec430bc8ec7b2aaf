"""Find the blocks of any timm model and decide which can be removed, and how.

A *stage* is a container that runs its children in sequence: an ``nn.Sequential`` (``layer1``,
``blocks``, ``stages.2``) or a module whose children are all of one class (timm's ``RegStage``),
with at least one child that is itself a module with parameters. Its *blocks* are its innermost
parameterised children. Everything else with parameters at the top (stem, head, transitions
between stages) is listed too, never removable.

Each block is classified by running it, not by its class name:

* ``identity`` — shape-preserving and residual: with every parameter zeroed it returns its input,
  so ``nn.Identity`` is what it reduces to when its residual branch is zero;
* ``plain`` — shape-preserving, not residual, contains a conv/linear layer (a VGG unit): removable,
  but the function changes more, so finetune after;
* ``collapse`` — changes shape and owns a shortcut module (option-A pad, 1×1 conv + BN, timm's
  ``downsample``): with its branch zeroed it equals the shortcut (plus its final activation), so it
  can be replaced by that — only when asked;
* ``fixed`` — anything else, with the reason in words.

Removal is then confirmed on a copy: every removable block swapped out at once, a forward pass,
and a Torch-Pruning ``DependencyGraph`` re-trace.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError
from layerprune.hooks import eval_mode, forward_hooks
from layerprune.surgery.blocks import ACTIVATIONS, SHORTCUT_NAMES, WEIGHT_LAYERS, Block
from layerprune.surgery.cost import count_macs, count_params
from layerprune.surgery.edit import swap_blocks
from layerprune.surgery.verify import dependency_graph_check


# -- discovery ------------------------------------------------------------------------------------
def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _is_composite(m: nn.Module) -> bool:
    return _has_params(m) and next(m.children(), None) is not None


def _is_stage(m: nn.Module) -> bool:
    children = list(m.children())
    if not children or not any(_is_composite(c) for c in children):
        return False
    return isinstance(m, nn.Sequential) or len({type(c) for c in children}) == 1


def discover(model: nn.Module) -> tuple[list[tuple[str, str]], list[str]]:
    """``[(block name, stage name)]`` and the names of the other parameterised top-level parts."""
    holds_stage: dict[int, bool] = {}

    def contains_stage(m: nn.Module) -> bool:
        if id(m) not in holds_stage:
            holds_stage[id(m)] = _is_stage(m) or any(contains_stage(c) for c in m.children())
        return holds_stage[id(m)]

    blocks: list[tuple[str, str]] = []
    pieces: list[str] = []

    def walk(module: nn.Module, prefix: str, stage: str | None) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if _is_stage(child):
                walk(child, full + ".", full)
            elif contains_stage(child):
                walk(child, full + ".", None)
            elif stage is not None and _has_params(child):
                blocks.append((full, stage))
            elif _has_params(child):
                pieces.append(full)

    walk(model, "", None)
    return blocks, pieces


# -- running ------------------------------------------------------------------------------------
@dataclass
class _Call:
    order: int
    args: tuple
    kwargs: dict
    output: Any
    calls: int = 1


def _record_calls(model: nn.Module, names: list[str], example_input: torch.Tensor) -> tuple[dict[str, _Call], torch.Tensor]:
    calls: dict[str, _Call] = {}
    counter = [0]

    def hook(name: str):
        def fn(module, args, kwargs, output):
            counter[0] += 1
            if name in calls:
                calls[name].calls += 1
            else:
                calls[name] = _Call(counter[0], args, kwargs, output)
        return fn

    with forward_hooks(model, after={name: hook(name) for name in names}, with_kwargs=True), torch.no_grad():
        out = model(example_input)
    return calls, out


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _zeroed(module: nn.Module, keep: nn.Module | None = None) -> nn.Module:
    """A copy with every parameter zeroed except those of ``keep`` (a submodule)."""
    clone = copy.deepcopy(module)
    kept = set()
    if keep is not None:
        path = next(n for n, m in module.named_modules() if m is keep)
        kept = {id(p) for p in clone.get_submodule(path).parameters()}
    with torch.no_grad():
        for p in clone.parameters():
            if id(p) not in kept:
                p.zero_()
    return clone


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def _find_collapse(block: nn.Module, call: _Call) -> tuple[str, ...] | None:
    """Child names that reproduce the block when its residual branch is zero, or ``None``."""
    x = call.args[0]
    shortcuts = [(n, c) for n, c in block.named_children()
                 if n in SHORTCUT_NAMES and not isinstance(c, nn.Identity)]
    acts = [n for n, c in block.named_children() if isinstance(c, ACTIVATIONS)]
    with torch.no_grad():
        for sc_name, sc in shortcuts:
            try:
                target = _zeroed(block, keep=sc)(*call.args, **call.kwargs)
                through = sc(x)
            except Exception:
                continue
            if _close(through, target):
                return (sc_name,)
            for act_name in reversed(acts):  # the final activation comes last
                if _close(getattr(block, act_name)(through.clone()), target):
                    return (sc_name, act_name)
    return None


def _classify(block: nn.Module, call: _Call | None) -> tuple[str, str, tuple[str, ...]]:
    if call is None:
        return "fixed", "never called in the forward pass", ()
    if call.calls > 1:
        return "fixed", f"called {call.calls} times per forward pass (shared module)", ()
    if call.args and isinstance(call.args[0], (list, tuple)):
        return "fixed", "takes a list of earlier outputs (dense concatenation)", ()
    if len(call.args) != 1 or not isinstance(call.args[0], torch.Tensor) or not isinstance(call.output, torch.Tensor):
        return "fixed", "takes or returns more than one tensor", ()
    x, y = call.args[0], call.output
    if x.shape == y.shape:
        with torch.no_grad():
            zero_out = _zeroed(block)(*call.args, **call.kwargs)
        if _close(zero_out, x):
            return "identity", "residual: becomes the identity", ()
        if any(isinstance(m, WEIGHT_LAYERS) for m in block.modules()):
            return "plain", "shape-preserving unit without a shortcut: removable, changes the function (finetune after)", ()
        return "fixed", "shape-preserving but neither residual nor a conv/linear unit", ()
    shapes = f"{_fmt(x.shape[1:])} → {_fmt(y.shape[1:])}"
    collapse_to = _find_collapse(block, call)
    if collapse_to:
        return "collapse", f"downsampling residual ({shapes}): can collapse to {' + '.join(collapse_to)}", collapse_to
    return "fixed", f"changes shape ({shapes}) and has no shortcut to collapse to", ()


def _fmt(shape) -> str:
    return "×".join(map(str, shape))


def default_input(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A random input of the model's configured size (timm ``pretrained_cfg``), or 3×224×224."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    param = next(model.parameters(), None)
    return torch.randn(batch_size, *size, device=param.device if param is not None else "cpu")


def find_blocks(model: nn.Module, example_input: torch.Tensor | None = None) -> list[Block]:
    """The blocks of ``model`` (and its fixed stem/head parts), in forward order.

    >>> blocks = find_blocks(timm.create_model("cifar_resnet56"), torch.randn(1, 3, 32, 32))
    >>> sum(b.removable for b in blocks)
    25
    """
    if example_input is None:
        example_input = default_input(model)
    with eval_mode(model):
        return _find_blocks(model, example_input)


def _find_blocks(model: nn.Module, example_input: torch.Tensor) -> list[Block]:
    block_names, pieces = discover(model)
    try:
        calls, _ = _record_calls(model, [n for n, _ in block_names] + pieces, example_input)
    except (RuntimeError, AssertionError, ValueError) as exc:  # shapes the model cannot take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SurgeryError(
            f"{type(model).__name__}: forward pass failed on input {tuple(example_input.shape)}: {first}"
        ) from exc
    total_macs, macs = count_macs(model, example_input)

    results: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for name, _stage in block_names:
        results[name] = _classify(model.get_submodule(name), calls.get(name))
    _check_sequential(model, block_names, calls, results)
    _confirm(model, block_names, results, example_input)

    block_orders = [calls[n].order for n, _ in block_names if n in calls]
    first, last = (min(block_orders), max(block_orders)) if block_orders else (0, 0)
    entries: list[tuple[int, Block]] = []
    for name, stage in block_names:
        kind, reason, collapse_to = results[name]
        entries.append((calls[name].order if name in calls else 10**9,
                        _make_block(model, name, stage, kind, reason, collapse_to, calls.get(name), macs, total_macs)))
    for name in pieces:
        call = calls.get(name)
        order = call.order if call else 10**9
        role = "stem" if order < first else "head" if order > last else "transition between stages"
        entries.append((order, _make_block(model, name, "", "fixed", f"{role}, not a block", (), call, macs, total_macs)))
    return [b for _, b in sorted(entries, key=lambda e: e[0])]


def _make_block(model, name, stage, kind, reason, collapse_to, call, macs, total_macs) -> Block:
    module = model.get_submodule(name)
    block_macs = int(macs.get(name, 0))
    return Block(
        name=name, stage=stage, kind=kind, removable=kind in ("identity", "plain"), reason=reason,
        params=count_params(module),
        macs=block_macs, macs_share=block_macs / total_macs if total_macs else 0.0,
        in_shape=_shape(call.args[0]) if call and call.args else (),
        out_shape=_shape(call.output) if call else (),
        collapse_to=tuple(collapse_to),
    )


def _check_sequential(model, block_names, calls, results) -> None:
    """A stage that is not an ``nn.Sequential`` must pass each block's output to the next."""
    stages: dict[str, list[str]] = {}
    for name, stage in block_names:
        stages.setdefault(stage, []).append(name)
    for stage, names in stages.items():
        if isinstance(model.get_submodule(stage), nn.Sequential):
            continue
        chained = all(
            a in calls and b in calls and calls[b].args and calls[b].args[0] is calls[a].output
            for a, b in zip(names, names[1:])
        )
        if not chained:
            for name in names:
                if results[name][0] != "fixed":
                    results[name] = ("fixed", f"stage {stage!r} does not run its blocks in sequence", ())


def _confirm(model, block_names, results, example_input) -> None:
    """Swap every removable block out at once, run forward and re-trace; on failure find which."""
    candidates = [n for n, _ in block_names if results[n][0] in ("identity", "plain", "collapse")]
    if not candidates:
        return
    if _try_without(model, candidates, results, example_input) is None:
        return
    for name in candidates:
        error = _try_without(model, [name], results, example_input)
        if error is not None:
            results[name] = ("fixed", f"model fails without it ({error})", ())


def _try_without(model, names, results, example_input) -> str | None:
    try:
        clone = swap_blocks(copy.deepcopy(model), {n: results[n][2] for n in names})
        with torch.no_grad():
            out = clone(example_input)
        if not torch.isfinite(out).all():
            return "non-finite output"
        dependency_graph_check(clone, example_input)
    except Exception as exc:  # any failure means "not safely removable"; report it in words
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None

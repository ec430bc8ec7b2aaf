"""Find the blocks of any timm model and decide which can be removed, and how.

Everything is decided by running the model once on ``example_input``, not by class names: each
module's call is recorded (:mod:`layerprune.surgery.calls`), the module tree is walked for stages
and their blocks (:mod:`layerprune.surgery.discover`, with the blocks the model names itself from
:mod:`layerprune.surgery.named`, and residual sub-layers from :mod:`layerprune.surgery.sublayers`),
each block is classified on its recorded input (:mod:`layerprune.surgery.classify`), and each
candidate is checked by removing it from a copy of the model (:mod:`layerprune.surgery.check`).
A transformers model has its layer list as blocks (:mod:`layerprune.surgery.hf`).
"""

from __future__ import annotations

import contextlib
import copy
import gc

import torch
import torch.nn as nn

from layerprune.errors import SurgeryError, first_line
from layerprune.hooks import eval_mode
from layerprune.surgery.blocks import Block
from layerprune.surgery.calls import _has_params, _holds_params_inside, _record_calls, _shape
from layerprune.surgery.check import _confirm, _only_block_of_stage
from layerprune.surgery.classify import CANDIDATE_KINDS, REMOVABLE_KINDS, _Found  # noqa: F401 - re-exported
from layerprune.surgery.cost import count_macs, count_params
from layerprune.surgery import hf
from layerprune.surgery.discover import discover
from layerprune.surgery.hf import is_hf_model
from layerprune.surgery.inputs import check_input, check_level, default_input  # noqa: F401 - re-exported
from layerprune.surgery.named import named_blocks


def find_blocks(model: nn.Module, example_input: torch.Tensor | None = None, level: str = "block") -> list[Block]:
    """The blocks of ``model`` (and its fixed stem/head parts), in forward order.

    ``level="sublayer"`` splits each residual block into its residual sub-layers where it has two
    or more: the attention and MLP branches of a transformer block (``blocks.3.attn``,
    ``blocks.3.mlp``), the residual pieces of an EfficientViT block. Blocks without them are
    offered whole, as at the block level.

    >>> blocks = find_blocks(timm.create_model("cifar_resnet56"), torch.randn(1, 3, 32, 32))
    >>> sum(b.removable for b in blocks)
    25
    """
    if is_hf_model(model):  # a transformers model: its layer list (surgery/hf.py)
        return hf.find_blocks(model, example_input, level)
    check_level(level)
    example_input = default_input(model) if example_input is None else check_input(example_input)
    with eval_mode(model), _collection_paused():
        return _find_blocks(model, example_input, level)


@contextlib.contextmanager
def _collection_paused():
    """Python's cyclic garbage collector paused while blocks are found: the checks create many
    short-lived objects (Torch-Pruning graphs, model copies), and a full collection triggered among
    them walks every object of the process — in a long-running process, several times the cost of
    the search itself (shvit_s1: 10× one forward pass, 25× when one falls inside). What the
    search leaves is collected as usual afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _find_blocks(model: nn.Module, example_input: torch.Tensor, level: str = "block") -> list[Block]:
    names = [n for n, m in model.named_modules() if n and _has_params(m)]
    kept = {n for n in names if _holds_params_inside(model.get_submodule(n))}
    try:
        calls, out = _record_calls(model, names, kept, example_input)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:  # inputs the model cannot take
        first = first_line(exc)
        raise SurgeryError(
            f"{type(model).__name__}: forward pass failed on input {tuple(example_input.shape)}: {first}"
        ) from exc
    found = discover(model, calls, named_blocks(model, names), level)
    # What is left to do needs only orders and shapes: let the recorded activations go.
    orders = {n: c.order for n, c in calls.items()}
    shapes = {n: (c.in_shape, c.out_shape) for n, c in calls.items()}
    out_shape = _shape(out)
    del calls, out
    _only_block_of_stage(found)
    clone = copy.deepcopy(model)  # one copy for every check, then counted (and thrown away)
    _confirm(model, found, orders, example_input, out_shape, clone)
    total_macs, macs = count_macs(clone, example_input[:1], disposable=True)
    del clone

    def order(f: _Found) -> int:
        return orders.get(f.name, 10**9)

    block_orders = [order(f) for f in found if f.stage]
    first, last = (min(block_orders), max(block_orders)) if block_orders else (0, 0)
    blocks = []
    for f in sorted(found, key=order):
        reason = f.reason
        if not f.stage:
            role = "stem" if order(f) < first else "head" if order(f) > last else "transition between stages"
            reason = f.reason or (f"{role}, not a block" if f.name in orders else "never called in the forward pass")
        blocks.append(_make_block(model, f, reason, shapes.get(f.name, ((), ())), macs, total_macs))
    return blocks


def _make_block(model, f: _Found, reason: str, shapes, macs, total_macs) -> Block:
    module = model.get_submodule(f.name)
    block_macs = int(macs.get(f.name, 0))
    return Block(
        name=f.name, stage=f.stage, kind=f.kind, removable=f.kind in REMOVABLE_KINDS and not f.only,
        reason=reason, params=count_params(module),
        macs=block_macs, macs_share=block_macs / total_macs if total_macs else 0.0,
        in_shape=shapes[0], out_shape=shapes[1],
        collapse_to=tuple(f.collapse_to), stand_in=f.stand_in, stream=f.stream,
    )

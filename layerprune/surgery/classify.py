"""Classify one block by running it on its recorded input (extra positional and keyword arguments included).

* ``identity`` — shape-preserving and residual: a :class:`~layerprune.surgery.edit.PassThrough`
  is exactly the block with its branch zeroed (a block that returns its first N arguments as a
  tuple, ``x, feat_size = blk(x, feat_size)``, and with its branch zeroed returns them unchanged,
  gets a pass-through of those N arguments in that structure; a dual-path block, which returns its
  input and new channels, gets its input and zero channels; a dense layer, which takes the list of
  earlier outputs, gets zeros of its output's shape);
* ``plain`` — shape-preserving, not residual, contains a conv/linear layer (a VGG unit):
  removable, but the function changes more, so finetune after;
* ``collapse`` — changes shape and owns a shortcut module (option-A pad, 1×1 conv + BN, timm's
  ``downsample``): with its branch zeroed it equals the shortcut (plus its final activation), so it
  can be replaced by that — only when asked; a block that changes shape without a shortcut
  collapses, also only when asked, to a shortcut without parameters
  (:class:`~layerprune.surgery.edit.ZeroPadShortcut`: strided, channels zero-padded or cut),
  which changes the function as a ``plain`` removal does;
* ``fixed`` — anything else, with the reason in words.

A module found by discovery is recorded with its stage and classification as a :class:`_Found`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from layerprune.surgery.blocks import ACTIVATIONS, SHORTCUT_NAMES, WEIGHT_LAYERS
from layerprune.surgery.calls import _Call, _close, _fmt, _shape, _zeroed_call
from layerprune.surgery.edit import ZeroPadShortcut

REMOVABLE_KINDS = ("identity", "plain")
CANDIDATE_KINDS = ("identity", "plain", "collapse")


def _find_collapse(block: nn.Module, call: _Call) -> tuple[str, ...] | None:
    """Child names that reproduce the block when its residual branch is zero, or ``None``."""
    x = call.args[0]
    shortcuts = [(n, c) for n, c in block.named_children()
                 if n in SHORTCUT_NAMES and not isinstance(c, nn.Identity)]
    acts = [n for n, c in block.named_children() if isinstance(c, ACTIVATIONS)]
    for sc_name, sc in shortcuts:
        try:
            target = _zeroed_call(block, call, keep=sc_name)
            with torch.no_grad():
                through = sc(x)
        except Exception:  # a shortcut that cannot take the block's input is no shortcut
            continue
        if not isinstance(target, torch.Tensor):
            continue
        if _close(through, target):
            return (sc_name,)
        for act_name in reversed(acts):  # the final activation comes last
            with torch.no_grad():
                if _close(getattr(block, act_name)(through.clone()), target):
                    return (sc_name, act_name)
    return None


Classified = tuple[str, str, tuple[str, ...], str]  # kind, reason, collapse_to, stand_in


def _classify(block: nn.Module, call: _Call | None) -> Classified:
    """``(kind, reason, collapse_to, stand_in)`` of one block, from running it on its recorded input."""
    if call is None:
        return "fixed", "never called in the forward pass", (), ""
    if call.calls > 1:
        return "fixed", f"called {call.calls} times per forward pass (shared module)", (), ""
    if call.args is None:
        return "fixed", "a single layer, not a block", (), ""
    if not call.args:
        return "fixed", "called with keyword arguments only (no main tensor to pass through)", (), ""
    if isinstance(call.args[0], torch.Tensor) and not call.input_intact:
        return "fixed", "its input is modified in place during the forward pass", (), ""
    x, y = call.args[0], call.output
    if isinstance(x, (list, tuple)):
        return _classify_dense(block, call)
    if not isinstance(x, torch.Tensor):
        return "fixed", f"its first argument is a {type(x).__name__}, not a tensor", (), ""
    if isinstance(y, (tuple, list)):
        return _classify_passing(block, call)
    if not isinstance(y, torch.Tensor):
        return "fixed", f"returns a {type(y).__name__}, not one tensor", (), ""
    if x.shape == y.shape and x.dtype == y.dtype:
        try:
            zero_out = _zeroed_call(block, call)
        except Exception as exc:  # cannot be run alone: leave it in place
            return "fixed", f"cannot be re-run on its input ({type(exc).__name__})", (), ""
        if _close(zero_out, x):
            return "identity", "residual: becomes a pass-through", (), ""
        if any(isinstance(m, WEIGHT_LAYERS) for m in block.modules()):
            return "plain", "shape-preserving unit without a shortcut: removable, changes the function (finetune after)", (), ""
        return "fixed", "shape-preserving but neither residual nor a conv/linear unit", (), ""
    shapes = f"{_fmt(x.shape[1:])} → {_fmt(y.shape[1:])}"
    if _appends_channels(x, y):  # a dual-path block: its input, then new channels
        try:
            zero_out = _zeroed_call(block, call)
        except Exception as exc:  # cannot be run alone: leave it in place
            return "fixed", f"cannot be re-run on its input ({type(exc).__name__})", (), ""
        if _close(zero_out, ZeroPadShortcut(y.shape[1])(x)):
            return "identity", (f"dual-path ({shapes}): with its branch zeroed it returns its input and "
                                f"{y.shape[1] - x.shape[1]} zero channels, and becomes that"), (), f"shortcut:{y.shape[1]}"
    collapse_to = _find_collapse(block, call)
    if collapse_to:
        return "collapse", f"downsampling residual ({shapes}): can collapse to {' + '.join(collapse_to)}", collapse_to, ""
    stride = _zero_pad_stride(x, y)
    if stride:
        how = " and ".join(part for part in (
            f"stride {stride}" if stride > 1 else "",
            (f"{y.shape[1] - x.shape[1]} zero channels" if y.shape[1] > x.shape[1]
             else f"its first {y.shape[1]} channels" if y.shape[1] < x.shape[1] else "")) if part)
        return "collapse", (f"changes shape ({shapes}) without a shortcut: can collapse to one without parameters "
                            f"({how}; changes the function, finetune after)"), (), \
            f"shortcut:{y.shape[1]}" + (f":{stride}" if stride > 1 else "")
    return "fixed", f"changes shape ({shapes}) and has no shortcut to collapse to", (), ""


def _appends_channels(x: torch.Tensor, y: torch.Tensor) -> bool:
    """``y`` has ``x``'s layout with more channels (dimension 1) and everything else equal."""
    return (x.dim() == y.dim() >= 2 and y.dtype == x.dtype and y.shape[1] > x.shape[1]
            and y.shape[0] == x.shape[0] and y.shape[2:] == x.shape[2:])


def _zero_pad_stride(x: torch.Tensor, y: torch.Tensor) -> int:
    """The stride of a shortcut without parameters from ``x`` to ``y`` (channels first, at least one
    spatial dimension, each taken at every ``stride``-th position), or 0 if there is none: the
    stride the sizes suggest, kept if :class:`ZeroPadShortcut` with it gives ``y``'s shape."""
    if not (x.dim() == y.dim() >= 3 and x.dtype == y.dtype and x.shape[0] == y.shape[0] and min(y.shape[2:]) >= 1):
        return 0
    stride = max(1, round(x.shape[2] / y.shape[2]))
    with torch.no_grad():
        return stride if ZeroPadShortcut(y.shape[1], stride)(x).shape == y.shape else 0


def _classify_dense(block: nn.Module, call: _Call) -> Classified:
    """A block that takes the list of earlier outputs (a DenseNet layer, whose output the caller
    concatenates to them): ``identity`` when it returns one tensor of their batch and spatial size
    that is zero with every parameter zeroed — its stand-in returns those zeros, so the
    concatenation keeps its width and gains nothing."""
    x, y = call.args[0], call.output
    first = x[0] if len(x) else None
    dense = "takes a list of earlier outputs (dense concatenation)"
    if not (isinstance(first, torch.Tensor) and all(isinstance(t, torch.Tensor) for t in x)
            and isinstance(y, torch.Tensor) and y.dim() == first.dim() >= 2
            and y.shape[0] == first.shape[0] and y.shape[2:] == first.shape[2:]):
        got = type(y).__name__ if not isinstance(y, torch.Tensor) else f"tensor of shape {_fmt(y.shape[1:])}"
        return "fixed", (f"takes a list of earlier outputs and returns a {got}, not one tensor of their batch "
                         "and spatial size to add to them"), (), ""
    try:
        zero_out = _zeroed_call(block, call)
    except Exception as exc:  # cannot be run alone: leave it in place
        return "fixed", f"cannot be re-run on its input ({type(exc).__name__})", (), ""
    if isinstance(zero_out, torch.Tensor) and zero_out.shape == y.shape and not zero_out.abs().max() > 0:
        return "identity", (f"dense layer ({dense}, {y.shape[1]} new channels): with its branch zeroed it adds "
                            "zeros, and becomes that"), (), f"zeros:{y.shape[1]}"
    return "fixed", f"{dense}; with its branch zeroed it still adds non-zero channels", (), ""


def _same_items(args: tuple, out: Any, close: bool, count: int | None = None) -> bool:
    """``out`` is a tuple/list whose items (its first ``count``) are the first arguments: each
    tensor item of the argument's shape and dtype (and, with ``close``, its values), every other
    item equal."""
    count = len(out) if count is None and isinstance(out, (tuple, list)) else count
    if not isinstance(out, (tuple, list)) or not out or not count or count > min(len(out), len(args)):
        return False
    for a, o in zip(args[:count], out[:count]):
        if isinstance(o, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and a.shape == o.shape and a.dtype == o.dtype):
                return False
            if close and not _close(o, a):
                return False
        else:
            if isinstance(a, (tuple, list)) and isinstance(o, (tuple, list)):  # feat_size as list or tuple
                a, o = tuple(a), tuple(o)
            try:
                if isinstance(a, torch.Tensor) or bool(a != o):
                    return False
            except Exception:  # items that cannot be compared are not the same
                return False
    return True


def _classify_passing(block: nn.Module, call: _Call) -> Classified:
    """A block returning a tuple or list: ``identity`` when it returns its first N arguments in that
    structure (``x, feat_size = blk(x, feat_size)``) and, with every parameter zeroed, returns them
    unchanged; its stand-in then returns them as they came. Items after those N that are no
    argument (EfficientViM's hidden state: ``x, h = blk(x)``) are ``None`` in the stand-in — the
    removal check then shows whether the model runs without them (a later block's ``h`` replaces
    it; the last block's is read by the head)."""
    y = call.output
    what = f"returns a {type(y).__name__} of {len(y)}"
    passed = max((n for n in range(1, len(y) + 1) if _same_items(call.args, y, close=False, count=n)), default=0)
    if not passed:
        shapes = ", ".join(_fmt(_shape(v)[1:]) or type(v).__name__ for v in y)
        return "fixed", f"{what} ({shapes}), not its first arguments passed on", (), ""
    try:
        zero_out = _zeroed_call(block, call)
    except Exception as exc:  # cannot be run alone: leave it in place
        return "fixed", f"cannot be re-run on its input ({type(exc).__name__})", (), ""
    extra = len(y) - passed
    stand_in = f"{'list' if isinstance(y, list) else 'tuple'}:{passed}" + (f"+{extra}" if extra else "")
    arguments = f"its first {passed} argument{'s' if passed > 1 else ''}" + (f", and None for the other {extra}" if extra else "")
    if type(zero_out) is type(y) and _same_items(call.args, zero_out, close=True, count=passed):
        return "identity", f"residual, {what}: becomes a pass-through of {arguments}", (), stand_in
    if any(isinstance(m, WEIGHT_LAYERS) for m in block.modules()):
        return "plain", (f"{what}, not residual (a pass-through of {arguments} changes the function: finetune "
                         f"after)"), (), stand_in
    return "fixed", f"{what}, neither residual nor a conv/linear unit", (), ""


@dataclass
class _Found:
    """A module discovery found: its stage, and its classification or why it is fixed."""

    name: str
    stage: str  # "" for stem, head and transitions
    kind: str
    reason: str
    collapse_to: tuple[str, ...] = ()
    stand_in: str = ""  # what replaces it, if not a pass-through of its first argument
    only: bool = False  # the only block of its stage
    stream: tuple[str, ...] = ()  # an inline branch: where the stream is read before and after it


def _bare_collapse(f: _Found) -> bool:
    """A collapse to a shortcut without parameters: nothing of the block is left."""
    return f.kind == "collapse" and not f.collapse_to

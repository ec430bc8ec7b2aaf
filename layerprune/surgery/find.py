"""Find the blocks of any timm model and decide which can be removed, and how.

Everything is decided by running the model once on ``example_input``, not by class names.

A *stage* is a container whose parameterised children (its *units*) run one after another, at
least half of them modules of modules (a chain of single layers — conv, norm, conv — is the inside
of one block): an ``nn.Sequential``; a ``ModuleList`` whose units are
called in a chain (``for blk in self.blocks: x = blk(x, rope=rope)``; a break in the chain, such
as a class token joining, splits it into two stages named ``blocks[0:10]`` and ``blocks[10:12]``);
or any other module that passes each unit's output to the next and returns the last one (timm's
``RegStage``). The model itself is never a stage.

The model's own blocks come first (:mod:`layerprune.surgery.named`: timm's fine
``group_matcher`` with a stage and a block index, or the ``stages.N.blocks.M`` layout): a named
block is a block wherever it sits and is never searched inside; a module holding named blocks is
always searched; its other parts (a downsample, a global-query block) are fixed.

Each other unit of a stage is, in this order:

* a stage itself (a ``Sequential`` of residual blocks inside ``ConvNeXtStage``) — searched inside;
* a *block* when it is residual — with every parameter zeroed it returns its input, or equals
  its own shortcut — and never searched inside: its parallel paths, focal layers or cheap
  operations are parts of it, not blocks; unless a chain of two or more residual units runs
  inside it, which makes it a stage of them (searched);
* otherwise, searched inside when it holds stages of its own (a whole stage of ``stages``);
* otherwise a block of this stage (a VGG unit, a transition), classified below.

Each block is classified by running it on its recorded input (extra positional and keyword
arguments included):

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

A block is reported ``removable`` only if removing it alone is safe: it is not the only block of
its stage, and the model without it runs, keeps its output shape and can be traced by
Torch-Pruning. Rather than one copy and re-trace per block, candidates are checked in two groups
(every other one in forward order, so no two neighbours are removed together and each sees the
same surroundings as when removed alone); a group that fails is split in halves until the blocks
that break the model are found.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from layerprune.errors import SurgeryError, first_line
from layerprune.hooks import eval_mode, forward_hooks, main_tensor
from layerprune.surgery.blocks import ACTIVATIONS, SHORTCUT_NAMES, WEIGHT_LAYERS, Block
from layerprune.surgery.cost import count_macs, count_params
from layerprune.surgery import hf
from layerprune.surgery.edit import ZeroPadShortcut, set_submodule, swap_blocks
from layerprune.surgery.hf import is_hf_model
from layerprune.surgery.inputs import check_input, check_level, default_input  # noqa: F401 - re-exported
from layerprune.surgery.named import NONE, NamedBlocks, named_blocks
from layerprune.surgery.verify import dependency_graph_check

REMOVABLE_KINDS = ("identity", "plain")
CANDIDATE_KINDS = ("identity", "plain", "collapse")


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


# -- one recorded forward pass --------------------------------------------------------------------
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


# -- classification of one block ------------------------------------------------------------------
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


# -- discovery --------------------------------------------------------------------------------------
@dataclass
class _Found:
    name: str
    stage: str  # "" for stem, head and transitions
    kind: str
    reason: str
    collapse_to: tuple[str, ...] = ()
    stand_in: str = ""  # what replaces it, if not a pass-through of its first argument
    only: bool = False  # the only block of its stage
    stream: tuple[str, ...] = ()  # an inline branch: where the stream is read before and after it


class _Discovery:
    """Walks the module tree with the calls of one forward pass (see the module docstring)."""

    def __init__(self, model: nn.Module, calls: dict[str, _Call], named: NamedBlocks = NONE) -> None:
        self.model, self.calls = model, calls
        self.named, self.holders, self.pattern, self.stem = named.names, named.ancestors, named.pattern, named.stem
        self.found: list[_Found] = []
        self._segments: dict[str, list[tuple[str, list[str]]]] = {}
        self._holds: dict[str, bool] = {}
        self._classified: dict[str, Classified] = {}

    # which containers are stages
    def _linked(self, a: str, b: str) -> bool:
        ca, cb = self.calls.get(a), self.calls.get(b)
        return (ca is not None and cb is not None and ca.calls == 1 and cb.calls == 1
                and cb.order > ca.order and _passes_on(ca, cb.in_key, cb.in_version))

    def segments(self, name: str) -> list[tuple[str, list[str]]]:
        """The stages this container is: ``[(stage name, unit names)]``; empty if it is none."""
        if name not in self._segments:
            self._segments[name] = self._find_segments(name) if name else []
        return self._segments[name]

    def _find_segments(self, name: str) -> list[tuple[str, list[str]]]:
        module = self.model.get_submodule(name)
        children = [(n, c) for n, c in module.named_children() if _has_params(c)]
        # Units are modules of modules; a chain of mostly single layers (conv, norm, conv, …) is
        # the inside of one block, such as an inverted residual without a skip.
        if not children or 2 * sum(_holds_params_inside(c) for _, c in children) < len(children):
            return []
        units = [f"{name}.{n}" for n, _ in children]
        if isinstance(module, nn.Sequential):
            return [(name, units)]
        links = [self._linked(a, b) for a, b in zip(units, units[1:])]
        call = self.calls.get(name)
        if call is not None:  # a called container must chain its units and return the last output
            last = self.calls.get(units[-1])
            if all(links) and last is not None and _passes_on(last, call.out_key, call.out_version):
                return [(name, units)]
            return []
        # never called itself (a ModuleList): the runs of units that chain, each a stage
        runs, start = [], 0
        for i, linked in enumerate(links + [False]):
            if not linked:
                runs.append((start, i + 1))
                start = i + 1
        if len(runs) == 1:  # one unit in a list is no chain (it may be one branch of several)
            return [(name, units)] if len(units) > 1 else []
        keys = [n for n, _ in children]
        label = (lambda a, b: f"{name}[{keys[a]}:{int(keys[b - 1]) + 1}]") if all(k.isdigit() for k in keys) \
            else (lambda a, b: f"{name}[{keys[a]}..{keys[b - 1]}]")
        return [(label(a, b), units[a:b]) for a, b in runs
                if b - a > 1 and any(_holds_params_inside(self.model.get_submodule(u)) for u in units[a:b])]

    def wrapper(self, name: str) -> bool:
        """A module (not a ``Sequential``) that only calls one unit and returns its output, such as
        a block whose forward is ``return self.mixer(x)``: within a stage it is that stage's unit,
        not a stage of one. Outside every stage (RegNet's ``s1`` with one block) it is a stage."""
        segments = self.segments(name)
        return (not isinstance(self.model.get_submodule(name), nn.Sequential)
                and len(segments) == 1 and len(segments[0][1]) == 1)

    def holds_stage(self, name: str) -> bool:
        if name not in self._holds:
            module = self.model.get_submodule(name)
            prefix = f"{name}." if name else ""
            self._holds[name] = any(
                self.segments(prefix + n) or self.holds_stage(prefix + n)
                for n, c in module.named_children() if _has_params(c)
            )
        return self._holds[name]

    def returns_stage_output(self, name: str) -> bool:
        """The module returns, unchanged, the output of a stage inside it: it holds a stage (a
        downsample, then a ``ModuleList`` of blocks), and it is residual only because they are."""
        call = self.calls.get(name)
        if call is None:
            return False
        for inner, _ in self.model.get_submodule(name).named_modules(prefix=name):
            parent = inner.rpartition(".")[0]
            inner_call = self.calls.get(inner)
            if (inner != name and parent != name and inner_call is not None and self.segments(parent)
                    and _passes_on(inner_call, call.out_key, call.out_version)):
                return True
        return False

    def classify(self, name: str) -> Classified:
        """``(kind, reason, collapse_to, stand_in)``, worked out once per module."""
        if name not in self._classified:
            kind, reason, collapse_to, stand_in = _classify(self.model.get_submodule(name), self.calls.get(name))
            if name in self.stem and kind == "collapse" and not collapse_to:  # the stem is no block
                kind, reason, stand_in = "fixed", f"stem, not a block (timm's group_matcher); {reason.split(':')[0]}", ""
            self._classified[name] = kind, reason, collapse_to, stand_in
        return self._classified[name]

    # the walk
    def walk(self, name: str) -> None:
        """A container that is not a stage: its stages are searched, its other parts listed."""
        module = self.model.get_submodule(name)
        prefix = f"{name}." if name else ""
        for child_name, child in module.named_children():
            if _has_params(child):
                self.place(prefix + child_name)

    def place(self, name: str) -> None:
        """A module outside every stage: a named block (of the stage its parent is), a stage, a
        holder of stages or of named blocks, or a fixed part."""
        if name in self.named:
            self.found.append(_Found(name, name.rpartition(".")[0], *self.classify(name)))
        elif name in self.holders:
            self.descend(name)
        elif name in self.stem:
            self.found.append(_Found(name, "", "fixed", "stem, not a block (timm's group_matcher)"))
        elif self.beside_named(name):
            self.found.append(self.not_named(name))
        elif self.segments(name):
            self.visit_stage(name)
        elif self.holds_stage(name):
            self.walk(name)
        else:
            self.found.append(_Found(name, "", "fixed", ""))

    def beside_named(self, name: str) -> bool:
        """The module sits inside a module that holds named blocks (other than the model itself)
        and is not one of them: a downsample or a global-query block of a stage, say."""
        parent = name.rpartition(".")[0]
        if not parent or parent not in self.holders:
            return False
        # a module holding the matcher's stem (a CIFAR VGG's stages.0, whose first conv is the
        # stem) is searched as it always was
        return not any(s == name or s.startswith(name + ".") for s in self.stem)

    def not_named(self, name: str) -> _Found:
        return _Found(name, "", "fixed", f"part of {name.rpartition('.')[0]!r}, not one of the model's own blocks "
                                         f"({self.pattern})")

    def residual_chain_inside(self, name: str) -> bool:
        """A chain of two or more residual units runs inside the module (a stage of residual
        blocks that is residual itself, as a whole stage of GCViT is): it is searched, not a block."""
        for inner, _ in self.model.get_submodule(name).named_modules(prefix=name):
            for _, units in self.segments(inner):
                if sum(self.classify(u)[0] == "identity" for u in units if u in self.calls) >= 2:
                    return True
        return False

    def descend(self, name: str) -> None:
        if self.segments(name):
            self.visit_stage(name)
        else:
            self.walk(name)

    def visit_stage(self, name: str) -> None:
        segments = self.segments(name)
        covered = {u for _, units in segments for u in units}
        prefix = f"{name}."
        for child_name, child in self.model.get_submodule(name).named_children():
            unit = prefix + child_name  # a unit between two chains (after a break) is no block
            if _has_params(child) and unit not in covered:
                self.place(unit)
        for stage, units in segments:
            own: list[_Found] = []
            descended = False
            for unit in units:
                if unit in self.named:  # the model's own block: never searched inside
                    own.append(_Found(unit, stage, *self.classify(unit)))
                    continue
                beside = self.beside_named(unit)
                if unit in self.holders or (self.segments(unit) and not self.wrapper(unit) and not beside):
                    self.descend(unit)
                    descended = True
                    continue
                if beside:  # still a unit of the stage, which keeps it
                    own.append(replace(self.not_named(unit), stage=stage))
                    continue
                kind = self.classify(unit)[0]
                if self.holds_stage(unit) and (kind not in ("identity", "collapse") or self.returns_stage_output(unit)
                                               or self.residual_chain_inside(unit)):
                    self.walk(unit)
                    descended = True
                    continue
                own.append(_Found(unit, stage, *self.classify(unit)))
            for found in own:
                if descended and (found.kind not in CANDIDATE_KINDS or _bare_collapse(found)):
                    found = _Found(found.name, "", "fixed", "")  # a transition between sub-stages
                self.found.append(found)


    # sub-layers (level="sublayer")
    def split(self) -> None:
        """Each residual block with two or more residual sub-layers inside is replaced by them: the
        chain of residual units it runs (EfficientViT's dw0 … ffn1), else its inline branches
        (timm ViT's attn and mlp). Other blocks stay as they are."""
        found = []
        for f in self.found:
            inner = (self.inner_chain(f) or self.inline_branches(f)) if f.stage and f.kind == "identity" else []
            found.extend(inner or [f])
        self.found = found

    def inner_chain(self, f: _Found) -> list[_Found]:
        """The residual units of the outermost chains inside the block, if two or more."""
        units: list[str] = []
        for inner, _ in self.model.get_submodule(f.name).named_modules(prefix=f.name):
            if any(inner == u or inner.startswith(u + ".") for u in units):
                continue
            for _, members in self.segments(inner):
                units += [u for u in members if u in self.calls and self.classify(u)[0] == "identity"
                          and self._informative_input(u)]
        if len(units) < 2:
            return []
        return [_Found(u, f.stage, *self.classify(u)) for u in units]

    def _informative_input(self, name: str) -> bool:
        """The unit's recorded input is not (close to) all zeros: at random init a zero-initialised
        norm layer can feed one values of 1e-7, and then any unit looks residual within the
        tolerance of the test."""
        call = self.calls[name]
        first = call.args[0] if call.args else None
        return (not isinstance(first, torch.Tensor) or not first.is_floating_point()
                or float(first.abs().max()) > 1e-3)

    def inline_branches(self, f: _Found) -> list[_Found]:
        """The block's direct children that are modules of modules, shape-preserving, called once,
        each a branch of its own — not a piece of a longer chain: with it returning zeros, no later
        module of modules in the block reads an input that no longer depends on the block's input
        (a bottleneck's ``conv1`` feeds ``conv2`` through nothing else) — and together its whole
        residual path: with all of them returning zeros, the block returns its input. Each is a
        sub-layer that a :class:`~layerprune.surgery.edit.Zeros` replaces."""
        block, call = self.model.get_submodule(f.name), self.calls.get(f.name)
        prefix = f"{f.name}."
        inner, candidates = [], []
        for child_name, child in block.named_children():
            name, c = prefix + child_name, self.calls.get(prefix + child_name)
            if c is None or not _holds_params_inside(child):
                continue
            inner.append(name)
            if c.calls == 1 and c.in_shape and c.in_shape == c.out_shape and isinstance(c.output, torch.Tensor):
                candidates.append(name)
        if (len(candidates) < 2 or call is None or not call.args or not isinstance(call.args[0], torch.Tensor)
                or not call.args[0].is_floating_point() or not self._informative_input(f.name)):
            return []
        candidates.sort(key=lambda n: self.calls[n].order)
        try:
            branches = [c for c in candidates if not self._feeds_chain(block, call, c, inner)]
            if len(branches) < 2:
                return []
            with forward_hooks(self.model, after={n: _zeros for n in branches}), torch.no_grad():
                out = block(*call.args, **(call.kwargs or {}))
        except Exception:  # cannot be re-run alone: the block stays whole
            return []
        if not (_close(out, call.args[0]) if isinstance(out, torch.Tensor) else _same_items(call.args, out, close=True)):
            return []
        streams = self.streams(f.name, branches)
        reason = "residual branch written inline in its block: becomes zeros (its weights and compute go)"
        return [_Found(n, f.stage, "identity", reason, (), "zeros", stream=stream) for n, stream in zip(branches, streams)]

    def _feeds_chain(self, block: nn.Module, call: _Call, child: str, inner: list[str]) -> bool:
        """With ``child`` returning zeros, some later module of modules of the block reads the same
        input whatever the block's input is (run twice, on the recorded input and on it plus
        noise): ``child`` is a piece of a chain, not a branch of its own."""
        later = [m for m in inner if m != child and self.calls[m].order > self.calls[child].order]
        if not later:
            return False
        x = call.args[0]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
        reads = []
        for first in (x, x + noise * (float(x.std()) if x.numel() > 1 else 1.0)):
            seen: dict[str, torch.Tensor] = {}

            def keep(name: str):
                def fn(module, args) -> None:  # returning a value would replace the arguments
                    value = main_tensor(args)
                    if isinstance(value, torch.Tensor):
                        seen.setdefault(name, value.clone())
                return fn

            with forward_hooks(self.model, after={child: _zeros}, before={m: keep(m) for m in later}), torch.no_grad():
                block(first, *call.args[1:], **(call.kwargs or {}))
            reads.append(seen)
        return any(m in reads[0] and m in reads[1] and reads[0][m].shape == reads[1][m].shape
                   and torch.allclose(reads[0][m], reads[1][m]) for m in later)

    def streams(self, name: str, branches: list[str]) -> list[tuple[str, str]]:
        """Where the residual stream is read around each branch: before the first, the block's
        input; after each, the input of the first later module of the block that reads a new
        tensor (not a branch's output on its way back, not the block's input: LayerNorm ``norm2``
        after the attention branch); after the last, the block's output. Branches that run side by
        side (no such module between them) are all read at the block's input and output."""
        prefix = f"{name}."
        children = [prefix + n for n, _ in self.model.get_submodule(name).named_children() if prefix + n in self.calls]
        # tensors that are not the stream: the block's input and what its modules returned
        other = {self.calls[name].in_key, None} | {self.calls[c].out_key for c in children}
        sites = [f"{name}:in"]
        for branch in branches[:-1]:
            start = self.calls[branch].order
            later = sorted((c for c in children if self.calls[c].order > start), key=lambda c: self.calls[c].order)
            site = next((c for c in later if self.calls[c].in_key not in other), None)
            if site is None:
                return [(f"{name}:in", f"{name}:out")] * len(branches)
            sites.append(f"{site}:in")
        sites.append(f"{name}:out")
        return list(zip(sites, sites[1:]))


def _zeros(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """A forward hook that makes a module return zeros (a sub-layer, as if removed)."""
    return torch.zeros_like(output)


def discover(model: nn.Module, calls: dict[str, _Call], named: NamedBlocks = NONE,
             level: str = "block") -> list[_Found]:
    """Blocks (with their stage and kind) and the other parameterised parts, unordered."""
    walker = _Discovery(model, calls, named)
    walker.walk("")
    if level == "sublayer":
        walker.split()
    return walker.found


# -- the public entry point -------------------------------------------------------------------------
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


def _bare_collapse(f: _Found) -> bool:
    """A collapse to a shortcut without parameters: nothing of the block is left."""
    return f.kind == "collapse" and not f.collapse_to


def _only_block_of_stage(found: list[_Found]) -> None:
    """A stage keeps at least one block, so the only block of a stage cannot be removed (a
    collapse leaves the shortcut module in place and stays possible; one to a shortcut without
    parameters does not)."""
    members: dict[str, int] = {}
    for f in found:
        if f.stage:
            members[f.stage] = members.get(f.stage, 0) + 1
    for i, f in enumerate(found):
        if f.stage and members[f.stage] == 1 and (f.kind in REMOVABLE_KINDS or _bare_collapse(f)):
            reason = f"only block of stage {f.stage!r} ({f.reason}); a stage keeps at least one block"
            found[i] = replace(f, only=True, reason=reason, **({"kind": "fixed", "stand_in": ""} if _bare_collapse(f) else {}))


def _confirm(model: nn.Module, found: list[_Found], orders: dict[str, int], example_input: torch.Tensor,
             out_shape: tuple[int, ...], clone: nn.Module | None = None) -> None:
    """Check that each candidate can be removed alone; mark the ones that cannot as fixed.

    When Torch-Pruning cannot trace the model even with nothing removed, removal cannot make that
    worse: the candidates are then checked by running the model only, and their reasons say so.
    """
    candidates = sorted((f for f in found if f.kind in CANDIDATE_KINDS and not f.only),
                        key=lambda f: orders[f.name])
    # One sample is enough for these checks (the graph does not depend on the batch size), and
    # a traced forward pass holds every activation: half the batch, half the memory.
    check = _Check(model, example_input[:1], (1, *out_shape[1:]), clone)
    # Collapses to a shortcut without parameters change the channels the blocks after them see,
    # so they are checked apart, among the other blocks (removing a later block with them can
    # hide a failure: a DPN stage whose first block is collapsed cannot be traced with its third
    # block in place).
    bare = [f for f in candidates if _bare_collapse(f)]
    rest = [f for f in candidates if not _bare_collapse(f)]
    for group in (rest[0::2], rest[1::2], bare):
        check.group(group)
    if not check.trace:
        note = " (Torch-Pruning cannot trace this model, with or without the block; checked by running it)"
        for i, f in enumerate(found):
            if f in candidates and f.name not in check.failed:
                found[i] = replace(f, reason=f.reason + note)
    for i, f in enumerate(found):
        if f.name in check.failed:
            found[i] = replace(f, kind="fixed", collapse_to=(), stand_in="",
                               reason=f"model fails without it ({check.failed[f.name]})")


class _Check:
    """Removes groups of blocks from copies of the model and records the blocks that fail alone."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, out_shape: tuple[int, ...],
                 clone: nn.Module | None = None) -> None:
        self.model, self.example_input, self.out_shape = model, example_input, out_shape
        self.trace = True  # until the untouched model turns out not to be traceable
        self.failed: dict[str, str] = {}
        self._clone = clone  # a copy of model, made on first use when not given

    def group(self, group: list[_Found]) -> None:
        """Remove the group at once; if that fails, each half, down to the blocks that fail alone.
        A group without which the model does not even run is first searched by running it only
        (a Torch-Pruning trace costs several forward passes): the blocks it cannot run without are
        found that way, and the others are checked again at once."""
        if not group:
            return
        error = self.without(group)
        if error is not None and len(group) > 1 and self.without(group, trace=False) is not None:
            alone = self.run_failures(group)
            if alone:
                self.group([f for f in group if f.name not in alone])
                return
        if error is not None and self.trace and self.without([]) is not None:
            self.trace = False
            error = self.without(group)
        if error is None:
            return
        if len(group) == 1:
            self.failed[group[0].name] = error
            return
        half = len(group) // 2
        self.group(group[:half])
        self.group(group[half:])

    def run_failures(self, group: list[_Found]) -> set[str]:
        """The blocks of ``group`` the model cannot run without, alone (recorded as failed),
        found by running it without halves of the group."""
        error = self.without(group, trace=False)
        if error is None:
            return set()
        if len(group) == 1:
            self.failed[group[0].name] = error
            return {group[0].name}
        half = len(group) // 2
        return self.run_failures(group[:half]) | self.run_failures(group[half:])

    def without(self, group: list[_Found], trace: bool | None = None) -> str | None:
        """``None`` if the model without ``group`` runs, keeps its output shape, gives finite
        values and (with ``trace``, by default this check's) can be traced by Torch-Pruning, whose
        own forward pass is then the one checked; else the error in words."""
        trace = self.trace if trace is None else trace
        seen: list[Any] = []
        if self._clone is None:  # one copy serves every check: blocks are swapped out and back
            self._clone = copy.deepcopy(self.model)
        clone = self._clone
        originals = {f.name: clone.get_submodule(f.name) for f in group}
        try:
            swap_blocks(clone, {f.name: f.collapse_to or f.stand_in for f in group})
            if trace:
                with clone.register_forward_hook(lambda m, a, out: seen.append(out)):
                    dependency_graph_check(clone, self.example_input)
            else:
                with torch.no_grad():
                    seen.append(clone(self.example_input))
            out = seen[0] if seen else None
            if not isinstance(out, torch.Tensor):
                return "no tensor output"
            if _shape(out) != self.out_shape:
                return f"output shape {_fmt(_shape(out))} instead of {_fmt(self.out_shape)}"
            if not torch.isfinite(out).all():
                return "non-finite output"
        except Exception as exc:  # any failure means "not safely removable"; report it in words
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            for name, module in originals.items():
                set_submodule(clone, name, module)
        return None

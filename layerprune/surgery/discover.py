"""Discover the stages of a model and their blocks, from the calls of one forward pass.

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
* otherwise a block of this stage (a VGG unit, a transition), classified by
  :mod:`layerprune.surgery.classify`.

At ``level="sublayer"`` residual blocks are then split into their residual sub-layers
(:mod:`layerprune.surgery.sublayers`).
"""

from __future__ import annotations

from dataclasses import replace

import torch.nn as nn

from layerprune.surgery.calls import _Call, _has_params, _holds_params_inside, _passes_on
from layerprune.surgery.classify import CANDIDATE_KINDS, Classified, _bare_collapse, _classify, _Found
from layerprune.surgery.named import NONE, STEM, NamedBlocks
from layerprune.surgery.sublayers import _SubLayers


class _Discovery(_SubLayers):
    """Walks the module tree with the calls of one forward pass (see the module docstring)."""

    def __init__(self, model: nn.Module, calls: dict[str, _Call], named: NamedBlocks = NONE) -> None:
        self.model, self.calls = model, calls
        self.naming = named  # the blocks the model names itself
        self.named, self.holders, self.stem = named.names, named.ancestors, named.stem
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
                kind, reason, stand_in = "fixed", f"{STEM}; {reason.split(':')[0]}", ""
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
            self.found.append(_Found(name, "", "fixed", STEM))
        elif self.beside_named(name):
            self.found.append(self.not_named(name))
        elif self.segments(name):
            self.visit_stage(name)
        elif self.holds_stage(name):
            self.walk(name)
        else:
            self.found.append(_Found(name, "", "fixed", ""))

    def beside_named(self, name: str) -> bool:
        """The module sits beside the model's own blocks (see :meth:`NamedBlocks.beside`)."""
        return self.naming.beside(name)

    def not_named(self, name: str) -> _Found:
        return _Found(name, "", "fixed", self.naming.beside_reason(name))

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


def discover(model: nn.Module, calls: dict[str, _Call], named: NamedBlocks = NONE,
             level: str = "block") -> list[_Found]:
    """Blocks (with their stage and kind) and the other parameterised parts, unordered."""
    walker = _Discovery(model, calls, named)
    walker.walk("")
    if level == "sublayer":
        walker.split()
    return walker.found

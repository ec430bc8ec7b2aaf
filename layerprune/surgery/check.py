"""Check that each candidate block can be removed alone, on a copy of the model.

A block is reported ``removable`` only if removing it alone is safe: it is not the only block of
its stage, and the model without it runs, keeps its output shape and can be traced by
Torch-Pruning. Rather than one copy and re-trace per block, candidates are checked in two groups
(every other one in forward order, so no two neighbours are removed together and each sees the
same surroundings as when removed alone); a group that fails is split in halves until the blocks
that break the model are found.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from layerprune.surgery.calls import _fmt, _shape
from layerprune.surgery.classify import CANDIDATE_KINDS, REMOVABLE_KINDS, _bare_collapse, _Found
from layerprune.surgery.edit import set_submodule, swap_blocks
from layerprune.surgery.verify import dependency_graph_check


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

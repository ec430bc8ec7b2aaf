"""The blocks a model names itself: timm's fine ``group_matcher`` and the ``stages.N.blocks.M`` layout.

timm describes every model's repeated units for layer-wise learning-rate decay:
``model.group_matcher(coarse=False)`` maps parameter names to groups with regular expressions, and
where a pattern carries a stage and a block index (``^layer(\\d+)\\.(\\d+)`` for ResNet,
``^stages\\.(\\d+)\\.blocks\\.(\\d+)`` for ConvNeXt) the module it matches whole is one block as the
model's authors see it. :func:`named_blocks` applies those patterns to *module* names the way timm
applies them to parameter names (in order, first match wins, stem patterns included), and keeps the
modules a two-index pattern matches exactly. A model whose matcher names no such level (a coarse
``^stages\\.(\\d+)`` only, a function, or no matcher at all) but whose modules are laid out as
``stages.N.blocks.M`` has those modules as its blocks.

Discovery (:mod:`layerprune.surgery.discover`) never offers the inside of a named block at the block
level and always searches the modules that hold one, whose other parts (:meth:`NamedBlocks.beside`)
are fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import torch.nn as nn

LAYOUT = r"(^|\.)stages\.\d+\.blocks\.\d+$"
STEM = "stem, not a block (timm's group_matcher)"  # why a module of the stem group is fixed


@dataclass(frozen=True)
class NamedBlocks:
    """The modules named as blocks, and where the names come from (for reports)."""

    names: frozenset[str]
    pattern: str  # the pattern(s) that named them, or "" when none did
    source: str  # "group_matcher", "layout" or "none"
    stem: frozenset[str] = frozenset()  # modules the matcher puts in its stem group
    # each named block's stage as its pattern numbers it (DPN's features.conv4_2 → "conv…:4")
    stages: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @cached_property
    def ancestors(self) -> frozenset[str]:
        """Every module that holds a named block (the model itself as "")."""
        out = set()
        for name in self.names:
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(len(parts)))
        return frozenset(out)

    def beside(self, name: str) -> bool:
        """The module sits inside a module that holds named blocks (other than the model itself)
        and is not one of them: a downsample or a global-query block of a stage, say."""
        parent = name.rpartition(".")[0]
        if not parent or parent not in self.ancestors:
            return False
        # a module holding the matcher's stem (a CIFAR VGG's stages.0, whose first conv is the
        # stem) is searched as it always was
        return not any(s == name or s.startswith(name + ".") for s in self.stem)

    def beside_reason(self, name: str) -> str:
        """Why a module beside named blocks is fixed."""
        return f"part of {name.rpartition('.')[0]!r}, not one of the model's own blocks ({self.pattern})"


NONE = NamedBlocks(frozenset(), "", "none")


def _matcher_entries(model: nn.Module) -> list[tuple[str, re.Pattern, object]]:
    """timm's fine group matcher as ``(group, compiled pattern, suffix)`` in matching order, or ``[]``."""
    fn = getattr(model, "group_matcher", None)
    if not callable(fn):
        return []
    try:
        spec = fn(coarse=False)
    except Exception:  # a matcher that needs more than the default call is no description to use
        return []
    if not isinstance(spec, dict):  # a function matcher gives ordinals, not block names
        return []
    entries = []
    for group, value in spec.items():
        if value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [(value, None)]):
            pattern, suffix = item if isinstance(item, (list, tuple)) else (item, None)
            try:
                entries.append((group, re.compile(pattern), suffix))
            except (re.error, TypeError):
                return []
    return entries


def named_blocks(model: nn.Module, names: list[str]) -> NamedBlocks:
    """The modules among ``names`` that the model names as its blocks (see the module docstring)."""
    entries = _matcher_entries(model)
    found, stem, used, stage_of = set(), set(), [], {}
    for name in names:
        for group, pattern, suffix in entries:
            match = pattern.match(name)
            if match is None:
                continue
            if suffix is None and pattern.groups >= 2 and match.group(0) == name:
                found.add(name)
                stage_of[name] = f"{pattern.pattern}:{match.group(1)}"
                if pattern.pattern not in used:
                    used.append(pattern.pattern)
            elif str(group).startswith("stem"):
                stem.add(name)
            break
    if found:
        return NamedBlocks(frozenset(found), " ".join(used), "group_matcher", frozenset(stem), stage_of)
    layout = {n for n in names if re.search(LAYOUT, n)}
    if layout:
        return NamedBlocks(frozenset(layout), "stages.N.blocks.M", "layout", frozenset(stem),
                           stages={n: n.rpartition(".blocks.")[0] for n in layout})
    return NONE


@dataclass(frozen=True)
class Coverage:
    """How the blocks found compare with the blocks the model names (a zoo-table column)."""

    pattern: str  # timm's pattern, "stages.N.blocks.M", or "none"
    named: int  # modules the model names as blocks
    listed: int  # of those, listed by find_blocks as blocks of a stage
    removable: int  # of those, removable (or collapsible)
    expected: int  # named blocks minus one kept per stage
    short: dict[str, int]  # why the others are not offered: reason → count

    @property
    def complete(self) -> bool:
        return self.listed == self.named and self.removable >= self.expected


def coverage(blocks, named: NamedBlocks, gist=lambda reason: reason) -> Coverage:
    """Compare ``find_blocks``' answer with the named blocks: every named block should be offered
    (removable, or collapsible) except one per stage — a stage as discovery groups them and as the
    model numbers them (DPN's blocks share one container, ``features``, and its names number four
    stages). ``gist`` shortens a reason for the counts."""
    by_name = {b.name: b for b in blocks if b.stage}
    stages: dict[tuple[str, str], list] = {}
    for name in sorted(named.names):
        if name in by_name:
            stages.setdefault((by_name[name].stage, named.stages.get(name, "")), []).append(by_name[name])
    listed = sum(map(len, stages.values()))
    short: dict[str, int] = {}
    if len(named.names) > listed:
        short["not reached by discovery"] = len(named.names) - listed
    offered = 0
    for members in stages.values():
        kept = [b for b in members if not (b.removable or b.collapsible)]
        offered += len(members) - len(kept)
        if len(kept) > 1:  # more than the one block a stage keeps
            for b in kept:
                short[gist(b.reason)] = short.get(gist(b.reason), 0) + 1
    return Coverage(named.pattern or "none", len(named.names), listed, offered, listed - len(stages), short)

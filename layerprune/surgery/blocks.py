"""The unit of surgery: :class:`Block` (one candidate for removal, or a fixed part of the model
with the reason it stays), and the one rule every plan obeys: a stage keeps at least one block.

How blocks are found and classified: :mod:`layerprune.surgery.find`; how they are swapped out:
:mod:`layerprune.surgery.edit`; how the result is checked: :mod:`layerprune.surgery.verify`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

SHORTCUT_NAMES = ("shortcut", "downsample", "skip", "residual")
LEVELS = ("block", "sublayer")  # what blocks are found at: whole blocks, or residual sub-layers inside them


def check_level(level: str) -> str:
    if level not in LEVELS:
        from layerprune.errors import SurgeryError

        raise SurgeryError(f"level must be one of {', '.join(map(repr, LEVELS))}, got {level!r}")
    return level


def __getattr__(name: str) -> Any:
    """``ACTIVATIONS`` and ``WEIGHT_LAYERS`` (tuples of torch layer classes), made on first use so
    that naming a :class:`Block` imports no torch."""
    if name not in ("ACTIVATIONS", "WEIGHT_LAYERS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch.nn as nn

    value = ((nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh,
              nn.CELU, nn.SELU) if name == "ACTIVATIONS" else (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    globals()[name] = value
    return value


def is_conv1d_projection(module: Any) -> bool:
    """Whether ``module`` is transformers' ``Conv1D``: GPT-2's attention and MLP projections, a
    linear layer whose weight is stored transposed (not a convolution, and not an ``nn.Linear``)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def has_weights(module: Any) -> bool:
    """Whether weight-reading criteria (``magnitude``) read ``module``: a conv or linear layer, or
    transformers' ``Conv1D``."""
    return isinstance(module, __getattr__("WEIGHT_LAYERS")) or is_conv1d_projection(module)


@dataclass(frozen=True)
class Block:
    """One candidate for removal (or a fixed part of the model, with the reason it stays)."""

    name: str
    stage: str  # the container it sits in; "" for stem, head and transitions
    kind: str  # "identity" | "plain" | "collapse" | "fixed"
    removable: bool  # removable without asking for collapse
    reason: str  # why not, or how
    params: int
    macs: int
    macs_share: float
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    collapse_to: tuple[str, ...] = field(default=())  # child modules that replace it when collapsed
    # what stands in for it when removed, if not a PassThrough of its first argument: "tuple:N" /
    # "list:N" (it returns its first N arguments, as x, feat_size = blk(x, feat_size)), "zeros" (a
    # residual branch, level="sublayer"), "zeros:C" (a dense layer), "shortcut:C[:S]" (a shortcut
    # without parameters: a dual-path block, or the collapse of a block that changes shape and has
    # no shortcut module)
    stand_in: str = ""
    # a sub-layer written inline in its block (x = x + attn(norm1(x))): where the residual stream
    # is read before and after it, as "module:in" / "module:out" ("blocks.3:in", "blocks.3.norm2:in")
    stream: tuple[str, ...] = field(default=())
    latency_share: float | None = None  # its measured share of the model's latency (measure_block_latency)

    @property
    def collapsible(self) -> bool:
        return self.kind == "collapse"

    def can_remove(self, collapse: bool = False) -> bool:
        return self.removable or (collapse and self.collapsible)

    @property
    def edit(self) -> tuple[str, ...] | str:
        """How it is taken out (see :func:`~layerprune.surgery.edit.replacement`): the child names
        it collapses to, its stand-in, or ``()`` for a pass-through of its first argument."""
        return self.collapse_to or self.stand_in or ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_shape"], d["out_shape"], d["collapse_to"] = list(self.in_shape), list(self.out_shape), list(self.collapse_to)
        d["stream"] = list(self.stream)
        d["collapsible"] = self.collapsible
        return d


def stages(blocks: Iterable[Block]) -> dict[str, list[Block]]:
    """The blocks of each stage, in forward order (stem, head and transitions have no stage)."""
    out: dict[str, list[Block]] = {}
    for b in blocks:
        if b.stage:
            out.setdefault(b.stage, []).append(b)
    return out


class StagePlan:
    """Blocks chosen for removal, one at a time, never the last one left in a stage.

    The one place that rule lives: selection rules, ``plan_edits`` and the recipe preflight's
    reachable-budget estimate all go through :meth:`try_remove`.
    """

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.left = {stage: len(members) for stage, members in stages(blocks).items()}
        self.removed: list[Block] = []

    def try_remove(self, block: Block) -> bool:
        """Add ``block`` unless it is the last block left in its stage; ``True`` if added.

        A collapsed block leaves its shortcut module in place, so collapsing never empties a
        stage; a collapse to a shortcut without parameters leaves nothing and counts as a removal.
        """
        if not (block.collapsible and block.collapse_to):
            if self.left.get(block.stage, 0) <= 1:
                return False
            self.left[block.stage] -= 1
        self.removed.append(block)
        return True

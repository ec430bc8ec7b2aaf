"""Data-free baselines: ``random``, ``tail`` and ``magnitude``. None of them runs the model."""

from __future__ import annotations

import numpy as np

from layerprune.lazy import lazy_import
from layerprune.criteria.base import Criterion
from layerprune.criteria.context import ScoringContext
from layerprune.errors import LayerpruneError
from layerprune.surgery import blocks as surgery_blocks

torch = lazy_import("torch")


class RandomCriterion(Criterion):
    """Uniform random scores from a seeded generator: the floor every criterion must beat.

    Source: the random-pruning control of Liu et al., "Rethinking the Value of Network Pruning",
    ICLR 2019. Cost: none.
    """

    description = "Seeded uniform random scores (the floor every criterion must beat)"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        rng = np.random.default_rng(self.seed)
        blocks = ctx.scorable
        return dict(zip((b.name for b in blocks), rng.random(len(blocks)).tolist()))


class TailCriterion(Criterion):
    """Position in the stage: the last blocks of each stage go first.

    Source: the "drop the last layers" heuristic used as a baseline for layer dropping in
    transformers (Sajjad et al., "On the Effect of Dropping Layers of Pre-trained Transformer
    Models", Computer Speech & Language 2023) and by Gromov et al., "The Unreasonable
    Ineffectiveness of the Deeper Layers", 2024. Cost: none.
    Score: ``(n − 1 − position) / n`` within a stage of ``n`` blocks, so each stage's last block
    scores 0 and the first ``(n − 1) / n``.
    """

    description = "Position in the stage: drop the last blocks of each stage first"

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        stages: dict[str, list[str]] = {}
        for b in ctx.scorable:
            stages.setdefault(b.stage, []).append(b.name)
        return {name: (len(names) - 1 - i) / len(names)
                for names in stages.values() for i, name in enumerate(names)}


class MagnitudeCriterion(Criterion):
    """Mean weight magnitude per parameter of the block's conv/linear layers (L1: mean |w|,
    L2: root mean square); a transformers model's projections (``nn.Linear``, GPT-2's ``Conv1D``).

    Source: magnitude pruning, Han et al., "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015, and the L1 filter norm of Li et al., "Pruning Filters for
    Efficient ConvNets", ICLR 2017, taken per parameter so that blocks of different widths compare.
    Cost: none (reads the weights).
    """

    description = "Mean |w| (p=1) or RMS (p=2) of the block's conv/linear weights (Han 2015, Li 2017)"

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise LayerpruneError(f"p: must be 1 or 2, got {p!r}")
        self.p = p

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        scores = {}
        for b in ctx.scorable:
            weights = [m.weight.detach().flatten() for m in ctx.model.get_submodule(b.name).modules()
                       if surgery_blocks.has_weights(m)]
            if not weights:
                continue
            w = torch.cat(weights).double()
            scores[b.name] = float(w.abs().mean() if self.p == 1 else w.pow(2).mean().sqrt())
        return scores

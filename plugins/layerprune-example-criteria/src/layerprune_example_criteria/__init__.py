"""Example criteria shipped as an installable package (entry-point group ``layerprune.criteria``).

``feature_rank_gain`` — change in the effective rank of the features across a block.

The package is found through its entry point (see ``pyproject.toml``); layerprune imports this
module only when the criterion is used or listed. The classes here are *not* decorated with
``@register_criterion``: the entry point registers them, under the name given there.

Importing this module imports only layerprune and torch.
"""

from __future__ import annotations

import math

import torch

from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.errors import LayerpruneError

__all__ = ["FeatureRankGain", "effective_rank"]
__version__ = "0.1.0"


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of ``features (N, D)``: ``exp(H(p))`` with ``p_i = σ_i / Σ σ_j`` over the
    singular values of the centred features (Roy & Vetterli, EUSIPCO 2007).

    Between 1 (all samples on one line) and ``min(N − 1, D)`` (all directions equally used);
    constant features give 0. Singular values below ``σ_max · max(N, D) · ε`` (the tolerance of
    ``torch.linalg.matrix_rank``) count as zero. Cost: ``O(N² D)``, like one ``N × N`` Gram matrix.
    """
    f = features.reshape(len(features), -1).double()
    f = f - f.mean(dim=0, keepdim=True)
    sigma = torch.linalg.svdvals(f)
    if len(sigma) == 0 or float(sigma.max()) == 0.0:
        return 0.0
    sigma = sigma[sigma > sigma.max() * max(f.shape) * torch.finfo(f.dtype).eps]
    p = sigma / sigma.sum()
    return math.exp(float(-(p * p.log()).sum()))


class FeatureRankGain(Criterion):
    """Change in effective rank of the features across the block: ``erank(output) − erank(input)``.

    Effective rank: Roy & Vetterli, "The effective rank: A measure of effective dimensionality",
    EUSIPCO 2007. Feng et al., "Rank Diminishing in Deep Neural Networks", NeurIPS 2022, show
    that the rank of features falls with depth; this criterion asks how much each block changes
    it. It is an *example* criterion, not one validated for pruning: a block that expands the
    features' dimensionality scores high, one that leaves it unchanged scores 0, one that
    compresses it scores negative (``absolute=True`` scores any change as work done).
    ``relative=True`` uses ``log(erank(output) / erank(input))`` instead of the difference.
    Cost: one forward pass (shared with the other feature criteria), one SVD of the ``N × D``
    features (``O(N² D)``) per probe point per calibration batch.
    """

    name = "feature_rank_gain"  # the name it gets when loaded with --plugin module:attr
    description = "Change in effective rank of the features across the block (example; Roy & Vetterli 2007)"

    def __init__(self, absolute: bool = False, relative: bool = False) -> None:
        for key, value in (("absolute", absolute), ("relative", relative)):
            if not isinstance(value, bool):
                raise LayerpruneError(f"{key}: must be true or false, got {value!r}")
        self.absolute = absolute
        self.relative = relative

    def probe_stats(self):
        # One value per probe point and batch; the key is shared by every parameter setting, so
        # scoring this criterion twice (or with other settings) reads the features once.
        return {"effective_rank": lambda features, _labels: effective_rank(features)}

    def score(self, ctx) -> CriterionResult:
        stats, _ = ctx.feature_stats(probe=self.probe_stats())
        erank = {p: sum(v) / len(v) for p, v in stats["effective_rank"].items() if v}
        scores = {}
        for block, (before, after) in ctx.block_probes.items():
            a, b = erank[before], erank[after]
            if self.relative:
                if a <= 0 or b <= 0:
                    continue  # constant features: no rank to compare; leave the block unscored
                gain = math.log(b / a)
            else:
                gain = b - a
            scores[block] = abs(gain) if self.absolute else gain
        return CriterionResult(self.name, scores, self.params(), {"effective_rank": erank})

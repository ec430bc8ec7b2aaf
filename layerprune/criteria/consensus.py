"""``consensus``: several criteria vote, by rank, on which blocks matter least.

>>> get_criterion("consensus", criteria=["cka", "angular", {"linear_probe": {"ridge": 0.01}}])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

from layerprune.criteria.base import Criterion, CriterionResult, declared_stats
from layerprune.criteria.context import ScoringContext
from layerprune.errors import LayerpruneError

Member = Union[str, Mapping[str, Mapping[str, Any]]]

# Cheap feature criteria (one shared forward pass), chosen on the digits setting; see docs/criteria.md.
DEFAULT_MEMBERS: tuple[str, ...] = ("cka", "angular", "linear_probe")


def normalised_ranks(scores: Mapping[str, float]) -> dict[str, float]:
    """Each block's rank among ``scores`` scaled to [0, 1] (0: lowest score); ties share their
    mean rank; a single block gets 0.5."""
    names = list(scores)
    if len(names) == 1:
        return {names[0]: 0.5}
    values = np.array([scores[n] for n in names], dtype=float)
    order = values.argsort(kind="stable")
    ranks = np.empty(len(names))
    ranks[order] = np.arange(len(names), dtype=float)
    for v in np.unique(values):  # ties: their mean rank
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return {n: float(r / (len(names) - 1)) for n, r in zip(names, ranks)}


def _member(spec: Member) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and len(spec) == 1:
        name, params = next(iter(spec.items()))
        if isinstance(name, str) and isinstance(params, Mapping):
            return name, dict(params)
    raise LayerpruneError(f"criteria: each entry is a name or {{name: {{params}}}}, got {spec!r}")


class ConsensusCriterion(Criterion):
    """The mean normalised rank of each block over several criteria (a Borda count).

    Source: Mugnaini et al., "Layer Pruning with Consensus: A Triple-Win Solution", 2024, who sum
    each block's rank over several similarity metrics. Ranks rather than scores, because the
    members' scores live on unrelated scales (a ΔQ of 0.01, a loss rise of 1.0, an angle); a
    rank is scale-free, and one member's extreme value moves a block by at most its own vote.
    Each member's ranks are scaled to [0, 1] over the blocks it scores, and a block's score is
    the mean over the members that score it, so a member that leaves some blocks unscored
    (``block_influence``, ``angular``: shape-changing blocks) neither drops them nor outweighs
    the others. With one member the order is that member's. Members read their features in one
    shared pass. Cost: the sum of the members' costs, features read once.
    """

    description = "Mean rank over several criteria, a Borda count (Mugnaini et al. 2024)"

    def __init__(self, criteria: Sequence[Member] = DEFAULT_MEMBERS) -> None:
        from layerprune.criteria.catalog import get_criterion

        if isinstance(criteria, (str, bytes)) or not isinstance(criteria, Sequence) or not criteria:
            raise LayerpruneError(f"criteria: must be a non-empty list of criterion names, got {criteria!r}")
        self.criteria = list(criteria)
        self.members: list[Criterion] = []
        for spec in self.criteria:
            name, params = _member(spec)
            self.members.append(get_criterion(name, **params))
        labels = [m.name for m in self.members]
        if len(set(labels)) != len(labels):
            raise LayerpruneError(f"criteria: a criterion is listed twice: {labels}")

    def probe_stats(self):
        return declared_stats(self.members)[0]

    def block_stats(self):
        return declared_stats(self.members)[1]

    def run_stats(self):
        return declared_stats(self.members)[2]

    def score(self, ctx: ScoringContext) -> CriterionResult:
        ctx.feature_stats(*declared_stats(self.members))  # one pass for every member
        votes: dict[str, list[float]] = {}
        members, ranks = {}, {}
        for member in self.members:
            result = member(ctx)
            members[member.name] = result.scores
            ranks[member.name] = normalised_ranks(result.scores) if result.scores else {}
            for block, rank in ranks[member.name].items():
                votes.setdefault(block, []).append(rank)
        scores = {b: float(np.mean(v)) for b, v in votes.items()}
        return CriterionResult(self.name, scores, self.params(), {"members": members, "ranks": ranks})

"""Baselines that compare what a block's input and output represent: ``block_influence``, ``cka``
and ``linear_probe``. All read features from the shared stream (one forward pass for all)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layerprune.lazy import lazy_import
from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.context import ScoringContext
from layerprune.errors import LayerpruneError
from layerprune.params import is_count
from layerprune.tasks import View, viewed

torch = lazy_import("torch")


def _mean_over_batches(per_block: dict[str, list[float]]) -> dict[str, float]:
    return {b: float(np.mean(v)) for b, v in per_block.items() if v and not any(x is None for x in v)}


def cosine_per_sample(f_in: torch.Tensor, f_out: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between each sample's input and output features."""
    return torch.nn.functional.cosine_similarity(f_in.double(), f_out.double(), dim=1, eps=1e-12)


class BlockInfluenceCriterion(Criterion):
    """Block influence: ``1 − mean cos(input, output)`` over calibration samples (ShortGPT).

    Source: Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You
    Expect", 2024. On a language model, per token as there (the mean over every position of the
    calibration windows); on an image model, per sample's flattened features. A block that barely
    changes its input scores near 0. Only blocks whose input and output have the same shape are
    scored. Cost: one forward pass, ``N × features`` per block.
    """

    description = "1 − cos(input, output) of each block (ShortGPT block influence, Men et al. 2024)"

    def block_stats(self):
        def influence(f_in, f_out, _labels):
            if f_in.shape != f_out.shape:
                return None
            return float(1.0 - cosine_per_sample(f_in, f_out).mean())

        return {"block_influence": viewed(View("token"), influence)}

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        _, stats = ctx.feature_stats(block=self.block_stats())
        return _mean_over_batches(stats["block_influence"])


def angular_distance(f_in: torch.Tensor, f_out: torch.Tensor) -> float | None:
    """Mean over samples of ``arccos(cos(input, output)) / π``, in [0, 1] (Gromov et al., 2024);
    ``None`` when the two shapes differ."""
    if f_in.shape != f_out.shape:
        return None
    return float(torch.arccos(cosine_per_sample(f_in, f_out).clamp(-1.0, 1.0)).mean() / math.pi)


class AngularCriterion(Criterion):
    """Angular distance between the input of a run of ``n`` consecutive blocks and its output.

    Source: Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers", 2024: the run
    whose output is closest in angle to its input (``arccos(cos)/π``; on a language model at each
    window's last position as there, on an image model each sample's flattened features; averaged
    over the calibration samples) changes the representation least, and is removed as a whole. The criterion's own rule (``run``) removes exactly that
    one run of ``n`` blocks; a block's score (what the other rules read) is its own distance
    (the run of one). Runs stay inside a stage and need the same input and output shape.
    Cost: one forward pass, ``N × features`` per block and per run.
    """

    description = "Angular distance across a run of n blocks; removes the closest run (Gromov et al. 2024)"

    def __init__(self, n: int = 2) -> None:
        if not is_count(n):
            raise LayerpruneError(f"n: must be an integer ≥ 1, got {n!r}")
        self.n = n

    @property
    def default_rule(self) -> dict[str, Any]:  # type: ignore[override]
        return {"rule": "run", "n": self.n}

    def block_stats(self):
        return {"angular": viewed(View("last"), lambda f_in, f_out, _labels: angular_distance(f_in, f_out))}

    def run_stats(self):
        return {f"angular(n={self.n})": (self.n, viewed(View("last"),
                                                       lambda f_in, f_out, _labels: angular_distance(f_in, f_out)))}

    def score(self, ctx: ScoringContext) -> CriterionResult:
        _, stats = ctx.feature_stats(block=self.block_stats(), runs=self.run_stats())
        scores = _mean_over_batches(stats["angular"])
        runs = _mean_over_batches(stats[f"angular(n={self.n})"])
        return CriterionResult(self.name, scores, self.params(), {
            "runs": {"n": self.n, "scores": runs, "blocks": {b: list(r) for b, r in ctx.runs(self.n).items() if b in runs}},
        })


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between ``x (N, D1)`` and ``y (N, D2)`` (Kornblith et al., ICML 2019).

    Computed from the ``N × N`` Gram matrices where there are fewer rows than features (images:
    the feature widths never meet in one matrix), else from the ``D × D`` cross-covariances (a
    language model's tokens: many rows, one hidden width); the two are the same number.
    """
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    if len(x) <= max(x.shape[1], y.shape[1]):
        k, l = (x @ x.T).double(), (y @ y.T).double()
        hsic, norm = (k * l).sum(), torch.sqrt((k * k).sum() * (l * l).sum())
    else:
        x, y = x.double(), y.double()
        hsic = ((y.T @ x) ** 2).sum()
        norm = torch.sqrt(((x.T @ x) ** 2).sum() * ((y.T @ y) ** 2).sum())
    return float(hsic / norm) if norm > 0 else 0.0


class CKACriterion(Criterion):
    """``1 − CKA(input, output)``: blocks whose output is linearly similar to their input matter less.

    Source: Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019
    (linear CKA); Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the Same Things?",
    ICLR 2021, show that runs of layers with high mutual CKA can be removed with little loss.
    Cost: one forward pass, two ``N × N × features`` GEMMs per block.
    """

    description = "1 − linear CKA between block input and output (Kornblith et al., ICML 2019)"

    def block_stats(self):
        return {"cka": viewed(View("token"), lambda f_in, f_out, _labels: linear_cka(f_in, f_out))}

    def score(self, ctx: ScoringContext) -> dict[str, float]:
        _, stats = ctx.feature_stats(block=self.block_stats())
        return {b: 1.0 - v for b, v in _mean_over_batches(stats["cka"]).items()}


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, *, ridge: float = 1e-3, seed: int = 0) -> float:
    """Two-fold accuracy of a ridge-regression linear classifier (one-hot targets) on ``features``.

    Solved in closed form in its dual (``N/2 × N/2`` kernel), so wide features cost one GEMM.
    ``ridge`` is relative to the mean squared feature norm, which makes it scale-free.
    """
    n = len(labels)
    if n < 4:
        raise LayerpruneError(f"linear_probe needs at least 4 calibration samples, got {n}")
    f = features.reshape(n, -1).double()
    f = f - f.mean(dim=0, keepdim=True)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(f.device)
    halves = perm[: n // 2], perm[n // 2:]
    classes, y = torch.unique(labels, return_inverse=True)
    onehot = torch.nn.functional.one_hot(y, len(classes)).double()
    correct = 0
    for train, test in (halves, halves[::-1]):
        k = f[train] @ f[train].T
        lam = ridge * float(k.diagonal().mean()) + 1e-12
        alpha = torch.linalg.solve(k + lam * torch.eye(len(train), dtype=k.dtype, device=k.device), onehot[train])
        pred = (f[test] @ f[train].T @ alpha).argmax(dim=1)
        correct += int((pred == y[test]).sum())
    return correct / n


class LinearProbeCriterion(Criterion):
    """Gain in linear-probe accuracy across the block: ``acc(output) − acc(input)``.

    Source: Alain & Bengio, "Understanding intermediate layers using linear classifier probes",
    2016; for layer pruning, Chen & Zhao, "Shallowing Deep Networks: Layer-wise Pruning based on
    Feature Representations", TPAMI 2019 (arXiv 2018), and Wang et al., "DBP: Discrimination
    Based Block-Level Pruning for Deep Model Acceleration", 2019. The probe is a ridge-regression
    classifier, two-fold on each calibration batch. On a language model it predicts a position's
    next token among the 32 most frequent next tokens of the calibration windows (at most 1,000
    such positions per batch; :class:`~layerprune.tasks.View`). Cost: one forward pass, two
    ``N/2``-sized kernel solves per probe point.
    """

    description = "Gain in linear-probe accuracy across the block (Chen & Zhao 2018, DBP 2019)"

    def __init__(self, ridge: float = 1e-3, seed: int = 0) -> None:
        if not ridge > 0:
            raise LayerpruneError(f"ridge: must be > 0, got {ridge!r}")
        self.ridge = float(ridge)
        self.seed = int(seed)

    def _key(self) -> str:
        return f"linear_probe(ridge={self.ridge:g},seed={self.seed})"

    def probe_stats(self):
        ridge, seed = self.ridge, self.seed
        # On a language model: the next token (among the most frequent) of each position.
        return {self._key(): viewed(View("next-token"), lambda f, y: probe_accuracy(f, y, ridge=ridge, seed=seed))}

    def score(self, ctx: ScoringContext) -> CriterionResult:
        stats, _ = ctx.feature_stats(probe=self.probe_stats())
        acc = {p: float(np.mean(v)) for p, v in stats[self._key()].items()}
        scores = {b: acc[after] - acc[before] for b, (before, after) in ctx.block_probes.items()}
        return CriterionResult(self.name, scores, self.params(), {"probe_accuracy": acc})

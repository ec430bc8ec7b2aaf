"""The modularity curve and the modularity-plateau criterion (Lu et al., ECCV 2022).

Q is measured at every probe point (the stem output, then every block output) on ``batches``
calibration batches of ``samples`` each; a block's score is ΔQ = Q(after) − Q(before), averaged
over the batches. Blocks where the curve degrades (ΔQ < 0) or plateaus (ΔQ < threshold) add
little class separation and are the first to go; ``threshold=0.03`` is the rule that reproduces
the paper's ResNet-56 choice (keep blocks [2, 3, 6] of each stage).

>>> curve = modularity_curve(model, build_dataset("digits"), samples=100, batches=2)  # doctest: +SKIP
>>> curve.plot("curve.png", removed=["layer1.2"])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from layerprune.lazy import lazy_import
from layerprune.calibration import Calibration
from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.context import ScoringContext
from layerprune.criteria.graph import modularity
from layerprune.criteria.oracle import RemovalCriterion
from layerprune.errors import LayerpruneError
from layerprune.params import is_count
from layerprune.plots import pyplot, save_png
from layerprune.tasks import View, check_top, viewed

nn = lazy_import("torch.nn")


# ΔQ below this is a plateau: the rule that reproduces the paper's ResNet-56 choice. The criterion's
# default threshold and every curve plot read it from here.
PAPER_THRESHOLD = 0.03


@dataclass
class ModularityCurve:
    """Q per probe point and calibration batch, with the blocks between the probes."""

    probes: list[str]
    values: np.ndarray  # (batches, probes)
    k: int
    samples: int
    block_probes: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.values.std(axis=0)

    def q(self, probe: str) -> float:
        return float(self.mean[self.probes.index(probe)])

    def deltas(self) -> dict[str, float]:
        """ΔQ = Q(after) − Q(before) per block (mean over batches)."""
        index = {p: i for i, p in enumerate(self.probes)}
        return {b: float((self.values[:, index[after]] - self.values[:, index[before]]).mean())
                for b, (before, after) in self.block_probes.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "samples": self.samples, "batches": int(self.values.shape[0]),
                "probes": self.probes, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "values": self.values.tolist(),
                "blocks": {b: list(p) for b, p in self.block_probes.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModularityCurve":
        """The curve back from :meth:`to_dict` (as stored in ``scores.json``)."""
        return cls(list(d["probes"]), np.asarray(d["values"], dtype=np.float64), int(d["k"]), int(d["samples"]),
                   {b: tuple(p) for b, p in d["blocks"].items()})

    def plot(self, path: str | Path, *, threshold: float | None = None, removed: Sequence[str] = (),
             title: str | None = None) -> Path:
        """Write the curve to a PNG: degradation (ΔQ < 0) and plateau (ΔQ < ``threshold``) shaded,
        blocks in ``removed`` marked. ``threshold`` defaults to the paper's :data:`PAPER_THRESHOLD`."""
        threshold = PAPER_THRESHOLD if threshold is None else threshold
        plt = pyplot()
        x = np.arange(len(self.probes))
        index = {p: i for i, p in enumerate(self.probes)}
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(x) + 2), 4.0))
        deltas = self.deltas()
        labelled: set[str] = set()
        for block, (before, after) in self.block_probes.items():
            d = deltas[block]
            kind = "degradation (ΔQ < 0)" if d < 0 else f"plateau (ΔQ < {threshold:g})" if d < threshold else None
            if kind:
                color = "#d62728" if d < 0 else "#bbbbbb"
                ax.axvspan(index[before], index[after], color=color, alpha=0.3, lw=0,
                           label=None if kind in labelled else kind)
                labelled.add(kind)
        ax.plot(x, self.mean, "-o", ms=3, color="#1f77b4", label=f"Q (k={self.k}, {self.samples} samples)")
        ax.fill_between(x, self.mean - self.std, self.mean + self.std, color="#1f77b4", alpha=0.2)
        marked = [index[self.block_probes[b][1]] for b in removed if b in self.block_probes]
        if marked:
            ax.plot(marked, self.mean[marked], "x", color="black", ms=8, mew=2, label="removed")
        ax.set_xticks(x)
        ax.set_xticklabels(self.probes, rotation=90, fontsize=7)
        ax.set_ylabel("modularity Q")
        ax.set_title(title or "modularity curve")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return save_png(fig, path)


CLASSES = View("sample")  # each sample and its class (a classifier's only view)


def _stat_key(k: int, view: View = CLASSES) -> str:
    return f"modularity(k={k})" if view == CLASSES else f"modularity(k={k},top={view.top},positions={view.positions})"


def _stat(k: int, view: View = CLASSES) -> dict[str, Any]:
    """Q at a probe, on the rows ``view`` asks for (a classifier's samples and classes whatever
    the view; a language model's positions and their next-token classes)."""
    return {_stat_key(k, view): viewed(view, lambda f, y: modularity(f, y, k))}


def _curve_from(ctx: ScoringContext, k: int, view: View = CLASSES) -> ModularityCurve:
    stats, _ = ctx.feature_stats(probe=_stat(k, view))
    per_probe = stats[_stat_key(k, view)]
    names = [p.name for p in ctx.probes]
    values = np.array([per_probe[name] for name in names], dtype=np.float64).T
    return ModularityCurve(names, values, k, ctx.samples, dict(ctx.block_probes))


def modularity_curve(
    model: nn.Module,
    data: Any,
    *,
    samples: int = Calibration.samples,
    batches: int = Calibration.batches,
    k: int = 3,
    probes: Sequence[str] | None = None,
    split: str = Calibration.split,
    seed: int = Calibration.seed,
    progress: bool = False,
    **context: Any,
) -> ModularityCurve:
    """Q at every probe point (default: the stem output, then every block output), mean and
    std over ``batches`` calibration batches of ``samples``.

    ``probes`` names modules whose outputs to measure instead. ``data`` is a
    :class:`~layerprune.data.DatasetBundle` (its ``split``), a ``Dataset`` or ``(images, labels)``.
    """
    _check_k(k)
    ctx = ScoringContext(model, data, samples=samples, batches=batches, split=split, seed=seed,
                         probes=probes, progress=progress, **context)
    return _curve_from(ctx, k)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise LayerpruneError(f"k: must be an integer ≥ 1, got {k!r}")


class ModularityCriterion(Criterion):
    """ΔQ of the label modularity of a cosine kNN graph across the block (Lu et al., ECCV 2022).

    Source: Lu, Y., Yang, W., Zhang, Y., Chen, Z., Chen, J., Xuan, Q., Wang, Z., Yang, X.,
    "Understanding the Dynamics of DNNs Using Graph Modularity", ECCV 2022. Cost: one forward pass
    over the calibration samples plus one ``N × N × features`` GEMM per probe point.

    On a causal language model the nodes are token positions and a position's class is its next
    token (:mod:`layerprune.criteria.tokens`): only positions whose next token is one of the
    ``top`` most frequent next tokens of the calibration windows, at most ``positions`` of them per
    calibration batch (drawn with the calibration seed). ``top`` and ``positions`` do nothing for a
    classifier, whose samples and classes are the nodes and partition as in the paper.
    """

    description = ("ΔQ of label modularity on a cosine kNN graph across the block (Lu et al., ECCV 2022); "
                   "next-token classes on a language model")

    def __init__(self, k: int = 3, threshold: float = PAPER_THRESHOLD, top: int = 32, positions: int = 1000) -> None:
        _check_k(k)
        check_top(top)
        if not is_count(positions) or positions <= k:
            raise LayerpruneError(f"positions: must be an integer > k, got {positions!r}")
        self.k = k
        self.threshold = float(threshold)
        self.top, self.positions = top, positions

    @property
    def default_rule(self) -> dict[str, Any]:  # type: ignore[override]
        return {"rule": "threshold", "threshold": self.threshold}

    def probe_stats(self):
        return _stat(self.k, self._view)

    @property
    def _view(self) -> View:
        return View("next-token", self.top, self.positions)

    def score(self, ctx: ScoringContext) -> CriterionResult:
        curve = _curve_from(ctx, self.k, self._view)
        return CriterionResult(self.name, curve.deltas(), self.params(), {"curve": curve})


class ModularityRemovalCriterion(RemovalCriterion):
    """How much class separation the model's output loses without the block:
    ``Q(logits) − Q(logits with the block removed)``.

    layerprune's variant of Lu et al.'s criterion (same cosine kNN graph, same modularity Q of the
    label partition), measured where the model's decision is instead of across the block. ΔQ is
    local: on data whose classes already separate at the stem it is tiny everywhere, and the first
    block of a stage can even lower Q while every later block depends on what it computes (its
    removal then costs the most). Here each block is removed in turn (the identity, or collapsed
    to its shortcut), the copy's BatchNorm statistics are re-estimated with the first
    ``repair_batches`` of the context's repair batches (``None``: all; ``repair=False``: none;
    the reference gets the same repair), and Q is measured on the model's output
    (``features="logits"``) or on the classifier's input (``"penultimate"``). Defaults chosen on
    one setting; measurements and reasoning in docs/criteria.md. Cost: per block, the repair plus
    one forward pass over the calibration samples and one graph.
    """

    description = "Drop of the output's modularity Q when the block is removed (layerprune's variant of Lu et al.)"

    def __init__(self, k: int = 3, repair: bool = True, repair_batches: int | None = 5,
                 features: str = "logits", reuse: bool = True) -> None:
        _check_k(k)
        if features not in ("penultimate", "logits"):
            raise LayerpruneError(f"features: must be 'penultimate' or 'logits', got {features!r}")
        self.k = k
        self.features = features
        super().__init__(repair, repair_batches, reuse)

    view = View("next-token")  # a language model's rows: positions and their next-token classes

    def change(self, base, changed, labels) -> float:
        return modularity(base, labels, self.k) - modularity(changed, labels, self.k)

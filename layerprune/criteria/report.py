"""Score a named model on a named dataset with one criterion and a selection rule: what
``layerprune score`` prints, and what a recipe's score stage records.

>>> report = score_model("cifar_resnet20", "digits", "modularity", samples=200, batches=2)  # doctest: +SKIP
>>> report.removed  # doctest: +SKIP
['layer1.1', 'layer2.2']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from layerprune.criteria.base import CriterionResult
from layerprune.criteria.catalog import get_criterion
from layerprune.criteria.context import ScoringContext
from layerprune.criteria.selection import removed_share, select_blocks
from layerprune.plots import pyplot, save_png
from layerprune.surgery.blocks import Block
from layerprune.train.distributed import resolve_device


@dataclass
class ScoreReport:
    model: str
    data: str
    result: CriterionResult
    blocks: list[Block]
    rule: dict[str, Any]
    removed: list[str]
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def params_share(self) -> float:
        return removed_share(self.blocks, self.removed)[0]

    @property
    def macs_share(self) -> float:
        return removed_share(self.blocks, self.removed)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "calibration": self.calibration,
            **self.result.to_dict(), "rule": self.rule, "removed": self.removed,
            "params_reduction": self.params_share, "macs_reduction": self.macs_share,
            "blocks": [{"name": b.name, "stage": b.stage, "removable": b.removable,
                        "collapsible": b.collapsible, "params": b.params, "macs_share": b.macs_share,
                        "score": self.result.scores.get(b.name)} for b in self.blocks if b.stage],
        }

    def plot(self, path: str | Path) -> Path:
        """The modularity curve when the criterion has one, else a bar chart of the scores."""
        curve = self.result.diagnostics.get("curve")
        title = f"{self.model} on {self.data}: {self.result.criterion}"
        if curve is not None:
            return curve.plot(path, threshold=self.rule.get("threshold", 0.03), removed=self.removed, title=title)
        return plot_scores(self.result.scores, path, removed=self.removed, title=title)


def plot_scores(scores: dict[str, float], path: str | Path, *, removed: Sequence[str] = (),
                title: str = "block scores") -> Path:
    """A bar per block (forward order as given), removed blocks in red."""
    plt = pyplot()
    names = list(scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.0))
    colors = ["#d62728" if n in removed else "#1f77b4" for n in names]
    ax.bar(range(len(names)), [scores[n] for n in names], color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("importance (higher = keep)")
    ax.set_title(title + (" — red: removed" if removed else ""))
    fig.tight_layout()
    return save_png(fig, path)


def score_model(
    model_name: str,
    data: str,
    criterion: str = "modularity",
    *,
    criterion_params: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    model_args: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    rule: str | None = None,
    rule_params: dict[str, Any] | None = None,
    protect: Sequence[str] = (),
    collapse: bool = False,
    device: str | None = None,
    progress: bool = False,
    **context: Any,
) -> ScoreReport:
    """Build the model (sized to the data set) and data, score the blocks, apply the rule.

    Without ``rule`` the criterion's default rule is used (modularity: ``threshold`` 0.03; the
    others: ``count`` with ``fraction`` 0.5). ``context`` goes to :class:`ScoringContext`.
    """
    from layerprune.data import build_dataset
    from layerprune.models import create_model_for

    built = get_criterion(criterion, **(criterion_params or {}))  # bad names fail before any work
    bundle = build_dataset(data, **(data_args or {}))
    model = create_model_for(model_name, bundle, checkpoint=checkpoint, seed=context.get("seed", 0),
                             **(model_args or {}))
    model.to(resolve_device(device))
    ctx = ScoringContext(model, bundle, progress=progress, **context)
    result = built(ctx)
    chosen = dict(built.default_rule) if rule is None else {"rule": rule}
    chosen.update(rule_params or {})
    removed = select_blocks(result.scores, ctx.blocks, protect=protect, collapse=collapse, **chosen)
    calibration = {"split": ctx.split, "samples": ctx.samples, "batches": ctx.num_batches, "seed": ctx.seed}
    return ScoreReport(model_name, data, result, ctx.blocks, chosen, removed, calibration)

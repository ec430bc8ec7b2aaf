"""Pictures of a criterion's result: the modularity curve when the criterion has one, else a bar
per block; the blocks a plan removes are marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from layerprune.criteria.base import CriterionResult
from layerprune.plots import pyplot, save_png


def plot_result(result: CriterionResult, path: str | Path, *, rule: Mapping[str, Any] | None = None,
                removed: Sequence[str] = (), title: str | None = None) -> Path:
    """The curve (shaded below the rule's ``threshold``, if it has one) or the scores as bars."""
    curve = result.diagnostics.get("curve")
    title = title or f"criterion {result.criterion}"
    if curve is not None:
        if isinstance(curve, dict):  # as stored in scores.json
            from layerprune.criteria.curve import ModularityCurve

            curve = ModularityCurve.from_dict(curve)
        return curve.plot(path, threshold=(rule or {}).get("threshold"), removed=removed, title=title)
    return plot_scores(result.scores, path, removed=removed, title=title)


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

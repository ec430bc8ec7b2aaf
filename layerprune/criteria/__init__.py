"""Block-importance criteria (higher score = keep), the modularity curve, and selection rules.

>>> ctx = ScoringContext(model, build_dataset("digits"), samples=200, batches=2)  # doctest: +SKIP
>>> result = get_criterion("modularity")(ctx)  # doctest: +SKIP
>>> select_blocks(result.scores, ctx.blocks, rule="threshold", threshold=0.03)  # doctest: +SKIP

The whole score → plan → remove → repair pipeline is :class:`layerprune.Pruner`.
"""

from __future__ import annotations

from typing import Any, Sequence

from layerprune.criteria.base import Criterion, CriterionResult, declared_stats
from layerprune.criteria.catalog import (
    CRITERIA, ENTRY_POINT_GROUP, CriterionInfo, PluginFailure, PluginWarning, get_criterion, list_criteria,
    load_plugin, load_plugins, plugin_failures, register_criterion,
)
from layerprune.criteria.catalog import criterion_parameters
from layerprune.lazy import lazy_exports

# imported on first use: listing or checking criteria imports no torch
__getattr__, __dir__ = lazy_exports(__name__, {
    ".context": ["ScoringContext"],
    ".curve": ["PAPER_THRESHOLD", "ModularityCurve", "modularity_curve"],
    ".graph": ["KnnGraph", "graph_modularity", "knn_graph", "modularity"],
    ".plots": ["plot_result", "plot_scores"],
    ".selection": ["RULES", "max_reduction", "removed_share", "select_blocks"],
    ".stream": ["FeatureStream", "Probe", "ProbeGroup", "StreamPass"],
})

__all__ = [
    "CRITERIA", "Criterion", "CriterionInfo", "CriterionResult", "ENTRY_POINT_GROUP", "FeatureStream",
    "KnnGraph", "ModularityCurve", "PAPER_THRESHOLD", "PluginFailure", "PluginWarning", "Probe", "ProbeGroup",
    "RULES", "ScoringContext", "StreamPass", "criterion_parameters", "get_criterion", "graph_modularity",
    "knn_graph", "list_criteria", "load_plugin", "load_plugins", "max_reduction", "modularity",
    "modularity_curve", "plot_result", "plot_scores", "plugin_failures", "register_criterion",
    "removed_share", "score_blocks", "select_blocks",
]


def score_blocks(
    model: Any,
    data: Any,
    criteria: Sequence[str | Criterion],
    **context: Any,
) -> dict[str, CriterionResult]:
    """Score ``model``'s blocks with several criteria on the same calibration samples.

    Feature statistics of all criteria are gathered in one pass before any criterion runs.
    ``context`` goes to :class:`ScoringContext` (``samples``, ``batches``, ``split``, ...).
    """
    from layerprune.criteria.context import ScoringContext

    built = [get_criterion(c) if isinstance(c, str) else c for c in criteria]
    ctx = ScoringContext(model, data, **context)
    ctx.feature_stats(*declared_stats(built))
    return {c.name: c(ctx) for c in built}

"""Block-importance criteria (higher score = keep), the modularity curve, and selection rules.

>>> ctx = ScoringContext(model, build_dataset("digits"), samples=200, batches=2)  # doctest: +SKIP
>>> result = get_criterion("modularity")(ctx)  # doctest: +SKIP
>>> select_blocks(result.scores, ctx.blocks, **result_rule)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

from layerprune.criteria.base import Criterion, CriterionResult
from layerprune.criteria.catalog import (
    CRITERIA, ENTRY_POINT_GROUP, CriterionInfo, PluginFailure, PluginWarning, get_criterion, list_criteria,
    load_plugin, load_plugins, plugin_failures, register_criterion,
)
from layerprune.criteria.context import Probe, ScoringContext
from layerprune.criteria.graph import KnnGraph, graph_modularity, knn_graph, modularity
from layerprune.criteria.curve import ModularityCurve, modularity_curve
from layerprune.criteria.selection import RULES, select_blocks

__all__ = [
    "CRITERIA", "Criterion", "CriterionInfo", "CriterionResult", "ENTRY_POINT_GROUP", "KnnGraph",
    "ModularityCurve", "PluginFailure", "PluginWarning", "Probe", "RULES", "ScoringContext",
    "get_criterion", "graph_modularity", "knn_graph", "list_criteria", "load_plugin", "load_plugins",
    "modularity", "modularity_curve", "plugin_failures", "register_criterion", "score_blocks",
    "select_blocks",
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
    built = [get_criterion(c) if isinstance(c, str) else c for c in criteria]
    ctx = ScoringContext(model, data, **context)
    probe, block = {}, {}
    for c in built:
        probe.update(c.probe_stats())
        block.update(c.block_stats())
    ctx.feature_stats(probe=probe, block=block)
    return {c.name: c(ctx) for c in built}

"""A plugin: `ablation` and `greedy` with every candidate run in full (``reuse=False``), registered
as `ablation_full` and `greedy_full` so that one bench can rank them beside the defaults, which
replay what comes before each block (benchmarks/replay_bench.yaml; docs/performance.md)."""
from layerprune import register_criterion
from layerprune.criteria.oracle import AblationCriterion, GreedyCriterion


@register_criterion("ablation_full")
class AblationFull(AblationCriterion):
    description = "ablation, every candidate run in full"

    def __init__(self, metric: str = "loss", repair: bool = True) -> None:
        super().__init__(metric, repair, reuse=False)


@register_criterion("greedy_full")
class GreedyFull(GreedyCriterion):
    description = "greedy, every candidate run in full"

    def __init__(self, metric: str = "loss", repair_batches: int | None = 5) -> None:
        super().__init__(metric, repair_batches, reuse=False)

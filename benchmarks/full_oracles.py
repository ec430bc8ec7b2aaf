"""A plugin: `ablation` and `greedy` with every candidate run in full (``reuse=False``), registered
as `ablation_full` and `greedy_full` so that one bench can rank them beside the defaults, which
replay what comes before each block (docs/performance.md has the results). From the repository root:

    layerprune bench recipes/bench_small.yaml --set 'bench.criteria=[tail,ablation,ablation_full,greedy,greedy_full]' \
        --set bench.width=false --set 'plugins=[benchmarks/full_oracles.py]'
"""
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

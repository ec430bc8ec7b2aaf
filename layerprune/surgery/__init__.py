"""Surgery: find blocks, remove them safely, save and rebuild pruned models, measure cost."""

from layerprune.errors import SurgeryError
from layerprune.surgery.blocks import Block, find_blocks
from layerprune.surgery.cost import Cost, Latency, count_macs, count_params, measure_latency, model_cost
from layerprune.surgery.remove import apply_edits, plan_edits, remove_blocks
from layerprune.surgery.spec import PruneSpec, apply_spec, load_pruned, save_pruned

__all__ = [
    "Block", "Cost", "Latency", "PruneSpec", "SurgeryError", "apply_edits", "apply_spec", "count_macs",
    "count_params", "find_blocks", "load_pruned", "measure_latency", "model_cost", "plan_edits",
    "remove_blocks", "save_pruned",
]

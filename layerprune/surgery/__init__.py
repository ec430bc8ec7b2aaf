"""Surgery: find blocks, remove them safely, save and rebuild pruned models, measure cost.

One file per concern: ``blocks`` (the Block record and the keep-one-per-stage rule), ``find``
(the entry point: ``calls`` records a forward pass, ``discover`` finds the stages and their blocks,
``named`` the blocks timm's group matcher names, ``sublayers`` the residual sub-layers of a block,
``classify`` classifies a unit, ``check`` checks a removal), ``inputs`` (example inputs), ``hf``
(transformers models: the layer list as blocks, removal that keeps config, indices and cache
consistent), ``edit`` (plan and swap),
``verify`` (run and re-trace), ``remove``
(the three together on a copy), ``spec`` (save and rebuild), ``cost`` (params, MACs, latency, and
each block's share of it), ``width`` (channel pruning inside blocks, with Torch-Pruning).
"""

from layerprune.errors import SurgeryError
from layerprune.lazy import lazy_exports

# imported on first use: naming Block does not import torch
__getattr__, __dir__ = lazy_exports(__name__, {
    ".blocks": ["Block", "StagePlan", "stages"],
    ".cost": ["BlockLatency", "Cost", "Latency", "compare_latency", "count_macs", "count_params",
              "measure_block_latency", "measure_latency", "model_cost"],
    ".edit": ["apply_edits", "plan_edits", "swap_blocks"],
    ".find": ["find_blocks"],
    ".inputs": ["default_input"],
    ".remove": ["remove_blocks"],
    ".spec": ["PruneSpec", "apply_spec", "load_pruned", "save_pruned"],
})

__all__ = [
    "Block", "BlockLatency", "Cost", "Latency", "PruneSpec", "StagePlan", "SurgeryError", "apply_edits", "apply_spec",
    "compare_latency",
    "count_macs", "count_params", "default_input", "find_blocks", "load_pruned", "measure_block_latency", "measure_latency",
    "model_cost", "plan_edits", "remove_blocks", "save_pruned", "stages", "swap_blocks",
]

"""The width-pruning reference row of the bench: Torch-Pruning's channel pruner at a MACs (or
params) target, with L1 magnitude importance (the pruner itself: :mod:`layerprune.surgery.width`)."""

from __future__ import annotations

from layerprune.surgery.width import prune_width

WIDTH = "width (Torch-Pruning L1 channels)"  # the name of its rows in bench tables

__all__ = ["WIDTH", "prune_width"]

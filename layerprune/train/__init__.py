"""Training and evaluation loops (and BatchNorm re-estimation) shared by criteria and recipes."""

from layerprune.train.loops import EvalResult, evaluate, fit, repair_batchnorm

__all__ = ["EvalResult", "evaluate", "fit", "repair_batchnorm"]

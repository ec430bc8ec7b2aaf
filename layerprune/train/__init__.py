"""Training and evaluation loops (and BatchNorm re-estimation) shared by criteria and recipes."""

from layerprune.train.distill import distillation_loss
from layerprune.train.loops import EvalResult, evaluate, fit, repair_batchnorm
from layerprune.train.resume import load_training_checkpoint, save_training_checkpoint
from layerprune.train.settings import TrainConfig, TrainSettings
from layerprune.train.trainer import EpochRecord, train

__all__ = [
    "EpochRecord", "EvalResult", "TrainConfig", "TrainSettings", "distillation_loss", "evaluate", "fit",
    "load_training_checkpoint", "repair_batchnorm", "save_training_checkpoint", "train",
]

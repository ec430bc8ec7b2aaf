"""Training and evaluation loops (and BatchNorm re-estimation) shared by criteria and recipes."""

from layerprune.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".distill": ["distillation_loss"],
    ".loops": ["EvalResult", "evaluate", "fit", "repair_batchnorm"],
    ".resume": ["load_training_checkpoint", "save_training_checkpoint"],
    ".settings": ["TrainConfig", "TrainSettings"],
    ".trainer": ["EpochRecord", "train"],
})

__all__ = [
    "EpochRecord", "EvalResult", "TrainConfig", "TrainSettings", "distillation_loss", "evaluate", "fit",
    "load_training_checkpoint", "repair_batchnorm", "save_training_checkpoint", "train",
]

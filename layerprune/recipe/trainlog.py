"""Training logs a run directory keeps: ``metrics.csv`` (one row per epoch of every training
stage, timm's ``summary.csv`` convention) and, optionally, TensorBoard event files.

``metrics.csv`` is rewritten (atomically) from the stage's checkpointed history after every
epoch, so a run killed and resumed never holds a row twice and never loses one that its
checkpoint kept."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from layerprune.io import write_text
from layerprune.train.trainer import EpochRecord

METRICS_CSV = "metrics.csv"
FIELDS = ["stage", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _row(stage: str, r: EpochRecord) -> dict[str, Any]:
    return {"stage": stage, "epoch": r.epoch + 1, "lr": r.lr, "train_loss": r.train_loss,
            "train_acc": r.train_accuracy, "val_loss": "" if r.val_loss is None else r.val_loss,
            "val_acc": "" if r.val_accuracy is None else r.val_accuracy, "seconds": r.seconds}


class TrainingLog:
    """``on_epoch`` callbacks for :func:`~layerprune.train.train`, one per stage."""

    def __init__(self, directory: Path, *, tensorboard: bool = False) -> None:
        self.directory, self.tensorboard = Path(directory), tensorboard
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from layerprune.errors import MissingExtraError

                raise MissingExtraError("logging.tensorboard: needs tensorboard, in the optional extra [tensorboard]: "
                                        "pip install 'layerprune[tensorboard]'") from None
            self._writer_class = SummaryWriter

    def stage(self, name: str) -> Callable[[list[EpochRecord]], None]:
        def on_epoch(history: list[EpochRecord]) -> None:
            path = self.directory / METRICS_CSV
            rows = [r for r in read_rows(path) if r["stage"] != name] + [_row(name, r) for r in history]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
            write_text(path, buf.getvalue())
            if self.tensorboard and history:
                self._scalars(name, history[-1])

        return on_epoch

    def _scalars(self, stage: str, r: EpochRecord) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.directory / "tensorboard"))
        for key, value in asdict(r).items():
            if key != "epoch" and value is not None:
                self._writer.add_scalar(f"{stage}/{key}", value, r.epoch + 1)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

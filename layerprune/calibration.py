"""The data a pruner measures with: :class:`Calibration` (the samples criteria score blocks on)
and :class:`Repair` (the training batches BatchNorm statistics are re-estimated from).

Both are the single source of their defaults: the recipe schema, the CLI options, the scoring
context and ``modularity_curve`` read theirs from here. Both draw from a fixed seed without
touching the global random state, so the same object gives the same samples every time: the
``ablation`` oracle repairs each candidate with exactly the batches the pruned model is
repaired with afterwards.

>>> cal = Calibration(split="val", samples=500, batches=5, seed=0)
>>> repair = Repair(batches=20, batch_size=128)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerprune.errors import LayerpruneError
from layerprune.lazy import lazy_import
from layerprune.params import is_count

if TYPE_CHECKING:  # the defaults are read by ``layerprune --help``, which imports no torch
    import torch.nn as nn
    from torch.utils.data import Dataset

    Pair = tuple[torch.Tensor, torch.Tensor]
else:
    Pair = tuple  # (images, labels): two tensors

torch = lazy_import("torch")
data_utils = lazy_import("torch.utils.data")

SPLITS = ("val", "test", "train")
MICRO_BATCH = 256  # samples per forward pass when features or accuracy are read from calibration samples


def _positive(owner: str, **values: Any) -> None:
    for key, value in values.items():
        if not is_count(value):
            raise LayerpruneError(f"{owner}.{key}: must be an integer ≥ 1, got {value!r}")


@dataclass(frozen=True)
class Calibration:
    """``batches`` draws of ``samples`` from ``split`` (``val``: held out of the training data,
    so blocks are chosen without looking at the test set; ``test`` replicates the paper).

    The draws are disjoint when the split is big enough, independent otherwise, and one batch of
    the whole split when it holds no more than ``samples``.
    """

    split: str = "val"
    samples: int = 500
    batches: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise LayerpruneError(f"calibration.split: must be one of {', '.join(SPLITS)}, got {self.split!r}")
        _positive("calibration", samples=self.samples, batches=self.batches)

    def dataset(self, data: Any) -> Dataset:
        return as_dataset(data, self.split)

    def indices(self, data: Any) -> list[torch.Tensor]:
        """The sample indices of each calibration batch in ``data``'s split."""
        return draw_batches(len(self.dataset(data)), self.samples, self.batches, self.seed)

    def load(self, data: Any) -> list[Pair]:
        """The calibration batches of ``data`` as ``(images, labels)``."""
        ds = self.dataset(data)
        return [load_samples(ds, idx) for idx in draw_batches(len(ds), self.samples, self.batches, self.seed)]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "samples": self.samples, "batches": self.batches, "seed": self.seed}


@dataclass(frozen=True)
class Repair:
    """BatchNorm repair: ``batches`` × ``batch_size`` training samples, without augmentation, drawn
    with ``seed``; ``enabled=False`` skips it.

    :meth:`batches_for` gives the same batches on every call, so every candidate a criterion
    evaluates and the pruned model are repaired alike. Data without a training split (a plain
    ``Dataset`` or ``(images, labels)``) is repaired on the calibration samples instead, in pieces
    of ``MICRO_BATCH``.
    """

    enabled: bool = True
    batches: int = 20
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("repair", batches=self.batches, batch_size=self.batch_size)

    def batches_for(self, data: Any, calibration: Calibration, loaded: list[Pair] | None = None) -> list[Pair]:
        """The repair batches of ``data``; ``calibration``'s samples when it has no training split
        (``loaded``: those samples, when they are drawn already)."""
        from layerprune.data.base import DatasetBundle, without_augmentation

        if not isinstance(data, DatasetBundle):
            return micro_batches(loaded if loaded is not None else calibration.load(data))
        train = without_augmentation(data.train)
        idx = draw_batches(len(train), self.batch_size, self.batches, self.seed)
        # Datasets that cannot drop their augmentation draw it from this fixed seed instead.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return [load_samples(train, i) for i in idx]

    def apply(self, model: nn.Module, batches: list[Pair]) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics on ``batches`` in place (nothing when disabled)."""
        from layerprune.evaluation import repair_batchnorm

        return repair_batchnorm(model, batches) if self.enabled else model

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "batches": self.batches, "batch_size": self.batch_size, "seed": self.seed}


@dataclass(frozen=True, eq=False)
class Pack:
    """What a prune takes from its data, drawn once and shared by every part of it: the
    calibration batches (the criteria score on them, the pruner measures each removal on them and
    traces the model with their first sample) and the repair batches (BatchNorm statistics are
    re-estimated from them, for each candidate an oracle removes and for the pruned model alike).

    Each is drawn the first time it is read, then kept: a prune that never repairs draws no
    repair batch. ``repairs=False`` (a task without BatchNorm statistics to re-estimate, such as a
    language model) or a disabled :class:`Repair` gives no repair batches at all: :meth:`of` asks
    the task.
    """

    data: Any
    calibration_policy: Calibration = Calibration()
    repair_policy: Repair = Repair()
    repairs: bool = True

    @classmethod
    def of(cls, task: Any, data: Any, calibration: Calibration, repair: Repair) -> "Pack":
        """The pack a prune for ``task`` (:mod:`layerprune.tasks`) draws from ``data``: repair
        batches only where the task re-estimates BatchNorm (``task.repairs``)."""
        return cls(data, calibration, repair, repairs=task.repairs)

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The split the calibration samples come from."""
        return self.calibration_policy.dataset(self.data)

    @functools.cached_property
    def indices(self) -> list[torch.Tensor]:
        """The sample indices of each calibration batch in :attr:`dataset`."""
        return self.calibration_policy.indices(self.data)

    @functools.cached_property
    def calibration(self) -> list[Pair]:
        """The calibration batches as ``(inputs, targets)``."""
        return [load_samples(self.dataset, idx) for idx in self.indices]

    @functools.cached_property
    def repair(self) -> list[Pair]:
        """The repair batches (:meth:`Repair.batches_for`); none without a repair."""
        if not (self.repairs and self.repair_policy.enabled):
            return []
        return self.repair_policy.batches_for(self.data, self.calibration_policy, self.calibration)

    @property
    def example_input(self) -> torch.Tensor:
        """The first calibration sample, as a batch of one (on the CPU)."""
        return self.calibration[0][0][:1]

    def pieces(self, size: int = MICRO_BATCH) -> list[Pair]:
        """The calibration samples cut into evaluation-sized pieces."""
        return micro_batches(self.calibration, size)


def as_dataset(data: Any, split: str) -> Dataset:
    """A dataset from a :class:`DatasetBundle` (its ``split``), a ``Dataset`` or ``(images, labels)``."""
    from layerprune.data.base import DatasetBundle

    if isinstance(data, DatasetBundle):
        return data.split(split)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data_utils.TensorDataset(data[0], data[1])
    if isinstance(data, data_utils.Dataset):
        return data
    raise LayerpruneError(
        f"calibration data must be a DatasetBundle, a Dataset or (images, labels), got {type(data).__name__}"
    )


def load_samples(ds: Dataset, idx: torch.Tensor) -> Pair:
    """Samples ``idx`` of ``ds`` as one batch, using the dataset's batched access when it has one."""
    if hasattr(ds, "batch"):
        return ds.batch(idx)
    if isinstance(ds, data_utils.TensorDataset):
        return ds.tensors[0][idx], ds.tensors[1][idx]
    items = [ds[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def micro_batches(batches: list[Pair], size: int = MICRO_BATCH) -> list[Pair]:
    """``batches`` cut into pieces of at most ``size`` samples (for evaluation and repair loops)."""
    return [piece for x, y in batches for piece in zip(x.split(size), y.split(size))]


def draw_batches(n: int, samples: int, batches: int, seed: int) -> list[torch.Tensor]:
    """``batches`` index sets of ``samples``: disjoint when ``n`` allows, else independent draws;
    a single batch of everything when the split has no more than ``samples``."""
    if n < 2:
        raise LayerpruneError(f"calibration needs at least 2 samples, the split has {n}")
    g = torch.Generator().manual_seed(seed)
    if samples >= n:
        return [torch.arange(n)]
    if samples * batches <= n:
        perm = torch.randperm(n, generator=g)
        return [perm[i * samples:(i + 1) * samples].sort().values for i in range(batches)]
    return [torch.randperm(n, generator=g)[:samples].sort().values for _ in range(batches)]

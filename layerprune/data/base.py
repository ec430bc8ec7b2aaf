"""What every dataset builder returns, in-memory image tensors with batched augmentation, and
deterministic splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from layerprune.errors import DatasetError


@dataclass
class DatasetBundle:
    """A dataset's splits and the facts a model needs about them.

    ``train`` is augmented (when the builder's ``augment`` is on); ``val`` is a held-out part of
    the training data (used for calibration and model selection), ``test`` the official test set
    or a held-out test split. ``val`` may be ``None`` when ``val_fraction`` is 0.
    """

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def split(self, name: str) -> Dataset:
        """``"train"``, ``"val"`` or ``"test"`` by name."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"{self.name}: unknown split {name!r} (train, val or test)")
        ds = getattr(self, name)
        if ds is None:
            raise DatasetError(f"{self.name}: no {name!r} split (val_fraction is 0)")
        return ds

    def to(self, device: torch.device | str) -> "DatasetBundle":
        """Move in-memory splits to ``device`` (in place; returns ``self``).

        Splits that share one image tensor keep sharing it: the images are copied once. Splits
        that are not :class:`TensorImageDataset` (files read on demand) stay where they are.
        """
        moved: dict[int, torch.Tensor] = {}
        for ds in (self.train, self.val, self.test):
            if isinstance(ds, TensorImageDataset):
                for attr in ("images", "labels"):
                    t = getattr(ds, attr)
                    if id(t) not in moved:
                        moved[id(t)] = t.to(device)
                    setattr(ds, attr, moved[id(t)])
                ds.mean, ds.std = ds.mean.to(device), ds.std.to(device)
        return self

    def in_memory_bytes(self) -> int | None:
        """Bytes of the image tensors behind the splits, or ``None`` when a split reads files."""
        tensors: dict[int, torch.Tensor] = {}
        for ds in (self.train, self.val, self.test):
            if ds is None:
                continue
            if not isinstance(ds, TensorImageDataset):
                return None
            tensors[id(ds.images)] = ds.images
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def describe(self) -> dict[str, object]:
        sizes = {s: (len(getattr(self, s)) if getattr(self, s) is not None else 0) for s in ("train", "val", "test")}
        return dict(name=self.name, num_classes=self.num_classes, input_size=list(self.input_size),
                    mean=list(self.mean), std=list(self.std), **sizes)


class CropFlip:
    """Batched CIFAR-style augmentation: random crop with zero padding, optional horizontal flip.

    Works on a whole ``(B, C, H, W)`` float batch at once, so a small model on 2 cores is never
    waiting for per-image work.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            # Draws come from the CPU generator wherever x lives: the same augmentation on any device.
            dev = x.device
            dy = torch.randint(0, 2 * p + 1, (b,)).to(dev)
            dx = torch.randint(0, 2 * p + 1, (b,)).to(dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
            x = padded[torch.arange(b, device=dev)[:, None, None, None],
                       torch.arange(c, device=dev)[None, :, None, None], rows, cols]
        if self.flip:
            mask = (torch.rand(b) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, flip={self.flip})"


class TensorImageDataset(Dataset):
    """Images held in memory as a ``uint8`` tensor ``(N, C, H, W)`` with integer labels.

    Indexing scales to [0, 1], augments (if given) and normalises. ``__getitems__`` does this for a
    whole batch at once; PyTorch's ``DataLoader`` calls it automatically.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        augment: CropFlip | None = None,
        indices: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.indices = torch.arange(len(images)) if indices is None else indices.long()
        # On the images' device: a subset of a split moved to the GPU stays there.
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
        self.augment = augment

    def subset(self, indices: torch.Tensor | np.ndarray, augment: CropFlip | None = None) -> "TensorImageDataset":
        """A view on some of these samples (sharing memory), with its own augmentation."""
        idx = self.indices[torch.as_tensor(indices, dtype=torch.long)]
        return TensorImageDataset(self.images, self.labels, self.mean, self.std, augment, idx)

    def without_augmentation(self) -> "TensorImageDataset":
        """The same samples, scaled and normalised but never augmented (a view, no copy)."""
        return TensorImageDataset(self.images, self.labels, self.mean, self.std, None, self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """Labels of this dataset's samples, in order."""
        return self.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, idx: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``idx`` as one ``(images, labels)`` pair of batched tensors."""
        rows = self.indices[torch.as_tensor(idx, dtype=torch.long)].to(self.images.device)
        x = self.images[rows].float().div_(255.0)
        if self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        return x, self.labels[rows]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch([i])
        return x[0], int(y[0])

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(idx)
        return list(zip(x.unbind(0), y.unbind(0)))


def without_augmentation(ds: Dataset) -> Dataset:
    """``ds`` without its random augmentation when it knows how to drop it, else ``ds`` itself."""
    plain = getattr(ds, "without_augmentation", None)
    return plain() if callable(plain) else ds


def stratified_split(
    labels: np.ndarray | torch.Tensor, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split sample indices into ``len(fractions) + 1`` disjoint, sorted parts, class by class.

    ``fractions`` are the shares of the leading parts (e.g. ``[0.2, 0.1]`` for test and val); the
    last part takes the rest. The same labels and seed always give the same parts.
    """
    labels = np.asarray(labels)
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum to < 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(frac * len(members)))
            parts[k].append(members[start:start + n])
            start += n
        parts[-1].append(members[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def check_fractions(name: str, **fractions: float) -> None:
    """One-line errors for split fractions outside [0, 1) or summing to 1 or more."""
    for key, value in fractions.items():
        if not 0 <= value < 1:
            raise DatasetError(f"{name}: {key} must be in [0, 1), got {value}")
    if sum(fractions.values()) >= 1:
        raise DatasetError(f"{name}: {' + '.join(fractions)} must be < 1, got {sum(fractions.values())}")


def check_stats(name: str, mean: Sequence[float], std: Sequence[float],
                channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as tuples of floats, one per channel (std > 0); else a one-line error
    naming the option and the number of channels."""
    checked = []
    for key, values in (("mean", mean), ("std", std)):
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise DatasetError(f"{name}: {key} must be a list of {channels} numbers (one per channel), "
                               f"got {values!r}") from None
        if len(values) != channels:
            raise DatasetError(f"{name}: {key} has {len(values)} value{'s' * (len(values) != 1)}, but the images "
                               f"have {channels} channels: give one per channel")
        if key == "std" and any(v <= 0 for v in values):
            raise DatasetError(f"{name}: std must be > 0 for every channel, got {list(values)}")
        checked.append(values)
    return checked[0], checked[1]


def normalisation_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int = 0,
    seed: int | None = None,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A ``DataLoader`` with the settings that suit this project's datasets.

    In-memory datasets batch themselves (``__getitems__``) and need no workers; ``seed`` makes the
    shuffling order reproducible.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None and sampler is None else None
    on_host = getattr(getattr(dataset, "images", None), "device", torch.device("cpu")).type == "cpu"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available() and on_host,  # page-locked: non_blocking copies to the GPU
        drop_last=drop_last,
        generator=generator,
    )

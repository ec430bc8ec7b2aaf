"""Image folders: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (the ImageNet
layout) or ``root/test/<class>/<image>`` (the layout CIFAR copies come in).

``test`` is ``root/val`` where it exists, else ``root/test``; ``val`` is a stratified held-out part
of ``root/train`` (``val_fraction``, default 0.01) for calibration.

Two ways to read the images:

* on demand (default): every sample is decoded and transformed when it is drawn (timm's
  standard transforms, or ``augment="crop_flip"``), so use data-loader workers;
* ``in_memory=True``: every image is decoded once, fitted to ``input_size`` and kept as one
  ``uint8`` tensor, the way the CIFAR loader holds its data: batches are then cut, augmented
  (``crop_flip``) and normalised as whole tensors, and an epoch is not bound by JPEG decoding.

Images already at ``input_size`` are used as they are (timm's evaluation transform would resize a
32×32 image to 36×36 and crop its centre); larger or other-shaped ones are resized and
centre-cropped (``crop_pct``) for evaluation.

>>> data = build_imagefolder(root="cifar10-jpeg", input_size=32, augment="crop_flip",
...                          in_memory=True)  # doctest: +SKIP
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from layerprune.data.base import (
    CropFlip, DatasetBundle, TensorImageDataset, check_fractions, check_stats, stratified_split,
)
from layerprune.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNELS = 3  # images are read as RGB
CROP_FLIP_PADDING = 4


class ImageReadError(DatasetError):
    """An image file that cannot be decoded.

    Raised inside a data-loader worker, PyTorch re-raises it in the main process with the worker's
    traceback in the message; ``str()`` keeps only this error's own line.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if "\n" not in text:
            return text
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split(f"{type(self).__name__}: ", 1)[-1]


def read_image(path: str):
    """The image at ``path`` as RGB; an unreadable file raises :class:`ImageReadError` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # convert() decodes, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ImageReadError(f"imagefolder: cannot read image {path}: {exc}") from None


class Fit:
    """An image brought to ``size`` × ``size``: left as it is when it already has that size, else
    resized (shorter side to ``size / crop_pct``) and centre-cropped, as timm evaluates."""

    def __init__(self, size: int, crop_pct: float, interpolation: str) -> None:
        from torchvision import transforms

        from timm.data.transforms import str_to_interp_mode

        self.size = size
        self.resize = transforms.Compose([
            transforms.Resize(int(size / crop_pct), interpolation=str_to_interp_mode(interpolation)),
            transforms.CenterCrop(size),
        ])

    def __call__(self, image):
        return image if image.size == (self.size, self.size) else self.resize(image)

    def __repr__(self) -> str:
        return f"Fit(size={self.size}, otherwise {self.resize!r})"


class TransformedSubset(Dataset):
    """Some samples of an untransformed dataset, each passed through ``transform``
    (``plain_transform``: the same without random augmentation, for BatchNorm repair)."""

    def __init__(self, base: Dataset, indices, transform: Callable, plain_transform: Callable | None = None) -> None:
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform
        self.plain_transform = plain_transform

    def without_augmentation(self) -> "TransformedSubset":
        return TransformedSubset(self.base, self.indices, self.plain_transform or self.transform)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i]]
        return self.transform(image), label

    @property
    def targets(self) -> list[int]:
        targets = self.base.targets
        return [targets[i] for i in self.indices]


def _folder(root: Path, split: str):
    from torchvision.datasets import ImageFolder

    path = root / split
    try:
        return ImageFolder(str(path), loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"imagefolder: {path.resolve()}: {exc}") from exc


def _test_split(root: Path) -> str:
    for split in ("val", "test"):
        if (root / split).is_dir():
            return split
    raise DatasetError(f"imagefolder: no 'val' or 'test' folder under {root.resolve()} "
                       f"(expected {root}/train/<class>/<image> and {root}/val/<class>/<image> or {root}/test/...)")


def _check_classes(root: Path, train, test, test_split: str) -> None:
    if train.classes == test.classes:
        return
    only_train = sorted(set(train.classes) - set(test.classes))
    only_test = sorted(set(test.classes) - set(train.classes))
    detail = "; ".join(part for part in (
        f"only in train/: {', '.join(only_train)}" if only_train else "",
        f"only in {test_split}/: {', '.join(only_test)}" if only_test else "") if part)
    raise DatasetError(f"imagefolder: {(root / 'train').resolve()} and {(root / test_split).resolve()} have "
                       f"different class folders ({detail})")


def decode_all(paths: Sequence[str], fit: Fit, threads: int = 4) -> torch.Tensor:
    """Every image decoded, fitted and stacked as one ``uint8`` tensor ``(N, 3, S, S)``."""
    out = torch.empty((len(paths), CHANNELS, fit.size, fit.size), dtype=torch.uint8)

    def one(i: int) -> None:
        array = np.array(fit(read_image(paths[i])), dtype=np.uint8)  # a writable copy
        out[i] = torch.from_numpy(array).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        for _ in pool.map(one, range(len(paths))):
            pass
    return out


def build_imagefolder(
    *, root: str | Path | None = None, input_size: int = 224, seed: int = 0, val_fraction: float = 0.01,
    augment: Union[bool, str] = True, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 0.875, interpolation: str = "bilinear", in_memory: bool = False,
) -> DatasetBundle:
    """Train/val(or test) image folders.

    ``augment``: ``True`` timm's training transform (RandomResizedCrop, flip; for ImageNet-sized
    images), ``"crop_flip"`` the CIFAR augmentation (zero padding 4, random crop, horizontal flip;
    for small images), ``False`` none. ``in_memory``: decode every image once into memory (with
    ``crop_flip`` or no augmentation).
    """
    if root is None:
        raise DatasetError("imagefolder: 'root' is required (a folder holding train/ and val/ or test/)")
    if not (augment is True or augment is False or augment == "crop_flip"):
        raise DatasetError(f"imagefolder: augment must be true, false or crop_flip, got {augment!r}")
    if in_memory and augment is True:
        raise DatasetError("imagefolder: augment: true (timm's RandomResizedCrop) needs images read on demand; "
                           "with in_memory: true use augment: crop_flip or false")
    check_fractions("imagefolder", val_fraction=val_fraction)
    mean, std = check_stats("imagefolder", mean, std, CHANNELS)
    root = Path(root)
    if not (root / "train").is_dir():
        raise DatasetError(f"imagefolder: no 'train' folder at {(root / 'train').resolve()} "
                           f"(expected {root}/train/<class>/<image>)")
    test_split = _test_split(root)
    train_raw, test_raw = _folder(root, "train"), _folder(root, test_split)
    _check_classes(root, train_raw, test_raw, test_split)
    size = (CHANNELS, input_size, input_size)
    val_idx, train_idx = stratified_split(train_raw.targets, [val_fraction], seed)
    fit = Fit(input_size, crop_pct, interpolation)
    if in_memory:
        train_all = TensorImageDataset(decode_all([p for p, _ in train_raw.samples], fit),
                                       torch.as_tensor(train_raw.targets), mean, std)
        test_all = TensorImageDataset(decode_all([p for p, _ in test_raw.samples], fit),
                                      torch.as_tensor(test_raw.targets), mean, std)
        crop_flip = CropFlip(CROP_FLIP_PADDING, flip=True) if augment else None
        train, val, test = (train_all.subset(train_idx, augment=crop_flip),
                            train_all.subset(val_idx) if val_fraction > 0 else None, test_all)
    else:
        eval_tf, train_tf = _transforms(fit, augment, mean, std, interpolation)
        train = TransformedSubset(train_raw, train_idx, train_tf, eval_tf)
        val = TransformedSubset(train_raw, val_idx, eval_tf) if val_fraction > 0 else None
        test = TransformedSubset(test_raw, range(len(test_raw)), eval_tf)
    return DatasetBundle(name="imagefolder", train=train, val=val, test=test, num_classes=len(train_raw.classes),
                         input_size=size, mean=mean, std=std, classes=list(train_raw.classes))


def _transforms(fit: Fit, augment: Union[bool, str], mean, std, interpolation: str) -> tuple[Callable, Callable]:
    """Per-image (evaluation, training) transforms."""
    from torchvision import transforms

    from timm.data import create_transform

    to_tensor = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    eval_tf = transforms.Compose([fit, *to_tensor])
    if augment == "crop_flip":
        train_tf = transforms.Compose([fit, transforms.RandomCrop(fit.size, padding=CROP_FLIP_PADDING),
                                       transforms.RandomHorizontalFlip(), *to_tensor])
    elif augment:
        train_tf = create_transform((CHANNELS, fit.size, fit.size), is_training=True, mean=mean, std=std,
                                    interpolation=interpolation)
    else:
        train_tf = eval_tf
    return eval_tf, train_tf

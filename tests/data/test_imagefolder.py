import pytest
import torch
from PIL import Image

from layerprune.data import build_dataset, make_loader
from layerprune.errors import DatasetError


@pytest.fixture
def folder(tmp_path):
    colours = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}
    for split, count in (("train", 10), ("val", 3)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40 + i, 36), colour).save(tmp_path / split / name / f"{i}.png")
    return tmp_path


def test_imagenet_layout_is_read_with_timm_transforms(folder):
    bundle = build_dataset("imagefolder", root=folder, input_size=32, val_fraction=0.2)
    assert bundle.classes == ["cat", "dog", "emu"] and bundle.num_classes == 3
    assert len(bundle.train) == 24 and len(bundle.val) == 6 and len(bundle.test) == 9
    x, y = bundle.test[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert not set(bundle.train.indices) & set(bundle.val.indices)
    images, labels = next(iter(make_loader(bundle.train, 8, shuffle=True, seed=0)))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64


def test_eval_images_are_deterministic_train_images_augmented(folder):
    bundle = build_dataset("imagefolder", root=folder, input_size=32)
    torch.testing.assert_close(bundle.test[0][0], bundle.test[0][0])
    assert bundle.train.transform is not bundle.test.transform


def test_missing_split_folder_names_the_path(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(DatasetError, match=f"no 'val' folder at {tmp_path / 'val'}"):
        build_dataset("imagefolder", root=tmp_path)


def test_root_is_required():
    with pytest.raises(DatasetError, match="'root' is required"):
        build_dataset("imagefolder")


def test_class_folder_without_images_is_reported(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"imagefolder: {tmp_path / 'train'}: Found no valid file"):
        build_dataset("imagefolder", root=tmp_path)

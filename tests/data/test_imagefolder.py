import re
from pathlib import Path

import numpy as np
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
    with pytest.raises(DatasetError, match=f"no 'val' or 'test' folder under {tmp_path}"):
        build_dataset("imagefolder", root=tmp_path)
    with pytest.raises(DatasetError, match=f"no 'train' folder at {tmp_path / 'nothing' / 'train'}"):
        build_dataset("imagefolder", root=tmp_path / "nothing")


def test_root_is_required():
    with pytest.raises(DatasetError, match="'root' is required"):
        build_dataset("imagefolder")


def test_class_folder_without_images_is_reported(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"imagefolder: {tmp_path / 'train'}: Found no valid file for the classes a"):
        build_dataset("imagefolder", root=tmp_path)


# -- small images: test/, crop_flip, in memory ------------------------------------------------------

@pytest.fixture
def noise_folder(tmp_path):
    """32×32 images of random pixels (PNG, lossless) in train/ and test/ (no val/): a crop of one
    matches it at exactly one shift."""
    rng = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    return tmp_path


def _unnormalise(x, bundle):
    mean = torch.tensor(bundle.mean).view(3, 1, 1)
    std = torch.tensor(bundle.std).view(3, 1, 1)
    return x * std + mean


def _shift_and_flip(augmented, plain, padding=4):
    """(dy, dx, flipped) such that ``augmented`` is ``plain`` zero-padded by ``padding``, cropped
    at that offset and maybe mirrored; ``None`` when no such pair exists."""
    padded = torch.nn.functional.pad(plain, (padding,) * 4)
    h, w = plain.shape[-2:]
    for flipped in (False, True):
        target = augmented.flip(-1) if flipped else augmented
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                if torch.allclose(padded[:, dy:dy + h, dx:dx + w], target, atol=1e-5):
                    return dy - padding, dx - padding, flipped
    return None


@pytest.mark.parametrize("in_memory", [False, True])
def test_test_folder_serves_as_test_split_when_there_is_no_val(noise_folder, in_memory):
    bundle = build_dataset("imagefolder", root=noise_folder, input_size=32, val_fraction=0.25,
                           augment="crop_flip", in_memory=in_memory)
    assert bundle.classes == ["a", "b"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 4, 4)
    # images already at input_size are not resized: the test split is the files' pixels, normalised
    for i, (path, label) in enumerate(sorted((p, int(p.parent.name == "b")) for p in noise_folder.glob("test/*/*.png"))):
        x, y = bundle.test[i]
        expected = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float() / 255
        assert y == label
        torch.testing.assert_close(_unnormalise(x, bundle), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("in_memory", [False, True])
def test_crop_flip_shifts_by_at_most_4_pixels_and_maybe_mirrors(noise_folder, in_memory):
    bundle = build_dataset("imagefolder", root=noise_folder, input_size=32, val_fraction=0.25,
                           augment="crop_flip", in_memory=in_memory)
    plain = bundle.train.without_augmentation()
    seen = set()
    for _ in range(6):
        for i in range(len(bundle.train)):
            found = _shift_and_flip(_unnormalise(bundle.train[i][0], bundle), _unnormalise(plain[i][0], bundle))
            assert found is not None, f"train image {i} is not a shifted (and maybe mirrored) copy of itself"
            seen.add(found)
    assert any(f[2] for f in seen) and any(not f[2] for f in seen)  # both mirrored and not
    assert len({f[:2] for f in seen}) > 5  # random shifts, not one fixed offset


def test_in_memory_and_on_demand_give_the_same_images(noise_folder):
    kwargs = dict(root=noise_folder, input_size=32, val_fraction=0.25, augment=False)
    lazy = build_dataset("imagefolder", **kwargs)
    held = build_dataset("imagefolder", in_memory=True, **kwargs)
    assert held.in_memory_bytes() == 16 * 3 * 32 * 32 and lazy.in_memory_bytes() is None
    for split in ("train", "val", "test"):
        a, b = lazy.split(split), held.split(split)
        assert len(a) == len(b)
        for i in range(len(a)):
            torch.testing.assert_close(a[i][0], b[i][0], atol=1e-5, rtol=0)
            assert int(a[i][1]) == int(b[i][1])


def test_larger_images_are_fitted_to_input_size_in_memory(folder):
    bundle = build_dataset("imagefolder", root=folder, input_size=24, augment=False, in_memory=True)
    assert bundle.test.images.shape == (9, 3, 24, 24) and bundle.test.images.dtype == torch.uint8


def test_train_and_test_class_folders_must_match(noise_folder):
    (noise_folder / "test" / "b").rename(noise_folder / "test" / "c")
    with pytest.raises(DatasetError, match=r"different class folders \(only in train/: b; only in test/: c\)") as err:
        build_dataset("imagefolder", root=noise_folder, input_size=32)
    assert str(noise_folder / "train") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_corrupt_image_is_named(noise_folder, in_memory):
    bad = noise_folder / "train" / "a" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    if in_memory:
        with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
            build_dataset("imagefolder", root=noise_folder, input_size=32, val_fraction=0, in_memory=True,
                          augment=False)
        return
    bundle = build_dataset("imagefolder", root=noise_folder, input_size=32, val_fraction=0)
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        for _ in make_loader(bundle.train, 4):
            pass


def test_a_corrupt_image_read_by_a_loader_worker_is_one_line(noise_folder):
    bad = noise_folder / "train" / "a" / "3.png"
    bad.write_bytes(b"not an image")
    bundle = build_dataset("imagefolder", root=noise_folder, input_size=32, val_fraction=0)
    with pytest.raises(DatasetError) as err:
        for _ in make_loader(bundle.train, 4, workers=1):
            pass
    assert str(err.value).startswith(f"imagefolder: cannot read image {bad}") and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["mean", "std"])
def test_stats_of_the_wrong_length_name_the_key_and_the_channels(noise_folder, key):
    with pytest.raises(DatasetError, match=f"imagefolder: {key} has 2 values, but the images have 3 channels"):
        build_dataset("imagefolder", root=noise_folder, **{key: [0.5, 0.5]})


@pytest.mark.parametrize("options, message", [
    ({"augment": "flip"}, "augment must be true, false or crop_flip, got 'flip'"),
    ({"augment": 1}, "augment must be true, false or crop_flip, got 1"),
    ({"augment": True, "in_memory": True}, "with in_memory: true use augment: crop_flip or false"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be > 0 for every channel"),
])
def test_bad_options_are_one_line_errors(noise_folder, options, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        build_dataset("imagefolder", root=noise_folder, input_size=32, **options)


def test_cifar_takes_mean_and_std_and_checks_them_before_reading(tmp_path):
    from layerprune.data import dataset_options

    assert {"mean", "std"} <= set(dataset_options("cifar10")) and {"mean", "std"} <= set(dataset_options("cifar100"))
    with pytest.raises(DatasetError, match="cifar10: mean has 1 value, but the images have 3 channels"):
        build_dataset("cifar10", root=tmp_path, mean=[0.5])


# -- the real images (skip without $LAYERPRUNE_DATA) ------------------------------------------------

def _plain_accuracy(model, folder: Path, mean, std) -> float:
    """A plain PyTorch loop: every test image decoded with PIL, /255, normalised."""
    classes = sorted(p.name for p in (folder / "test").iterdir())
    correct = total = 0
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        for label, name in enumerate(classes):
            files = sorted((folder / "test" / name).iterdir())
            x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
            pred = model(((x.float() / 255) - m) / s).argmax(1)
            correct += int((pred == label).sum())
            total += len(files)
    return correct / total


@pytest.mark.parametrize("in_memory", [False, True])
def test_pretrained_resnet20_scores_as_a_plain_loop_on_the_same_files(cifar_jpeg_subset, shared_data, in_memory):
    from layerprune.evaluation import evaluate
    from layerprune.models import create_model_for

    imagenet = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    bundle = build_dataset("imagefolder", root=cifar_jpeg_subset, input_size=32, augment="crop_flip",
                           in_memory=in_memory, val_fraction=0.1, **imagenet)
    assert len(bundle.test) == 300 and len(bundle.train) + len(bundle.val) == 200
    model = create_model_for("cifar_resnet20", bundle,
                             checkpoint=str(shared_data / "cifar10-resnet" / "resnet20-12fca82f.th"))
    ours = evaluate(model, make_loader(bundle.test, 64)).accuracy
    plain = _plain_accuracy(model, cifar_jpeg_subset, **imagenet)
    assert abs(ours - plain) <= 0.001
    assert ours > 0.6  # the checkpoint works on these JPEGs (81% on all of test/), not chance


def test_crop_flip_on_real_images(cifar_jpeg_subset):
    for in_memory in (False, True):
        bundle = build_dataset("imagefolder", root=cifar_jpeg_subset, input_size=32, augment="crop_flip",
                               in_memory=in_memory, val_fraction=0.1)
        plain = bundle.train.without_augmentation()
        for i in range(0, len(bundle.train), 9):
            assert _shift_and_flip(_unnormalise(bundle.train[i][0], bundle), _unnormalise(plain[i][0], bundle)) is not None

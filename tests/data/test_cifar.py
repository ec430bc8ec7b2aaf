"""CIFAR through torchvision: the offline error, the download error, and the in-memory conversion."""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from layerprune.data import build_dataset
from layerprune.errors import DatasetError


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_files_name_the_path_and_the_fix(tmp_path, name, folder):
    with pytest.raises(DatasetError) as info:
        build_dataset(name, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder) in message
    assert "download: true" in message and "\n" not in message


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPRUNE_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match=str(tmp_path / "elsewhere" / "cifar-10-batches-py")):
        build_dataset("cifar10")


def test_failed_download_is_a_one_line_error(tmp_path, monkeypatch):
    # A closed port on this machine stands in for "no network": the real download code runs.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match=r"cifar10: http://127\.0\.0\.1:9/cifar-10-python\.tar\.gz: download failed") as info:
        build_dataset("cifar10", root=tmp_path, download=True)
    assert "\n" not in str(info.value)


def _write_fake_cifar10(root, n_train=50, n_test=20):
    """Files in the exact CIFAR-10 python format (random pixels, 10 classes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(path, n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        with open(path, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
        return data, labels

    train = [batch(folder / f"data_batch_{i}", n_train // 5) for i in range(1, 6)]
    test = batch(folder / "test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    return train, test


def test_cifar_files_become_normalised_chw_tensors(tmp_path, monkeypatch):
    train, test = _write_fake_cifar10(tmp_path)
    # Our files are in the real format but cannot match the published MD5 sums.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    bundle = build_dataset("cifar10", root=tmp_path, val_fraction=0.2, augment=False)
    assert bundle.num_classes == 10 and bundle.classes[0] == "class0"
    assert len(bundle.train) == 40 and len(bundle.val) == 10 and len(bundle.test) == 20
    assert not set(bundle.train.indices.tolist()) & set(bundle.val.indices.tolist())
    again = build_dataset("cifar10", root=tmp_path, val_fraction=0.2, augment=False)
    assert torch.equal(again.val.indices, bundle.val.indices)
    # The first test image, read back through our pipeline and un-normalised, equals the raw bytes.
    x, y = bundle.test[0]
    raw = torch.from_numpy(test[0][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    torch.testing.assert_close(x * std + mean, raw)
    assert y == test[1][0]
    assert build_dataset("cifar10", root=tmp_path).train.augment.flip is True


def test_corrupted_files_are_reported_as_such(tmp_path):
    _write_fake_cifar10(tmp_path)  # real format, but the MD5 sums cannot match
    with pytest.raises(DatasetError, match="cifar10: files under .*cifar-10-batches-py are incomplete or corrupted"):
        build_dataset("cifar10", root=tmp_path)

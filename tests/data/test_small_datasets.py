"""digits, mnist5k and synthetic: real offline data, deterministic disjoint splits."""

import numpy as np
import pytest
import torch

from layerprune.data import build_dataset, make_loader
from layerprune.errors import DatasetError

TOTALS = {"digits": 1797, "mnist5k": 5000, "synthetic": 1000}


def _rows(ds):
    return set(ds.indices.tolist())


@pytest.mark.parametrize("name", ["digits", "mnist5k", "synthetic"])
def test_shapes_classes_and_sizes(name):
    bundle = build_dataset(name)
    assert bundle.num_classes == 10
    assert bundle.input_size[1:] == (32, 32)
    x, y = bundle.train[0]
    assert x.shape == bundle.input_size and x.dtype == torch.float32
    assert 0 <= y < 10
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == TOTALS[name]
    assert set(bundle.test.targets.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["digits", "mnist5k", "synthetic"])
def test_splits_are_disjoint_cover_everything_and_are_stratified(name):
    bundle = build_dataset(name, seed=3)
    train, val, test = _rows(bundle.train), _rows(bundle.val), _rows(bundle.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == TOTALS[name]
    # Stratified: each class's share of the test split is its share of the whole data set ± 1 sample.
    all_labels = bundle.train.labels
    for cls in range(10):
        expected = 0.2 * int((all_labels == cls).sum())
        assert abs(int((bundle.test.targets == cls).sum()) - expected) <= 1


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_splits_are_stable_for_a_seed_and_change_with_it(name):
    a, b, c = build_dataset(name, seed=0), build_dataset(name, seed=0), build_dataset(name, seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).indices, getattr(b, split).indices)
    assert not torch.equal(a.test.indices, c.test.indices)


def test_fractions_set_split_sizes_and_zero_val_means_no_val():
    bundle = build_dataset("mnist5k", val_fraction=0.0, test_fraction=0.5)
    assert bundle.val is None
    assert len(bundle.test) == 2500 and len(bundle.train) == 2500
    with pytest.raises(DatasetError, match="no 'val' split"):
        bundle.split("val")


def test_digits_are_real_scikit_learn_digits_upsampled():
    from sklearn.datasets import load_digits

    bundle = build_dataset("digits", augment=False)
    raw = load_digits()
    i = int(bundle.train.indices[0])
    assert int(bundle.train.targets[0]) == raw.target[i]
    # Downsampling our 32×32 image back to 8×8 recovers the original digit's bright pixels.
    image = bundle.train.images[i].float().div(255)
    small = torch.nn.functional.adaptive_avg_pool2d(image, 8)[0].numpy()
    original = raw.images[i] / 16.0
    assert np.corrcoef(small.ravel(), original.ravel())[0, 1] > 0.9


def test_mnist5k_is_padded_28x28_mnist():
    bundle = build_dataset("mnist5k")
    images = bundle.train.images
    assert images.shape == (5000, 1, 32, 32)
    assert images[:, :, :2].max() == 0 and images[:, :, -2:].max() == 0  # 2-pixel zero border
    assert images.max() == 255


def test_train_split_is_normalised_without_augmentation():
    bundle = build_dataset("mnist5k", augment=False)
    x, _ = bundle.train.batch(torch.arange(len(bundle.train)))
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-2


def test_three_channel_option_replicates_gray():
    bundle = build_dataset("digits", channels=3)
    x, _ = bundle.test[0]
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0], x[1])


def test_loader_yields_batches_and_seeded_shuffle_is_reproducible():
    bundle = build_dataset("digits")
    first = [y for _, y in make_loader(bundle.train, 64, shuffle=True, seed=7)]
    again = [y for _, y in make_loader(bundle.train, 64, shuffle=True, seed=7)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    x, y = next(iter(make_loader(bundle.train, 64, shuffle=True, seed=7)))
    assert x.shape == (64, 1, 32, 32) and y.dtype == torch.int64
    assert sum(len(b) for b in first) == len(bundle.train)


def test_eval_splits_are_not_augmented_train_split_is():
    bundle = build_dataset("digits")
    assert bundle.test.augment is None and bundle.val.augment is None
    assert bundle.train.augment is not None and bundle.train.augment.flip is False
    torch.testing.assert_close(bundle.test[0][0], bundle.test[0][0])


def test_synthetic_is_seeded():
    a, b = build_dataset("synthetic", seed=5), build_dataset("synthetic", seed=5)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, build_dataset("synthetic", seed=6).train.images)
    small = build_dataset("synthetic", num_samples=40, num_classes=4, image_size=16, channels=1)
    assert small.input_size == (1, 16, 16) and small.num_classes == 4


@pytest.mark.parametrize("options, message", [
    ({"val_fraction": 1.5}, "digits: val_fraction must be in \\[0, 1\\)"),
    ({"val_fraction": 0.5, "test_fraction": 0.6}, "val_fraction \\+ test_fraction must be < 1"),
    ({"channels": 2}, "digits: channels must be 1 or 3"),
    ({"colour": True}, "digits: unknown option 'colour' \\(accepted: seed, "),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(DatasetError, match=message):
        build_dataset("digits", **options)

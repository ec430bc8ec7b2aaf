"""DatasetBundle.to and in_memory_bytes: in-memory splits move to a device and batches are made there.

The "meta" device stands in for a GPU on this CPU-only machine: an op that mixes a meta tensor with
a CPU tensor raises, so a batch that comes out on meta was cut, augmented and normalised on meta.
"""

import pytest
import torch
from torch.utils.data import TensorDataset

from layerprune.data import CropFlip, DatasetBundle, build_dataset, make_loader


@pytest.fixture
def digits():
    """A fresh bundle per test: ``to`` moves splits in place."""
    return build_dataset("digits", seed=0)


def test_to_moves_every_split_to_the_device(digits):
    digits.to("meta")
    for ds in (digits.train, digits.val, digits.test):
        assert {t.device.type for t in (ds.images, ds.labels, ds.mean, ds.std)} == {"meta"}


def test_to_copies_a_shared_image_tensor_once_so_the_splits_keep_sharing_it(digits):
    assert digits.train.images is digits.val.images is digits.test.images  # the builder shares one tensor
    digits.to("meta")
    assert digits.train.images is digits.val.images is digits.test.images


def test_to_returns_the_bundle_itself(digits):
    assert digits.to("meta") is digits


def test_a_loader_over_a_moved_split_with_crops_and_flips_yields_batches_on_the_device(digits):
    # The subset is taken before moving (it shares the bundle's image tensor, so it moves with it).
    digits.train = digits.train.subset(range(64), augment=CropFlip(padding=4, flip=True))
    digits.to("meta")
    batches = list(make_loader(digits.train, 32, shuffle=True, seed=0))
    assert [(tuple(x.shape), x.device.type, x.dtype, tuple(y.shape), y.device.type) for x, y in batches] == \
           [((32, 1, 32, 32), "meta", torch.float32, (32,), "meta")] * 2


def test_a_subset_of_a_moved_split_stays_on_the_device(digits):
    digits.to("meta")
    part = digits.train.subset(range(8), augment=CropFlip(padding=4, flip=True))
    x, y = part.batch(range(8))
    assert (x.device.type, y.device.type, part.mean.device.type) == ("meta", "meta", "meta")


def test_in_memory_bytes_counts_the_shared_uint8_images_once(digits):
    images = digits.train.images
    assert images.dtype == torch.uint8
    assert digits.in_memory_bytes() == images.numel()


def test_in_memory_bytes_is_none_when_a_split_is_not_an_in_memory_image_dataset(digits):
    plain = TensorDataset(torch.zeros(8, 1, 32, 32), torch.zeros(8, dtype=torch.long))
    bundle = DatasetBundle(name="mixed", train=plain, val=digits.val, test=digits.test, num_classes=10,
                           input_size=(1, 32, 32), mean=digits.mean, std=digits.std)
    assert bundle.in_memory_bytes() is None


def test_to_leaves_a_split_that_is_not_an_in_memory_image_dataset_where_it_is(digits):
    plain = TensorDataset(torch.zeros(8, 1, 32, 32), torch.zeros(8, dtype=torch.long))
    bundle = DatasetBundle(name="mixed", train=plain, val=None, test=digits.test, num_classes=10,
                           input_size=(1, 32, 32), mean=digits.mean, std=digits.std)
    bundle.to("meta")
    assert [t.device.type for t in plain.tensors] == ["cpu", "cpu"]
    assert bundle.test.images.device.type == "meta"

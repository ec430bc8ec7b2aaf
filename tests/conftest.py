"""Shared fixtures: a fixed random state, real digits, a briefly trained ResNet-20 and an isolated
criterion catalog."""

import copy
import os
from pathlib import Path

import pytest
import torch

from layerprune import build_dataset, create_model
from layerprune.criteria import catalog
from layerprune.data import make_loader
from layerprune.train import fit


@pytest.fixture(autouse=True, scope="session")
def _base_model_cache(tmp_path_factory):
    """Benches keep trained base models in a cache: the tests' own, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    return build_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def _trained_resnet20(digits):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1)
    fit(model, make_loader(digits.train, 128, shuffle=True, seed=0), epochs=3, lr=0.1)
    return model.eval()


@pytest.fixture
def trained_resnet20(_trained_resnet20):
    """ResNet-20 trained 3 epochs on digits (~83% val accuracy); a fresh copy per test."""
    return copy.deepcopy(_trained_resnet20)


@pytest.fixture
def zero_residual_branch():
    """``fn(model, name)``: make block ``name`` an exact identity on its (non-negative) input —
    its branch's last BatchNorm outputs zeros, so ``relu(x + 0) = x``."""

    def zero(model, name):
        with torch.no_grad():
            bn = model.get_submodule(name).bn2
            bn.weight.zero_()
            bn.bias.zero_()
        return model

    return zero


@pytest.fixture
def fresh_catalog(monkeypatch):
    """The criterion catalog as built-ins only; whatever a test registers or loads is undone."""
    monkeypatch.setattr(catalog, "_failures", [])
    monkeypatch.setattr(catalog, "_loaded", {})
    monkeypatch.setattr(catalog, "_entry_points_loaded", False)
    with catalog.CRITERIA.restored():
        yield catalog


SHARED_DATA_ENV = "LAYERPRUNE_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$LAYERPRUNE_DATA``, the folder holding ``cifar10-jpeg/`` and ``cifar10-resnet/`` (``.ci/run``
    points it at ``../shared/data``); tests that need it skip where it is absent."""
    root = os.environ.get(SHARED_DATA_ENV)
    if not root:
        pytest.skip(f"needs CIFAR-10 and the pretrained CIFAR ResNets: set {SHARED_DATA_ENV} to the folder "
                    "holding cifar10-jpeg/ and cifar10-resnet/ (e.g. ../shared/data)")
    missing = [name for name in ("cifar10-jpeg/train", "cifar10-jpeg/test", "cifar10-resnet") if not (Path(root) / name).is_dir()]
    if missing:
        pytest.skip(f"{SHARED_DATA_ENV}={root} lacks {', '.join(missing)}")
    return Path(root)


@pytest.fixture
def skip_without_shared_data(request):
    """``fn(path)``: skip the test (as :func:`shared_data` does) when the recipe or suite at ``path``
    reads its data or checkpoints from ``$LAYERPRUNE_DATA`` and that folder is absent."""

    def check(path: Path) -> None:
        if SHARED_DATA_ENV in Path(path).read_text():
            request.getfixturevalue("shared_data")

    return check


@pytest.fixture(scope="session")
def cifar_jpeg_subset(shared_data, tmp_path_factory) -> Path:
    """A few hundred CIFAR-10 JPEG files as an image folder (links to ``$LAYERPRUNE_DATA``):
    20 training and 30 test images per class."""
    root = tmp_path_factory.mktemp("cifar10-subset")
    for split, count in (("train", 20), ("test", 30)):
        for folder in sorted((shared_data / "cifar10-jpeg" / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                (root / split / folder.name / image.name).symlink_to(image.resolve())
    return root

"""Shared fixtures: a fixed random state, real digits, a briefly trained ResNet-20 and an isolated
criterion catalog."""

import copy

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

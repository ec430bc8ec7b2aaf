"""Real digits and small real models for the training-loop tests."""

import pytest
import torch
import torch.nn as nn

from layerprune import make_loader


@pytest.fixture
def make_mlp():
    """``make_mlp(seed)``: a small MLP on 1×32×32 digits (trains in a fraction of a second)."""

    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))

    return make


@pytest.fixture
def train_loader(digits):
    """``train_loader(n)``: the first ``n`` augmented training digits, shuffled, batch 64."""

    def make(n: int = 256, batch_size: int = 64):
        subset = digits.train.subset(range(n), augment=digits.train.augment)  # a subset's augment is its own
        return make_loader(subset, batch_size, shuffle=True, seed=0)

    return make


@pytest.fixture
def val_loader(digits):
    return make_loader(digits.val, 256)


@pytest.fixture
def stop_after():
    """``stop_after(n)``: a ``log`` callback that interrupts a run once ``n`` epochs are done (and saved)."""

    def make(epochs: int):
        lines = []

        def log(line):
            lines.append(line)
            if len(lines) == epochs:
                raise KeyboardInterrupt

        return log

    return make

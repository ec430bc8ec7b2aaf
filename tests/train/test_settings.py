import math
import re

import pytest

from layerprune import LayerpruneError
from layerprune.train import TrainSettings


@pytest.mark.parametrize("field, value", [
    ("epochs", -1),
    ("epochs", 2.5),
    ("optimizer", "adam"),
    ("lr", 0.0),
    ("momentum", 1.0),
    ("weight_decay", -1e-4),
    ("schedule", "linear"),
    ("milestones", (0.5, 1.5)),
    ("milestones", 0.5),
    ("gamma", 0.0),
    ("warmup_epochs", 5),
    ("label_smoothing", 1.0),
    ("distill_alpha", 1.5),
    ("distill_temperature", 0.0),
])
def test_a_bad_value_is_refused_naming_its_field(field, value):
    with pytest.raises(LayerpruneError, match=f"^{field}: must be .*got {re.escape(repr(value))}"):
        TrainSettings(**{"epochs": 5, field: value})


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(LayerpruneError, match=r"^optimizer: .*; lr: .*; distill_alpha: "):
        TrainSettings(epochs=1, optimizer="adam", lr=-1.0, distill_alpha=2.0)


def test_zero_epochs_accept_any_warmup():
    assert TrainSettings(epochs=0, warmup_epochs=3).epochs == 0


def test_milestones_from_yaml_lists_become_a_tuple():
    assert TrainSettings(epochs=4, milestones=[0.25, 0.5]).milestones == (0.25, 0.5)


def test_constant_schedule_keeps_lr():
    s = TrainSettings(epochs=3, lr=0.1, schedule="constant")
    assert [s.lr_at(e) for e in range(3)] == [0.1, 0.1, 0.1]


def test_cosine_schedule_follows_half_cosine_over_epochs():
    s = TrainSettings(epochs=4, lr=0.1, schedule="cosine")
    expected = [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4))]
    assert [s.lr_at(e) for e in range(4)] == pytest.approx(expected, abs=1e-12)


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    s = TrainSettings(epochs=8, lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [s.lr_at(e) for e in range(8)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_warmup_rises_linearly_from_a_tenth_then_the_schedule_starts():
    s = TrainSettings(epochs=6, lr=0.1, schedule="cosine", warmup_epochs=2)
    expected = [0.01, 0.055] + [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert [s.lr_at(e) for e in range(6)] == pytest.approx(expected, abs=1e-12)

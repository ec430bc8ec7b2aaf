import json
import math
import re

import pytest
from pydantic import ValidationError

from layerprune import LayerpruneError
from layerprune.recipe import schema
from layerprune.train import TrainConfig, TrainSettings


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
    with pytest.raises(LayerpruneError, match=f"^{field}: [^;]+ \\(got {re.escape(repr(value))}\\)$"):
        TrainSettings(**{"epochs": 5, field: value})


@pytest.mark.parametrize("field", ["epochs", "lr", "warmup_epochs", "distill_alpha"])
def test_booleans_are_not_numbers(field):
    with pytest.raises(LayerpruneError, match=f"^{field}: must be a number, not true or false \\(got True\\)$"):
        TrainSettings(**{"epochs": 5, field: True})


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(LayerpruneError, match=r"^optimizer: [^;]+; lr: [^;]+; distill_alpha: [^;]+$"):
        TrainSettings(epochs=1, optimizer="adam", lr=-1.0, distill_alpha=2.0)


def test_checks_across_fields_are_reported_with_the_other_problems():
    with pytest.raises(LayerpruneError, match=r"^lr: [^;]+; warmup_epochs: must be < epochs \(3\) \(got 3\)$"):
        TrainSettings(epochs=3, lr=0.0, warmup_epochs=3)


def test_an_unknown_setting_is_refused():
    with pytest.raises(LayerpruneError, match=r"^warmpu_epochs: unknown setting \(got 1\)$"):
        TrainSettings(epochs=3, warmpu_epochs=1)


def test_zero_epochs_accept_any_warmup():
    assert TrainSettings(epochs=0, warmup_epochs=3).epochs == 0


def test_milestones_from_yaml_lists_become_a_tuple():
    assert TrainSettings(epochs=4, milestones=[0.25, 0.5]).milestones == (0.25, 0.5)


def test_settings_are_immutable_hashable_and_plain_as_a_dict():
    s = TrainSettings(epochs=4, lr=1)
    with pytest.raises(ValidationError):
        s.lr = 0.5  # type: ignore[misc]
    assert hash(s) == hash(TrainSettings(epochs=4, lr=1.0)) and s == TrainSettings(epochs=4, lr=1.0)
    d = s.to_dict()
    assert d["milestones"] == [0.5, 0.75] and d["lr"] == 1.0 and d["distill_alpha"] == 0.0
    assert json.loads(json.dumps(d)) == d


def test_the_recipe_schema_and_train_share_one_settings_model():
    assert schema.TrainSection is TrainConfig
    assert issubclass(TrainSettings, TrainConfig) and issubclass(schema.FinetuneSection, TrainConfig)
    assert set(TrainConfig.model_fields) <= set(TrainSettings.model_fields)
    assert set(TrainSettings.model_fields) - set(TrainConfig.model_fields) == {"distill_alpha", "distill_temperature"}
    assert set(schema.FinetuneSection.model_fields) - set(TrainConfig.model_fields) == {"distill", "lora"}
    recipe = schema.Recipe.model_validate({"model": {"name": "m"}, "data": {"dataset": "digits"},
                                           "pretrain": {"epochs": 3, "milestones": [0.5]}})
    assert isinstance(recipe.pretrain, TrainConfig) and recipe.pretrain.milestones == (0.5,)
    with pytest.raises(ValidationError):  # sections keep pydantic's errors for the recipe loader
        schema.Recipe.model_validate({"model": {"name": "m"}, "data": {"dataset": "digits"},
                                      "pretrain": {"epochs": 3, "epoch": 3}})


def test_settings_from_a_recipe_section_copy_its_values():
    section = schema.FinetuneSection(epochs=6, optimizer="adamw", lr=1e-3, schedule="step", milestones=[0.5],
                                     warmup_epochs=1, precision="bf16", distill={"enabled": True})
    s = TrainSettings.from_config(section)
    assert {k: getattr(s, k) for k in TrainConfig.model_fields} == {k: getattr(section, k) for k in TrainConfig.model_fields}
    assert (s.distill_alpha, s.distill_temperature) == (0.0, 4.0)
    s = TrainSettings.from_config(section, epochs=2, distill_alpha=0.5, distill_temperature=2.0)
    assert (s.epochs, s.lr, s.distill_alpha, s.distill_temperature) == (2, 1e-3, 0.5, 2.0)
    with pytest.raises(LayerpruneError, match=r"^warmup_epochs: must be < epochs \(1\)"):
        TrainSettings.from_config(section, epochs=1)


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

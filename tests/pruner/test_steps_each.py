"""Pruner(steps="each"): one block per step, re-scored on the model pruned so far, on a trained ResNet-20."""

import pytest
import yaml

from layerprune import Calibration, LayerpruneError, Pruner, Repair, register_criterion
from layerprune.criteria import Criterion, removed_share

CAL = Calibration(samples=64, batches=1)
REPAIR = Repair(batches=2, batch_size=64)


@pytest.fixture
def spy(fresh_catalog):
    """Registers ``spy``: scores each block from ``fixed`` (default: its parameters plus its index)
    and records which blocks are still real blocks in every model it scores."""
    seen, fixed = [], {}

    @register_criterion("spy")
    class Spy(Criterion):
        """Records the blocks of each model it scores (a test criterion)."""

        def score(self, ctx):
            seen.append(sorted(b.name for b in ctx.scorable))
            return {b.name: fixed.get(b.name, float(b.params) + i) for i, b in enumerate(ctx.scorable)}

    return seen, fixed


def test_count_removes_one_block_per_step_and_marks_the_last(spy, trained_resnet20, digits):
    result = Pruner("spy", rule="count", rule_params={"k": 3}, steps="each", calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert [len(s.removed) for s in result.steps] == [1, 1, 1]
    assert [s.last for s in result.steps] == [False, False, True]
    assert result.removed == [name for s in result.steps for name in s.removed]


def test_each_step_scores_the_model_pruned_so_far(spy, trained_resnet20, digits):
    seen, _ = spy
    result = Pruner("spy", rule="count", rule_params={"k": 3}, steps="each", calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert [set(step.scores) for step in result.steps] == [set(names) for names in seen]
    for step, before, after in zip(result.steps, seen, seen[1:]):
        assert set(before) - set(after) == set(step.removed)


@pytest.mark.parametrize("rule, params", [("count", {"k": 2}), ("budget", {"macs": 0.2})])
def test_count_and_budget_score_once_per_step(spy, trained_resnet20, digits, rule, params):
    # Once k blocks are gone (or the budget is met) no step follows: scoring again would be wasted.
    seen, _ = spy
    result = Pruner("spy", rule=rule, rule_params=params, steps="each", calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert len(result.steps) == 2 and len(seen) == 2


def test_budget_stops_once_the_removed_blocks_carry_the_share(spy, trained_resnet20, digits):
    pruner = Pruner("spy", rule="budget", rule_params={"macs": 0.2}, steps="each", calibration=CAL, repair=REPAIR)
    blocks = pruner.context(trained_resnet20, digits).blocks  # the unpruned model's
    result = pruner.prune(trained_resnet20, digits)
    assert all(len(s.removed) == 1 for s in result.steps)
    assert removed_share(blocks, result.removed)[1] >= 0.2
    assert removed_share(blocks, result.removed[:-1])[1] < 0.2
    assert [s.last for s in result.steps][-1] is True and not any(s.last for s in result.steps[:-1])


def test_threshold_stops_when_no_block_is_below_it(spy, trained_resnet20, digits):
    _, fixed = spy
    fixed.update({"layer1.1": 0.1, "layer2.2": 0.2})  # every other block scores far above 0.5
    result = Pruner("spy", rule="threshold", rule_params={"threshold": 0.5}, steps="each", calibration=CAL,
                    repair=REPAIR).prune(trained_resnet20, digits)
    assert [s.removed for s in result.steps] == [["layer1.1"], ["layer2.2"]]
    assert [s.last for s in result.steps] == [False, True]


@pytest.mark.parametrize("steps", ["every", 0, -1, True, 1.5])
def test_bad_steps_are_refused_naming_steps(steps):
    with pytest.raises(LayerpruneError, match="steps"):
        Pruner("tail", steps=steps)


def test_a_recipe_may_ask_for_one_block_per_step(tmp_path):
    from layerprune.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "cifar_resnet20"}, "data": {"dataset": "digits"},
                                    "pretrain": {"epochs": 1}, "prune": {"steps": "each"}}))
    assert load_recipe(path).prune.steps == "each"

"""layerprune.Pruner: score → plan → remove → repair, one shot or in steps, on a trained ResNet-20."""

import copy

import pytest
import torch

import layerprune
from layerprune import Calibration, LayerpruneError, Pruner, Repair, register_criterion
from layerprune.criteria import Criterion, ScoringContext
from layerprune.criteria import catalog
from layerprune.evaluation import evaluate

CAL = Calibration(samples=64, batches=1)
REPAIR = Repair(batches=2, batch_size=64)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def flags(model):
    return {name: m.training for name, m in model.named_modules()}


def test_prune_leaves_the_input_model_untouched(trained_resnet20, digits):
    trained_resnet20.train()
    trained_resnet20.layer2.eval()  # a mixed train/eval state must survive too
    before_state, before_flags = state(trained_resnet20), flags(trained_resnet20)
    result = Pruner("magnitude", rule="count", rule_params={"k": 2}, calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert len(result.removed) == 2
    assert flags(trained_resnet20) == before_flags
    after = trained_resnet20.state_dict()
    assert all(torch.equal(before_state[k], after[k]) for k in before_state)
    assert result.model is not trained_resnet20
    assert all(isinstance(result.model.get_submodule(n), torch.nn.Identity) for n in result.removed)


def test_one_step_removes_what_the_rule_selects_from_the_criterions_scores(trained_resnet20, digits):
    pruner = Pruner("cka", rule="count", rule_params={"k": 3}, calibration=CAL, repair=REPAIR)
    ctx = ScoringContext(trained_resnet20, digits, calibration=CAL)
    scores = layerprune.get_criterion("cka")(ctx).scores
    expected = layerprune.select_blocks(scores, ctx.blocks, rule="count", k=3)
    result = pruner.prune(trained_resnet20, digits)
    assert sorted(result.removed) == sorted(expected)
    assert result.scores == pytest.approx(scores)
    assert [s.step for s in result.steps] == [1] and result.steps[0].removed == result.removed
    # removal order: least important first
    assert [result.scores[n] for n in result.removed] == sorted(result.scores[n] for n in result.removed)


def test_with_two_steps_the_second_is_scored_on_the_model_pruned_by_the_first(fresh_catalog, trained_resnet20,
                                                                                digits):
    seen = []

    @register_criterion("spy")
    class Spy(Criterion):
        """Records which blocks are still real blocks in the model it scores (a test criterion)."""

        def score(self, ctx):
            seen.append(sorted(b.name for b in ctx.scorable))
            return {b.name: float(b.params) + i for i, b in enumerate(ctx.scorable)}

    result = Pruner("spy", rule="count", rule_params={"k": 4}, steps=2, calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert len(seen) == 2 and len(result.steps) == 2
    first, second = result.steps
    assert len(first.removed) == 2 and len(second.removed) == 2
    assert set(seen[0]) - set(seen[1]) == set(first.removed)  # step 2 scored the pruned model
    assert not set(second.removed) & set(first.removed)
    assert result.removed == first.removed + second.removed  # removal order across steps
    assert set(result.scores) == set(seen[1])  # the last step's scores


def test_threshold_rule_in_steps_takes_a_share_of_the_blocks_below_it(trained_resnet20, digits):
    result = Pruner("tail", rule="threshold", rule_params={"threshold": 0.5}, steps=2, calibration=CAL,
                    repair=REPAIR).prune(trained_resnet20, digits)
    # tail scores each stage's blocks 2/3, 1/3, 0: two per stage are below 0.5, six in all
    assert [len(s.removed) for s in result.steps] == [3, 3]


def test_each_step_records_accuracy_after_surgery_and_after_repair(trained_resnet20, digits):
    result = Pruner("tail", rule="count", rule_params={"k": 3}, calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    step = result.steps[0]
    assert step.after_surgery.samples == 64 and step.after_repair.samples == 64
    assert step.after_repair.loss < step.after_surgery.loss  # repair fixes the stale statistics
    off = Pruner("tail", rule="count", rule_params={"k": 3}, calibration=CAL,
                 repair=Repair(enabled=False)).prune(trained_resnet20, digits)
    assert off.steps[0].after_repair is None
    assert off.steps[0].after_surgery.accuracy == pytest.approx(step.after_surgery.accuracy)


def test_the_pruned_model_is_repaired_with_the_batches_the_oracle_repairs_candidates_with(trained_resnet20, digits):
    pruner = Pruner("ablation", rule="count", rule_params={"k": 1}, calibration=CAL, repair=REPAIR)
    ctx = pruner.context(trained_resnet20, digits)
    candidate_batches = ctx.repair_data()
    pipeline_batches = pruner.repair_batches(digits)
    assert len(candidate_batches) == len(pipeline_batches) == 2
    for (xa, ya), (xb, yb) in zip(candidate_batches, pipeline_batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and so the oracle's prediction for the block it removes is what the pipeline then measures
    result = pruner.prune(trained_resnet20, digits)
    (block,) = result.removed
    predicted = result.steps[0].result.diagnostics["loss_increase"][block]
    base = pruner.repair_model(copy.deepcopy(trained_resnet20), digits)
    measured = result.steps[0].after_repair.loss - evaluate(base, ctx.micro_batches()).loss
    assert measured == pytest.approx(predicted, rel=1e-4, abs=1e-5)


def test_a_criterion_instance_and_its_default_rule(trained_resnet20, digits):
    pruner = Pruner(layerprune.get_criterion("modularity", threshold=0.5), calibration=CAL, repair=REPAIR)
    assert pruner.rule == {"rule": "threshold", "threshold": 0.5}
    assert Pruner("tail").rule == {"rule": "count", "fraction": 0.5}


@pytest.mark.parametrize("kwargs, match", [
    ({"criterion": "modularty"}, "did you mean"),
    ({"criterion": "modularity", "rule": "budget", "rule_params": {"macs": 2.0}}, "macs"),
    ({"criterion": "modularity", "rule": "count"}, "k"),
    ({"criterion": "modularity", "steps": 0}, "steps"),
    ({"criterion": "modularity", "criterion_params": {"kk": 1}}, "kk"),
])
def test_bad_requests_fail_before_any_work_naming_the_key(kwargs, match):
    with pytest.raises(LayerpruneError, match=match):
        Pruner(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: Calibration(split="holdout"), "calibration.split"),
    (lambda: Calibration(samples=0), "calibration.samples"),
    (lambda: Repair(batches=0), "repair.batches"),
    (lambda: Repair(batch_size=-1), "repair.batch_size"),
])
def test_bad_calibration_and_repair_values_name_their_field(make, match):
    with pytest.raises(LayerpruneError, match=match):
        make()


def test_the_recipe_schema_cli_and_context_take_their_defaults_from_calibration_and_repair():
    import inspect

    from layerprune.cli import score_cmd
    from layerprune.recipe.schema import CalibrationSection, PruneSection

    cal, rep = Calibration(), Repair()
    section = CalibrationSection()
    assert (section.split, section.samples, section.batches) == (cal.split, cal.samples, cal.batches)
    prune = PruneSection()
    assert (prune.repair, prune.repair_batches, prune.repair_batch_size) == (rep.enabled, rep.batches, rep.batch_size)
    options = inspect.signature(score_cmd).parameters
    assert (options["samples"].default.default, options["batches"].default.default,
            options["split"].default.default) == (cal.samples, cal.batches, cal.split)
    curve = inspect.signature(layerprune.modularity_curve).parameters
    assert (curve["samples"].default, curve["batches"].default) == (cal.samples, cal.batches)


def test_a_plugin_criterion_runs_through_the_pipeline(fresh_catalog, trained_resnet20, digits):
    assert "spy" not in catalog.CRITERIA
    register_criterion("last_first", lambda ctx: {b.name: -i for i, b in enumerate(ctx.scorable)})
    result = Pruner("last_first", rule="count", rule_params={"k": 1}, calibration=CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    assert result.removed == ["layer3.2"]


def test_remove_alone_finds_blocks_on_a_calibration_sample(trained_resnet20, digits):
    pruner = Pruner("tail", calibration=CAL, repair=REPAIR)
    pruned, step = pruner.remove(trained_resnet20, ["layer1.2", "layer3.2"], digits)
    assert step.removed == ["layer1.2", "layer3.2"] and step.after_repair is not None
    assert isinstance(pruned.layer1[2], torch.nn.Identity) and not isinstance(trained_resnet20.layer1[2],
                                                                                 torch.nn.Identity)


def test_a_prune_draws_its_data_once(trained_resnet20, digits, monkeypatch):
    """Two steps of score → remove → repair with an oracle that repairs every candidate: the
    calibration samples are drawn and loaded once, the repair batches once, and every scoring,
    measurement and repair of the prune uses those same tensors."""
    from layerprune import calibration

    drawn = {"indices": 0, "repair": 0, "loaded": 0}
    indices, batches_for, load = (calibration.Calibration.indices, calibration.Repair.batches_for,
                                  calibration.load_samples)

    def count(key, fn):
        def counted(*args, **kwargs):
            drawn[key] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(calibration.Calibration, "indices", count("indices", indices))
    monkeypatch.setattr(calibration.Repair, "batches_for", count("repair", batches_for))
    monkeypatch.setattr(calibration, "load_samples", count("loaded", load))
    pruner = Pruner("ablation", rule="count", rule_params={"k": 2}, steps=2,
                    calibration=Calibration(samples=32, batches=2), repair=REPAIR)
    result = pruner.prune(trained_resnet20, digits)
    assert len(result.removed) == 2 and all(s.after_repair is not None for s in result.steps)
    assert drawn["indices"] == 1 and drawn["repair"] == 1
    assert drawn["loaded"] == 2 + REPAIR.batches  # each calibration batch, then each repair batch, once
    pack = pruner.pack(digits)
    ctx = pruner.context(result.model, digits)
    assert ctx.batch(0) is pack.calibration[0] and ctx.repair_data() is pack.repair

"""Each baseline's defining behaviour, on a ResNet-20 trained briefly on real digits."""

import copy

import pytest
import torch

from layerprune import get_criterion, score_blocks
from layerprune.criteria import ScoringContext
from layerprune.criteria.representation import linear_cka, probe_accuracy
from layerprune.errors import LayerpruneError
from layerprune.surgery import swap_blocks
from layerprune.train import evaluate

ZEROED = "layer2.1"
SMALL = dict(samples=96, batches=2)


def lowest(result):
    return result.ranked()[0][0]


@pytest.fixture
def zeroed_model(trained_resnet20, zero_residual_branch):
    return zero_residual_branch(trained_resnet20, ZEROED)


@pytest.mark.parametrize("name", ["ablation", "block_influence", "cka"])
def test_a_block_with_a_zeroed_branch_is_least_important(zeroed_model, digits, name):
    result = get_criterion(name)(ScoringContext(zeroed_model, digits, **SMALL))
    assert lowest(result) == ZEROED
    assert result.scores[ZEROED] == pytest.approx(0.0, abs=1e-6)


def test_taylor_estimates_zero_change_for_an_identity_block(zeroed_model, digits):
    ctx = ScoringContext(zeroed_model, digits, **SMALL)
    assert get_criterion("taylor")(ctx).scores[ZEROED] == pytest.approx(0.0, abs=1e-9)
    assert lowest(get_criterion("taylor", absolute=True)(ctx)) == ZEROED


def test_taylor_matches_the_real_loss_change_for_a_small_branch(trained_resnet20, digits):
    # Shrink one block's branch so its removal is a small step: first order is then accurate.
    with torch.no_grad():
        bn = trained_resnet20.layer3[1].bn2
        bn.weight.mul_(0.02)
        bn.bias.mul_(0.02)
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    estimate = get_criterion("taylor")(ctx).scores["layer3.1"]
    removed = swap_blocks(copy.deepcopy(trained_resnet20), {"layer3.1": ()})
    actual = ctx.evaluate(removed).loss - ctx.evaluate().loss
    assert abs(actual) > 1e-4
    assert estimate == pytest.approx(actual, rel=0.2)


def test_ablation_measures_the_loss_of_the_model_without_the_block(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    result = get_criterion("ablation", repair=False)(ctx)
    removed = swap_blocks(copy.deepcopy(trained_resnet20), {"layer1.1": ()})
    expected = evaluate(removed, ctx.micro_batches()).loss - ctx.evaluate().loss
    assert result.scores["layer1.1"] == pytest.approx(expected, rel=1e-6)
    assert "layer2.0" in result.scores  # downsampling blocks are scored as collapsed to their shortcut
    assert set(result.diagnostics) >= {"loss_increase", "accuracy_drop", "base"}


def test_batchnorm_repair_changes_what_ablation_measures(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    raw = get_criterion("ablation", repair=False)(ctx).scores
    repaired = get_criterion("ablation", repair=True)(ctx).scores
    # Repair re-estimates statistics that a removal shifted, so measured damage shrinks overall.
    assert sum(repaired.values()) < sum(raw.values())
    assert evaluate(trained_resnet20, ctx.micro_batches()).loss == pytest.approx(ctx.evaluate().loss)  # untouched


def test_sr_init_score_does_not_depend_on_the_blocks_current_weights(trained_resnet20, digits):
    # SR-init replaces the block's weights: what they were cannot change the re-initialised model's
    # accuracy (the drop is measured against the model as it is, so compare base − drop).
    def reinit_accuracy(model):
        result = get_criterion("sr_init", seed=3, repair=False)(ScoringContext(model, digits, **SMALL))
        return result.diagnostics["base"]["accuracy"] - result.scores["layer1.1"]

    before = reinit_accuracy(trained_resnet20)
    with torch.no_grad():
        for p in trained_resnet20.layer1[1].parameters():
            p.normal_(0, 5.0)
    assert reinit_accuracy(trained_resnet20) == pytest.approx(before)


def test_sr_init_reinitialised_model_is_independent_of_old_weights(trained_resnet20, digits):
    from layerprune.criteria.oracle import reinitialise

    a = copy.deepcopy(trained_resnet20)
    b = copy.deepcopy(trained_resnet20)
    with torch.no_grad():
        for p in b.layer1[1].parameters():
            p.normal_(0, 5.0)
    reinitialise(a.layer1[1], seed=7)
    reinitialise(b.layer1[1], seed=7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_magnitude_ranks_a_zero_weight_block_lowest_and_scales_with_weights(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    before = get_criterion("magnitude", p=2)(ctx).scores
    with torch.no_grad():
        for m in trained_resnet20.layer1[2].modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(2.0)
        trained_resnet20.layer3[0].conv1.weight.zero_()
        trained_resnet20.layer3[0].conv2.weight.zero_()
    after = get_criterion("magnitude", p=2)(ctx)
    assert after.scores["layer1.2"] == pytest.approx(2 * before["layer1.2"])
    assert lowest(after) == "layer3.0"
    with pytest.raises(LayerpruneError, match="p"):
        get_criterion("magnitude", p=3)


def test_tail_removes_the_last_block_of_each_stage_first(trained_resnet20, digits):
    result = get_criterion("tail")(ScoringContext(trained_resnet20, digits, samples=16, batches=1))
    assert {name for name, _ in result.ranked()[:3]} == {"layer1.2", "layer2.2", "layer3.2"}
    assert result.scores["layer1.0"] > result.scores["layer1.1"] > result.scores["layer1.2"]


def test_random_is_seeded(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    a, b, c = (get_criterion("random", seed=s)(ctx).scores for s in (1, 1, 2))
    assert a == b and a != c and len(a) == 9


def test_block_influence_is_one_minus_mean_cosine(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=64, batches=1)
    x, _ = ctx.batch(0)
    io = {}
    handle = trained_resnet20.layer1[1].register_forward_hook(lambda m, a, out: io.update(x=a[0].clone(), y=out.clone()))
    with torch.no_grad():
        trained_resnet20(x)
    handle.remove()
    cos = torch.nn.functional.cosine_similarity(io["x"].flatten(1), io["y"].flatten(1), dim=1)
    score = get_criterion("block_influence")(ctx).scores["layer1.1"]
    assert score == pytest.approx(1 - float(cos.mean()), abs=1e-5)
    assert "layer2.0" not in get_criterion("block_influence")(ctx).scores  # shape changes: not scored


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 20, generator=g)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)  # invariant to rotation and scale
    assert linear_cka(x, torch.randn(100, 50, generator=g)) < 0.5  # different widths compare


def test_probe_accuracy_separable_vs_random_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(50)
    separable = torch.nn.functional.one_hot(labels, 4).float() * 5 + 0.1 * torch.randn(200, 4, generator=g)
    assert probe_accuracy(separable, labels) == 1.0
    noise = torch.randn(200, 8, generator=g)
    assert probe_accuracy(noise, labels) < 0.45


def test_linear_probe_gains_sum_to_the_end_to_end_gain(trained_resnet20, digits):
    result = get_criterion("linear_probe")(ScoringContext(trained_resnet20, digits, **SMALL))
    acc = result.diagnostics["probe_accuracy"]
    assert sum(result.scores.values()) == pytest.approx(acc["layer3.2"] - acc["stem"])
    assert acc["layer3.2"] > 0.5


def test_criteria_scored_together_share_one_feature_pass(trained_resnet20, digits):
    names = ["modularity", "cka", "block_influence", "linear_probe"]
    together = score_blocks(trained_resnet20, digits, names, **SMALL)
    alone = get_criterion("cka")(ScoringContext(trained_resnet20, digits, **SMALL))
    assert list(together) == names
    assert together["cka"].scores == pytest.approx(alone.scores)


def test_a_criterion_naming_a_foreign_block_is_refused(trained_resnet20, digits):
    from layerprune.criteria.base import Criterion

    class Broken(Criterion):
        def score(self, ctx):
            return {"layer9.9": 1.0}

    with pytest.raises(LayerpruneError, match="layer9.9"):
        Broken()(ScoringContext(trained_resnet20, digits, samples=16, batches=1))

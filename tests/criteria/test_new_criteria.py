"""angular, consensus, cka_removal and greedy, the run rule and runs in the feature stream, on a
ResNet-20 trained briefly on real digits."""

import copy
import json
import math
from collections import OrderedDict

import pytest
import torch
from typer.testing import CliRunner

from layerprune import Calibration, Pruner, Repair, create_model, get_criterion, select_blocks
from layerprune.cli import app
from layerprune.criteria import ScoringContext, declared_stats
from layerprune.criteria import oracle
from layerprune.criteria.consensus import normalised_ranks
from layerprune.criteria.oracle import fingerprint, head_input
from layerprune.errors import LayerpruneError
from layerprune.surgery import swap_blocks

SMALL = dict(samples=64, batches=2)
CAL = Calibration(samples=64, batches=2)
GREEDY_CAL = Calibration(samples=64, batches=1)  # greedy evaluates ~B²/2 repaired copies: one batch
REPAIR = Repair(batches=2, batch_size=64)
STAGE_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer3.1",
                "layer3.2"]
# Everything outside layer1 that can go without collapsing: protected, greedy has three candidates.
ONLY_LAYER1 = ["layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def lowest(result):
    return result.ranked()[0][0]


def stage_of(name):
    return name.split(".")[0]


@pytest.fixture(scope="module")
def resnet20_blocks(digits):
    """The blocks of an untrained ResNet-20 on digits (for rules on given scores)."""
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    return ScoringContext(model, digits, samples=8, batches=1).blocks


def hooked(model, x, before=(), after=()):
    """The inputs of the modules ``before`` and the outputs of the modules ``after`` for ``x``."""
    seen, handles = {}, []
    for name in before:
        handles.append(model.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(("in", name), args[0].detach().clone())))
    for name in after:
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(("out", name), out.detach().clone())))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


# -- angular --------------------------------------------------------------------------------------
def test_angular_removes_the_run_of_two_identity_blocks(trained_resnet20, digits, zero_residual_branch):
    for name in ("layer3.1", "layer3.2"):
        zero_residual_branch(trained_resnet20, name)
    result = Pruner("angular", criterion_params={"n": 2}, calibration=CAL, repair=REPAIR).prune(trained_resnet20,
                                                                                                 digits)
    assert sorted(result.removed) == ["layer3.1", "layer3.2"]
    assert result.steps[0].result.diagnostics["runs"]["scores"]["layer3.1"] == pytest.approx(0.0, abs=1e-6)


def test_angular_with_n_1_removes_the_one_identity_block(trained_resnet20, digits, zero_residual_branch):
    zero_residual_branch(trained_resnet20, "layer2.1")
    result = Pruner("angular", criterion_params={"n": 1}, calibration=CAL, repair=REPAIR).prune(trained_resnet20,
                                                                                                 digits)
    assert result.scores["layer2.1"] == pytest.approx(0.0, abs=1e-6)
    assert min(result.scores, key=result.scores.get) == "layer2.1"
    assert result.removed == ["layer2.1"]


def test_angular_run_score_is_the_angle_between_the_runs_input_and_output(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    result = get_criterion("angular", n=2)(ctx)
    angles = []
    for x, _ in ctx.batches():
        seen = hooked(trained_resnet20, x, before=["layer2.1"], after=["layer2.2"])
        a, b = seen[("in", "layer2.1")].flatten(1).double(), seen[("out", "layer2.2")].flatten(1).double()
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        angles.append(float(torch.arccos(cos.clamp(-1, 1)).mean()) / math.pi)
    assert result.diagnostics["runs"]["scores"]["layer2.1"] == pytest.approx(sum(angles) / len(angles), abs=1e-6)
    assert result.diagnostics["runs"]["blocks"]["layer2.1"] == ["layer2.1", "layer2.2"]


def test_angular_runs_stay_in_a_stage_and_skip_shape_changes(trained_resnet20, digits):
    result = get_criterion("angular", n=2)(ScoringContext(trained_resnet20, digits, **SMALL))
    runs = result.diagnostics["runs"]
    assert runs["n"] == 2
    for run in runs["blocks"].values():
        assert len({stage_of(b) for b in run}) == 1
    # A downsampling block changes the shape: neither it nor a run starting with it is scored.
    assert set(runs["scores"]) == {"layer1.0", "layer1.1", "layer2.1", "layer3.1"}
    assert "layer2.0" not in result.scores and "layer3.0" not in result.scores


@pytest.mark.parametrize("n", [0, True, "2", 1.5])
def test_angular_refuses_a_bad_n(n):
    with pytest.raises(LayerpruneError, match="n: .*integer"):
        get_criterion("angular", n=n)


# -- runs in the context and the stream ---------------------------------------------------------------
def test_runs_are_consecutive_blocks_of_one_stage(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    order = [b.name for b in ctx.blocks]
    runs = ctx.runs(2)
    assert runs  # ResNet-20 has six
    for first, run in runs.items():
        assert run[0] == first and len(run) == 2 and stage_of(run[0]) == stage_of(run[1])
        assert order.index(run[1]) == order.index(run[0]) + 1
    assert set(ctx.runs(1)) == {b.name for b in ctx.scorable} and all(len(r) == 1 for r in ctx.runs(1).values())
    assert set(ctx.runs(3)) == {"layer1.0", "layer2.0", "layer3.0"}  # one per stage of three
    assert ctx.runs(4) == {}


def test_run_probes_are_before_the_first_block_and_after_the_last(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    for first, (before, after) in ctx.run_probes(2).items():
        run = ctx.runs(2)[first]
        assert before == ctx.block_probes[run[0]][0] and after == ctx.block_probes[run[-1]][1]


@pytest.mark.parametrize("n", [0, -1, True, "2"])
def test_runs_refuse_a_bad_n(trained_resnet20, digits, n):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    with pytest.raises(LayerpruneError, match="n: must be an integer"):
        ctx.runs(n)


def test_runs_are_read_in_the_pass_that_reads_block_statistics(trained_resnet20, digits):
    alone = ScoringContext(trained_resnet20, digits, **SMALL)
    alone.feature_stats(block=get_criterion("cka").block_stats())
    built = [get_criterion(n) for n in ("angular", "cka", "block_influence")]
    together = ScoringContext(trained_resnet20, digits, **SMALL)
    together.feature_stats(*declared_stats(built))
    assert len(together.stream.passes) == len(alone.stream.passes) == together.num_batches
    for criterion in built:  # everything they need is cached: scoring reads no more features
        criterion(together)
    assert len(together.stream.passes) == together.num_batches


def test_one_feature_stats_call_reads_blocks_and_runs_in_one_pass(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    angular = get_criterion("angular", n=2)
    _, stats = ctx.feature_stats(block=angular.block_stats(), runs=angular.run_stats())
    assert len(ctx.stream.passes) == ctx.num_batches
    assert set(stats["angular(n=2)"]) == set(ctx.runs(2))
    assert all(len(v) == ctx.num_batches for v in stats["angular(n=2)"].values())


def test_a_small_memory_budget_gives_the_same_run_statistics(trained_resnet20, digits):
    default = get_criterion("angular", n=2)(ScoringContext(trained_resnet20, digits, **SMALL))
    # One stage-1 probe at 64 samples is 4 MiB: 12 MiB forces several groups, and a run
    # (its two probes two blocks apart) does not always share a group with its blocks.
    small = ScoringContext(trained_resnet20, digits, memory_budget=12 << 20, **SMALL)
    result = get_criterion("angular", n=2)(small)
    assert len(small.stream.passes) > small.num_batches  # several groups per batch
    assert result.diagnostics["runs"]["scores"] == pytest.approx(default.diagnostics["runs"]["scores"], abs=1e-7)
    assert result.scores == pytest.approx(default.scores, abs=1e-7)


def test_stream_groups_put_both_probes_of_a_span_in_one_group(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, memory_budget=12 << 20, **SMALL)
    spans = list(ctx.run_probes(2).values())
    groups = ctx.stream.groups(64, spans=spans)
    assert len(groups) > 1
    for span in spans:
        (group,) = [g for g in groups if span in g.spans]
        assert {p.name for p in group.probes} >= set(span)


# -- the run rule ----------------------------------------------------------------------------------
@pytest.fixture
def run_scores():
    # layer1.0 alone scores lowest, but layer2.1 + layer2.2 is the run of two with the smallest sum.
    scores = {name: 1.0 for name in STAGE_BLOCKS}
    scores.update({"layer1.0": 0.0, "layer1.1": 0.9, "layer2.1": 0.3, "layer2.2": 0.3})
    return scores


def test_run_rule_without_run_scores_takes_the_run_with_the_smallest_sum(resnet20_blocks, run_scores):
    assert select_blocks(run_scores, resnet20_blocks, rule="run", n=2) == ["layer2.1", "layer2.2"]


def test_run_rule_reads_the_criterions_run_scores(resnet20_blocks, run_scores):
    runs = {"n": 2, "scores": {"layer1.0": 0.5, "layer2.1": 0.4, "layer3.1": 0.1}}
    assert select_blocks(run_scores, resnet20_blocks, rule="run", n=2, runs=runs) == ["layer3.1", "layer3.2"]


def test_run_rule_refuses_run_scores_of_another_length(resnet20_blocks, run_scores):
    runs = {"n": 3, "scores": {"layer1.0": 0.1}}
    with pytest.raises(LayerpruneError, match="n: the criterion scored runs of 3 blocks, not 2"):
        select_blocks(run_scores, resnet20_blocks, rule="run", n=2, runs=runs)


def test_run_rule_never_empties_a_stage(resnet20_blocks):
    scores = {name: 1.0 for name in STAGE_BLOCKS}
    scores.update({"layer1.0": -5.0, "layer1.1": -5.0, "layer1.2": -5.0})  # all of layer1: the cheapest run
    removed = select_blocks(scores, resnet20_blocks, rule="run", n=3, collapse=True)
    assert len(removed) == 3 and not any(stage_of(b) == "layer1" for b in removed)


def test_run_rule_protected_blocks_break_runs(resnet20_blocks, run_scores):
    removed = select_blocks(run_scores, resnet20_blocks, rule="run", n=2, protect=["layer2.2"])
    assert "layer2.2" not in removed and removed == ["layer1.0", "layer1.1"]


def test_run_rule_without_any_possible_run_is_an_error(resnet20_blocks, run_scores):
    # Without collapse the only stage of three removable blocks is layer1, which must keep one.
    with pytest.raises(LayerpruneError, match="no run of 3"):
        select_blocks(run_scores, resnet20_blocks, rule="run", n=3)


def test_the_run_rule_removes_one_run_at_once_so_steps_are_refused():
    with pytest.raises(LayerpruneError, match="steps"):
        Pruner("angular", steps=2)


# -- consensus --------------------------------------------------------------------------------------
def test_consensus_of_one_member_orders_blocks_as_that_member(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    cka = get_criterion("cka")(ctx)
    consensus = get_criterion("consensus", criteria=["cka"])(ctx)
    assert [name for name, _ in consensus.ranked()] == [name for name, _ in cka.ranked()]


def test_consensus_is_the_mean_of_its_members_normalised_ranks(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    ranks = [normalised_ranks(get_criterion(name)(ctx).scores) for name in ("cka", "block_influence")]
    result = get_criterion("consensus", criteria=["cka", "block_influence"])(ctx)
    expected = {b: sum(r[b] for r in ranks if b in r) / sum(b in r for r in ranks) for b in ranks[0]}
    assert result.scores == pytest.approx(expected)
    assert "layer2.0" in result.scores  # scored by cka alone: not dropped for block_influence's gap


def test_normalised_ranks_share_ranks_between_ties():
    ranks = normalised_ranks({"a": 0.2, "b": 0.2, "c": 0.1, "d": 0.5})
    assert ranks["a"] == ranks["b"] == pytest.approx((1 + 2) / 2 / 3)
    assert ranks["c"] == 0.0 and ranks["d"] == 1.0


@pytest.mark.parametrize("criteria, match", [
    ([], "non-empty list"),
    ("cka", "criteria: .*str"),
    (["ckaa"], "did you mean"),
    (["cka", "cka"], "listed twice"),
    (["cka", {"cka": {}}], "listed twice"),
    ([{"cka": 1}], "criteria: "),
])
def test_consensus_refuses_bad_member_lists(criteria, match):
    with pytest.raises(LayerpruneError, match=match):
        get_criterion("consensus", criteria=criteria)


def test_consensus_members_get_their_parameters(trained_resnet20, digits):
    consensus = get_criterion("consensus", criteria=["cka", {"linear_probe": {"ridge": 0.01}}])
    assert consensus.members[1].ridge == 0.01
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    result = consensus(ctx)
    assert result.diagnostics["members"]["linear_probe"] == pytest.approx(
        get_criterion("linear_probe", ridge=0.01)(ctx).scores)


def test_consensus_default_members_read_features_in_one_pass(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    result = get_criterion("consensus")(ctx)
    assert len(result.diagnostics["members"]) == 3
    assert len(ctx.stream.passes) == ctx.num_batches


# -- cka_removal --------------------------------------------------------------------------------------
def test_cka_removal_scores_an_identity_block_zero_and_lowest(trained_resnet20, digits, zero_residual_branch):
    zero_residual_branch(trained_resnet20, "layer2.1")
    result = get_criterion("cka_removal")(ScoringContext(trained_resnet20, digits, **SMALL))
    assert result.scores["layer2.1"] == pytest.approx(0.0, abs=1e-6)
    assert lowest(result) == "layer2.1"


def test_head_input_names_the_classifier(trained_resnet20):
    name = head_input(trained_resnet20)
    assert trained_resnet20.get_submodule(name) is trained_resnet20.get_classifier()


def test_cka_removal_compares_the_classifiers_input_with_and_without_the_block(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, **SMALL)
    result = get_criterion("cka_removal")(ctx)
    removed = swap_blocks(copy.deepcopy(trained_resnet20), {"layer3.2": ()})

    def cka(x, y):  # linear CKA in feature space (the library works with Gram matrices)
        x, y = x - x.mean(0), y - y.mean(0)
        return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))

    values = []
    for x, _ in ctx.batches():
        a = hooked(trained_resnet20, x, before=["linear"])[("in", "linear")].flatten(1).double()
        b = hooked(removed, x, before=["linear"])[("in", "linear")].flatten(1).double()
        values.append(1.0 - cka(a, b))
    assert values[0] > 1e-4  # removing that block does move the features
    assert result.scores["layer3.2"] == pytest.approx(sum(values) / len(values), abs=1e-6)


# -- greedy -----------------------------------------------------------------------------------------
def greedy_context(model, data, **pruner):
    return Pruner("greedy", calibration=GREEDY_CAL, repair=REPAIR, **pruner).context(model, data)


def count_evaluations(ctx):
    """Wrap this context's ``evaluate`` so that its calls are counted."""
    calls = []
    evaluate = ctx.evaluate

    def counted(model=None, until=None):
        calls.append(model)
        return evaluate(model, until)

    ctx.evaluate = counted
    return calls


def test_greedy_first_removes_the_block_ablation_ranks_lowest(trained_resnet20, digits):
    ctx = greedy_context(trained_resnet20, digits)
    order = get_criterion("greedy")(ctx).diagnostics["order"]
    ablation = get_criterion("ablation")(ctx)  # the same repair batches: Repair(batches=2) < repair_batches=5
    allowed = {n: s for n, s in ablation.scores.items() if n not in ("layer2.0", "layer3.0")}  # no collapse
    assert ablation.scores[order[0]] == min(allowed.values())


def test_greedy_order_never_removes_the_last_block_of_a_stage(trained_resnet20, digits):
    order = get_criterion("greedy")(greedy_context(trained_resnet20, digits, protect=ONLY_LAYER1)).diagnostics[
        "order"]
    assert len(order) == 2 and set(order) < {"layer1.0", "layer1.1", "layer1.2"}


def test_greedy_order_honours_protect_and_collapse(trained_resnet20, digits):
    protect = ["layer1.0", "layer1.1", "layer1.2", "layer2.2", "layer3.0", "layer3.1", "layer3.2"]
    plain = get_criterion("greedy")(greedy_context(trained_resnet20, digits, protect=protect))
    collapsed = get_criterion("greedy")(greedy_context(trained_resnet20, digits, protect=protect, collapse=True))
    assert plain.diagnostics["order"] == ["layer2.1"]  # layer2.0 changes the shape: only collapsed
    assert sorted(collapsed.diagnostics["order"]) == ["layer2.0", "layer2.1"]


def test_count_rule_cuts_the_greedy_order(trained_resnet20, digits):
    result = Pruner("greedy", rule="count", rule_params={"k": 3}, calibration=GREEDY_CAL, repair=REPAIR).prune(
        trained_resnet20, digits)
    order = result.steps[0].result.diagnostics["order"]
    assert len(order) > 3
    assert sorted(result.removed) == sorted(order[:3])


def test_greedy_reuses_its_order_for_the_same_model_and_context(trained_resnet20, digits, monkeypatch):
    monkeypatch.setattr(oracle, "_GREEDY_CACHE", OrderedDict())
    ctx = greedy_context(trained_resnet20, digits, protect=ONLY_LAYER1)
    calls = count_evaluations(ctx)
    first = get_criterion("greedy")(ctx)
    assert calls
    calls.clear()
    again = get_criterion("greedy")(ctx)
    assert calls == [] and again.diagnostics["order"] == first.diagnostics["order"]


def test_a_model_with_other_weights_is_ordered_afresh(trained_resnet20, digits, monkeypatch):
    monkeypatch.setattr(oracle, "_GREEDY_CACHE", OrderedDict())
    get_criterion("greedy")(greedy_context(trained_resnet20, digits, protect=ONLY_LAYER1))
    changed = copy.deepcopy(trained_resnet20)
    assert fingerprint(changed) == fingerprint(trained_resnet20)
    with torch.no_grad():
        changed.layer1[0].conv1.weight.mul_(1.01)
    assert fingerprint(changed) != fingerprint(trained_resnet20)
    ctx = greedy_context(changed, digits, protect=ONLY_LAYER1)
    calls = count_evaluations(ctx)
    get_criterion("greedy")(ctx)
    assert calls


# -- the catalog -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, source", [
    ("angular", "Gromov"), ("consensus", "Mugnaini"), ("cka_removal", "Pons"), ("greedy", "SLEB"),
])
def test_cli_lists_the_new_criteria_with_their_source(fresh_catalog, name, source):
    result = CliRunner().invoke(app, ["criteria", "--json"])
    assert result.exit_code == 0, result.output
    by_name = {c["name"]: c for c in json.loads(result.stdout)}
    assert source in by_name[name]["description"] and by_name[name]["origin"] == "builtin"


# -- modularity_removal ---------------------------------------------------------------------------
def test_modularity_removal_scores_an_identity_block_zero_and_lowest(trained_resnet20, digits, zero_residual_branch):
    zero_residual_branch(trained_resnet20, "layer2.1")
    ctx = ScoringContext(trained_resnet20, digits, calibration=CAL, repair=REPAIR)
    result = get_criterion("modularity_removal")(ctx)
    assert result.scores["layer2.1"] == pytest.approx(0.0, abs=1e-9)  # the reference gets the same repair
    assert lowest(result) == "layer2.1"


@pytest.mark.parametrize("features", ["logits", "penultimate"])
def test_modularity_removal_is_the_q_drop_of_the_output_or_the_classifiers_input(trained_resnet20, digits,
                                                                                    features):
    from layerprune import modularity

    ctx = ScoringContext(trained_resnet20, digits, calibration=CAL, repair=REPAIR)
    result = get_criterion("modularity_removal", repair=False, features=features)(ctx)
    removed = swap_blocks(copy.deepcopy(trained_resnet20), {"layer1.0": ()})

    def feats(model, x):
        if features == "penultimate":
            return hooked(model, x, before=["linear"])[("in", "linear")]
        with torch.no_grad():
            return model.eval()(x)

    drops = [modularity(feats(trained_resnet20, x), y) - modularity(feats(removed, x), y) for x, y in ctx.batches()]
    assert result.scores["layer1.0"] == pytest.approx(sum(drops) / len(drops), abs=1e-6)


def test_modularity_removal_refuses_unknown_features():
    with pytest.raises(LayerpruneError, match="features"):
        get_criterion("modularity_removal", features="stem")


def test_modularity_removal_leaves_the_paper_criterion_unchanged(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, calibration=CAL, repair=REPAIR)
    paper = get_criterion("modularity")(ctx)
    get_criterion("modularity_removal")(ctx)
    assert get_criterion("modularity")(ctx).scores == paper.scores
    assert paper.scores == pytest.approx(paper.diagnostics["curve"].deltas())

"""Prefix replay: the oracles compute the network before a changed block once and replay it. The
scores and the greedy order must be exactly those of full runs (``reuse=False``), on a trained
ResNet-20 (the quickstart's model), on a trained ViT, and on models that break the replay's
assumptions (which must then run in full, with the same answer)."""

import copy

import pytest
import torch
import torch.nn as nn

from layerprune import Calibration, Repair, get_criterion
from layerprune.criteria import ScoringContext
from layerprune.criteria.replay import Prefix
from layerprune.hooks import eval_mode, trace_calls
from layerprune.evaluation import evaluate

CAL = Calibration(samples=96, batches=1)
REPAIR = Repair(batches=2, batch_size=48)
ORACLES = ["ablation", "sr_init", "cka_removal", "modularity_removal"]


def context(model, data, **kw):
    kw = {"calibration": CAL, "repair": REPAIR, "micro_batch": 32, **kw}
    return ScoringContext(model, data, **kw)


def both(name, model, data, **params):
    """The criterion's result without and with reuse, each on a fresh context."""
    return [get_criterion(name, reuse=reuse, **params)(context(model, data)) for reuse in (False, True)]


# -- the answer is the same ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ORACLES)
def test_replayed_oracles_score_exactly_as_full_runs(trained_resnet20, digits, name):
    full, replayed = both(name, trained_resnet20, digits)
    assert replayed.scores == full.scores  # exactly: the replayed prefix computes nothing differently
    assert len(set(full.scores.values())) > 1
    runs = replayed.diagnostics["replay"]
    assert runs["replayed"] == len(full.scores) and runs["full_runs"] == 0
    assert "replay" not in full.diagnostics


def test_greedy_order_is_the_same_on_the_quickstarts_model(trained_resnet20, digits):
    full, replayed = both("greedy", trained_resnet20, digits)
    assert replayed.diagnostics["order"] == full.diagnostics["order"]
    assert replayed.diagnostics["after_each"] == full.diagnostics["after_each"]
    assert len(full.diagnostics["order"]) == 6  # every block but the last of each stage
    runs = replayed.diagnostics["replay"]
    assert runs["full_runs"] == 0 and runs["replayed"] > 0
    assert runs["stopped_early"] > 0  # 3 micro-batches: hopeless candidates stop after one or two


def test_greedy_order_is_the_same_on_a_vit(trained_vit, digits):
    full, replayed = both("greedy", trained_vit, digits)
    assert replayed.diagnostics["order"] == full.diagnostics["order"]
    assert len(full.diagnostics["order"]) == 3
    assert replayed.diagnostics["replay"]["full_runs"] == 0


def test_greedy_by_accuracy_is_the_same_too(trained_resnet20, digits):
    full, replayed = both("greedy", trained_resnet20, digits, metric="accuracy")
    assert replayed.diagnostics["order"] == full.diagnostics["order"]


def test_ablation_on_a_vit_is_the_same(trained_vit, digits):
    full, replayed = both("ablation", trained_vit, digits)
    assert replayed.scores == full.scores and replayed.diagnostics["replay"]["replayed"] == 4


# -- what is replayed ----------------------------------------------------------------------------------
def test_a_block_replays_the_stem_and_the_blocks_before_it_and_nothing_after(trained_resnet20, digits):
    ctx = context(trained_resnet20, digits)
    prefix = Prefix(trained_resnet20, ctx.example_input, ["layer1.0", "layer2.1", "layer3.2"])
    assert prefix.replays["layer1.0"] == ("conv1", "bn1", "act1")  # the stem
    assert prefix.replays["layer2.1"] == ("conv1", "bn1", "act1", "layer1", "layer2.0")
    assert prefix.replays["layer3.2"][-3:] == ("layer2", "layer3.0", "layer3.1")
    assert not any(n.startswith("linear") for n in prefix.kept)  # after every candidate: never kept


def test_trace_lists_each_call_inside_its_caller(trained_resnet20, digits):
    calls = trace_calls(trained_resnet20, context(trained_resnet20, digits).example_input)
    by_name = {c.name: c for c in calls}
    assert calls[0].name == "" and calls[0].parent is None
    block, stage = by_name["layer2.1"], by_name["layer2"]
    assert calls[block.parent] is stage and stage.start < block.start < block.end < stage.end
    assert all(c.output is None for c in calls)  # outputs are kept only when asked


def test_trace_keeps_what_each_call_returned_when_asked(trained_resnet20, digits):
    example = context(trained_resnet20, digits).example_input
    by_name = {c.name: c for c in trace_calls(trained_resnet20, example, outputs=True)}
    with torch.no_grad(), eval_mode(trained_resnet20):
        assert torch.equal(by_name[""].output, trained_resnet20(example))
    assert torch.equal(by_name["layer2"].output, by_name["layer2.2"].output)  # a stage returns its last block's
    assert by_name["layer2.2"].output.shape[0] == example.shape[0]


def test_evaluate_stops_when_asked_and_says_so(trained_resnet20, digits):
    batches = context(trained_resnet20, digits).micro_batches()
    seen = []
    assert evaluate(trained_resnet20, batches, until=lambda loss, correct, n: seen.append(n) or n >= 32) is None
    assert seen == [32]
    assert evaluate(trained_resnet20, batches, until=lambda *a: False) == evaluate(trained_resnet20, batches)


# -- models that break the assumptions run in full, with the same answer ---------------------------
class Residual(nn.Module):
    def __init__(self, c, inplace=False):
        super().__init__()
        self.conv, self.bn, self.inplace = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), inplace

    def forward(self, x):
        if self.inplace:  # changes its input: the tensor a replayed block returned
            return x.add_(self.bn(self.conv(x)))
        return x + self.bn(self.conv(x))


class Toy(nn.Module):
    """A stem, four residual blocks in a stage, a head. The 1-sample trace misleads in two ways:
    ``repeat_stem`` runs the stem's second layer twice for bigger batches, ``late_first`` calls
    ``late`` before the stage for one sample and after it otherwise."""

    def __init__(self, inplace=False, repeat_stem=False, late_first=False):
        super().__init__()
        self.stem, self.stem2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.stage = nn.Sequential(*[Residual(8, inplace) for _ in range(4)])
        self.late = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)
        self.repeat_stem, self.late_first = repeat_stem, late_first

    def forward(self, x):
        x = self.stem(x)
        for _ in range(2 if self.repeat_stem and len(x) > 1 else 1):
            x = self.stem2(x)
        if self.late_first and len(x) == 1:
            x = self.stage(self.late(x))
        else:
            x = self.late(self.stage(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("kind, criterion", [
    ("inplace", "sr_init"),  # blocks that change their input in place are never removable: re-initialised
    ("repeat_stem", "ablation"),
    ("late_first", "ablation"),
])
def test_a_model_the_trace_does_not_describe_gets_the_same_scores(digits, kind, criterion):
    torch.manual_seed(0)
    model = Toy(**{kind: True}).eval()
    full, replayed = both(criterion, model, digits)
    assert replayed.scores == full.scores and len(full.scores) >= 3
    runs = replayed.diagnostics["replay"]
    if kind == "inplace":  # the first block that changes a replayed output drops the recording
        assert runs["full_runs"] >= 1 and runs["replayed"] < len(full.scores)
    elif kind == "repeat_stem":  # stem2, called twice per pass, is left out of the recording
        assert runs["full_runs"] == 0 and runs["replayed"] == len(full.scores)
    else:  # the replayed ``late`` runs after the block: every candidate runs again in full
        assert runs["replayed"] == 0 and runs["full_runs"] == len(full.scores)


@pytest.mark.parametrize("kind", ["repeat_stem", "late_first"])
def test_greedy_on_a_model_the_trace_does_not_describe_gives_the_same_order(digits, kind):
    torch.manual_seed(0)
    model = Toy(**{kind: True}).eval()
    full, replayed = both("greedy", model, digits)
    assert replayed.diagnostics["order"] == full.diagnostics["order"]
    assert replayed.diagnostics["after_each"] == full.diagnostics["after_each"]
    assert len(full.diagnostics["order"]) == 3


def test_a_recording_over_the_memory_budget_is_dropped(trained_resnet20, digits):
    full = get_criterion("ablation", reuse=False)(context(trained_resnet20, digits))
    small = get_criterion("ablation")(context(trained_resnet20, digits, replay_memory=1))
    assert small.scores == full.scores
    runs = small.diagnostics["replay"]
    assert runs["replayed"] == 0 and runs["over_budget_mib"] > 0


def test_a_replayed_run_leaves_the_scored_model_untouched(trained_resnet20, digits):
    before = copy.deepcopy(trained_resnet20.state_dict())
    get_criterion("greedy")(context(trained_resnet20, digits))
    after = trained_resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in m.__dict__ for m in trained_resnet20.modules())

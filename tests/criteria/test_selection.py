import pytest
import timm
import torch

from layerprune import find_blocks, select_blocks
from layerprune.errors import LayerpruneError


@pytest.fixture(scope="module")
def blocks():
    return find_blocks(timm.create_model("cifar_resnet20"), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def scores(blocks):
    # Increasing with depth, so "lowest first" means "earliest first".
    stage_blocks = [b.name for b in blocks if b.stage]
    return {name: 0.01 * i for i, name in enumerate(stage_blocks)}


def test_threshold_removes_strictly_below(blocks, scores):
    removed = select_blocks(scores, blocks, rule="threshold", threshold=0.03)
    # layer1.0-1.2 score 0.00-0.02, but a stage keeps one block; layer2.0 (0.03) is not below.
    assert removed == ["layer1.0", "layer1.1"]


def test_threshold_keeps_the_best_block_of_a_stage_it_would_empty(blocks):
    scores = {"layer1.0": -0.5, "layer1.1": -0.1, "layer1.2": -0.3}
    assert select_blocks(scores, blocks, threshold=0.0) == ["layer1.0", "layer1.2"]


def test_never_touches_fixed_or_collapsible_blocks_unless_asked(blocks, scores):
    low = {name: -1.0 for name in scores}
    removed = select_blocks(low, blocks, threshold=0.0)
    assert "layer2.0" not in removed and "layer3.0" not in removed  # downsampling: collapse only
    collapsed = select_blocks(low, blocks, threshold=0.0, collapse=True)
    assert {"layer2.0", "layer3.0"} & set(collapsed)
    assert sum(n.startswith("layer1") for n in collapsed) == 2  # one of three kept
    for stage in ("layer2", "layer3"):  # a collapsed block leaves its shortcut: the stage is not empty
        assert sum(n.startswith(stage) for n in collapsed) == 3


def test_count_removes_the_k_lowest(blocks, scores):
    assert select_blocks(scores, blocks, rule="count", k=3) == ["layer1.0", "layer1.1", "layer2.1"]
    assert select_blocks(scores, blocks, rule="count", fraction=0.5) == ["layer1.0", "layer1.1", "layer2.1"]
    assert select_blocks(scores, blocks, rule="count", k=0) == []


def test_count_beyond_what_can_be_removed_is_an_error(blocks, scores):
    with pytest.raises(LayerpruneError, match="k=7 but only 6"):
        select_blocks(scores, blocks, rule="count", k=7)


def test_protected_blocks_are_kept(blocks, scores):
    removed = select_blocks(scores, blocks, rule="count", k=3, protect=["layer1.0"])
    assert "layer1.0" not in removed and len(removed) == 3


def test_budget_stops_once_the_target_is_reached(blocks, scores):
    by_name = {b.name: b for b in blocks}
    total = sum(b.params for b in blocks)
    removed = select_blocks(scores, blocks, rule="budget", params=0.1)
    saved = sum(by_name[n].params for n in removed) / total
    assert saved >= 0.1
    assert sum(by_name[n].params for n in removed[:-1]) / total < 0.1  # one fewer is not enough
    by_macs = select_blocks(scores, blocks, rule="budget", macs=0.3)
    assert sum(by_name[n].macs_share for n in by_macs) >= 0.3


def test_unreachable_budget_is_an_error(blocks, scores):
    with pytest.raises(LayerpruneError, match="params=0.95 is out of reach"):
        select_blocks(scores, blocks, rule="budget", params=0.95)


def test_result_is_in_forward_order_and_only_scored_blocks(blocks):
    scores = {"layer3.2": -1.0, "layer1.1": -0.5}
    assert select_blocks(scores, blocks, threshold=0.0) == ["layer1.1", "layer3.2"]


@pytest.mark.parametrize("kwargs,match", [
    ({"rule": "thresh", "threshold": 0.1}, "did you mean 'threshold'"),
    ({"rule": "threshold"}, "threshold: required"),
    ({"rule": "threshold", "threshold": 0.1, "k": 2}, r"k: unknown parameter \(parameters: threshold\)"),
    ({"rule": "threshold", "threshold": "low"}, "threshold: Input should be a valid number"),
    ({"rule": "count", "k": 2, "fraction": 0.5}, "exactly one of k or fraction"),
    ({"rule": "budget", "params": 1.5}, "params: must be a fraction in"),
    ({"rule": "budget", "params": 0.2, "macs": 0.2}, "exactly one of params, macs, latency or layers"),
    ({"threshold": 0.1, "protect": ["layer1.9"]}, "unknown block 'layer1.9'"),
])
def test_bad_requests_name_the_problem(blocks, scores, kwargs, match):
    with pytest.raises(LayerpruneError, match=match):
        select_blocks(scores, blocks, **kwargs)

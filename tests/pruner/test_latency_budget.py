"""Latency budgets: each block's share of the measured latency, selection until the share to cut
is reached, and the speed-up confirmed on the pruned model, measured side by side.

Timings are noisy on a shared 2-core machine: the speed-up is asserted within 20% of the target
(a pruned model at least 0.8 × the asked-for speed-up), never as seconds.
"""

import pytest
import timm
import torch

import layerprune
from layerprune import Calibration, LayerpruneError, Pruner, Repair, find_blocks, select_blocks
from layerprune.criteria.selection import budget_share, max_reduction
from layerprune.surgery import measure_block_latency

NOISE = 0.2  # the tolerance of a speed-up measured on a noisy machine
CAL = Calibration(samples=32, batches=1)


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet56", num_classes=10, in_chans=1).eval()


def test_block_shares_are_timed_not_counted(resnet56):
    x = torch.zeros(1, 1, 32, 32)
    blocks = [b for b in find_blocks(resnet56, x) if b.stage]
    measured = measure_block_latency(resnet56, [b.name for b in blocks], (1, 32, 32), repeats=20)
    shares = measured.shares
    assert set(shares) == {b.name for b in blocks} and all(s > 0 for s in shares.values())
    assert 0.5 < sum(shares.values()) <= 1.0  # the stem, the head and Python's overhead take the rest
    assert measured.total_ms > 0 and measured.batch_size == 1 and measured.device == "cpu"


@pytest.mark.parametrize("cut", [0.3, 0.5])
def test_a_latency_budget_removes_blocks_until_the_measured_share_is_reached(resnet56, digits, cut):
    pruner = Pruner("tail", rule="budget", rule_params={"latency": cut}, calibration=CAL,
                    repair=Repair(enabled=False))
    result = pruner.prune(resnet56, digits)
    timed = result.steps[0].result and pruner.blocks(resnet56, torch.zeros(1, 1, 32, 32))
    assert budget_share(timed, result.removed, "latency") >= cut - 0.05  # shares re-measured: noise
    confirmed = pruner.speedup(resnet56, result.model, (1, 32, 32))
    assert confirmed["target_speedup"] == pytest.approx(1 / (1 - cut))
    assert confirmed["speedup"] >= (1 - NOISE) * confirmed["target_speedup"], confirmed
    assert {"device": "cpu", "batch_size": 1, "precision": "32"}.items() <= confirmed.items()


def test_selection_reads_the_blocks_latency_not_their_macs(resnet56):
    """Two blocks of equal MACs, one four times slower: the budget counts the slow one as more."""
    blocks = find_blocks(resnet56, torch.zeros(1, 1, 32, 32))
    import dataclasses

    timed = [dataclasses.replace(b, latency_share=(0.2 if b.name == "layer1.3" else 0.05 if b.name == "layer1.4"
                                                   else 0.01 if b.stage else None)) for b in blocks]
    scores = {b.name: 1.0 for b in blocks if b.stage}
    scores.update({"layer1.4": 0.0, "layer1.3": 0.1})
    assert select_blocks(scores, timed, rule="budget", latency=0.05) == ["layer1.4"]
    assert select_blocks(scores, timed, rule="budget", latency=0.2) == ["layer1.3", "layer1.4"]
    with pytest.raises(LayerpruneError, match="latency of layer1.0 was not measured"):
        select_blocks({**scores, "layer1.0": -1}, blocks, rule="budget", latency=0.1)


def test_where_latency_is_measured_is_checked():
    with pytest.raises(LayerpruneError, match="device: only with a latency budget"):
        Pruner("tail", rule="budget", rule_params={"macs": 0.3, "device": "cpu"})
    with pytest.raises(LayerpruneError, match="precision: must be one of 32, bf16, fp16"):
        Pruner("tail", rule="budget", rule_params={"latency": 0.3, "precision": "int8"})
    with pytest.raises(LayerpruneError, match="batch_size: must be an integer"):
        Pruner("tail", rule="budget", rule_params={"latency": 0.3, "batch_size": 0})
    with pytest.raises(LayerpruneError, match="give exactly one of params, macs, latency or layers"):
        Pruner("tail", rule="budget", rule_params={"latency": 0.3, "macs": 0.3})


def test_the_reachable_latency_share_keeps_one_block_per_stage(resnet56):
    pruner = Pruner("tail", rule="budget", rule_params={"latency": 0.3})
    timed = pruner.blocks(resnet56, torch.zeros(1, 1, 32, 32))
    reachable = max_reduction(timed, "latency")
    expected = 0.0
    for stage in {b.stage for b in timed if b.stage}:
        members = [b for b in timed if b.stage == stage]
        shares = [b.latency_share for b in members if b.removable]
        # a stage whose blocks may all go keeps its cheapest; a fixed block (downsampling) stays anyway
        expected += sum(shares) - (min(shares) if len(shares) == len(members) else 0)
    assert reachable == pytest.approx(expected)

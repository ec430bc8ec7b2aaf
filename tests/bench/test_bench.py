"""The small bench recipe end to end, checked against the bench's own stored outputs: plans
recomputed from the stored scores, correlations recomputed with scipy, costs re-measured on
freshly pruned models, and accuracies that must agree where nothing can tell them apart."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import layerprune
from layerprune import find_blocks
from layerprune.bench.harness import WIDTH
from layerprune.bench.width import UNPRUNED, depth_width_name, is_channel_row, is_ranked
from layerprune.cli import app
from layerprune.recipe import load_recipe


ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "recipes/bench_small.yaml"
FAST = ["bench.seeds=[0]", "bench.finetune_epochs=0", "pretrain.epochs=2", "eval.latency=true",
        "bench.finetune_base=true"]
# The budgets of bench_small.yaml as select_blocks rules, written out here rather than taken
# from the harness, so that a bench that turned a budget into the wrong rule fails.
RULES = {"k2": {"rule": "count", "k": 2}, "macs0.3": {"rule": "budget", "macs": 0.3}}
runner = CliRunner()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """The setting's folder of a plain bench recipe run as a one-setting suite."""
    out = tmp_path_factory.mktemp("bench") / "small"
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(out), *[a for s in FAST for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return out / "settings" / "bench_small"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(SMALL)


@pytest.fixture(scope="module")
def fresh_model(recipe):
    """An untrained model of the recipe's architecture: same blocks, parameters and MACs."""
    assert recipe.model.name == "cifar_resnet20"
    return layerprune.create_model(recipe.model.name, num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def example_input():
    return torch.zeros(1, 1, 32, 32)


@pytest.fixture(scope="module")
def blocks(fresh_model, example_input):
    return find_blocks(fresh_model, example_input)


def _trials(bench_dir):
    return json.loads((bench_dir / "trials.json").read_text())["trials"]


def _depth_trials(bench_dir):
    return [t for t in _trials(bench_dir) if is_ranked(t["criterion"])]


def _scores(bench_dir, criterion, seed=0):
    return json.loads((bench_dir / "scores" / f"{criterion}_s{seed}.json").read_text())["scores"]


def test_bench_recipes_validate():
    for path in sorted((ROOT / "recipes").glob("bench_*.yaml")):
        assert load_recipe(path).bench is not None


def test_every_criterion_and_budget_has_a_trial(bench_dir):
    seen = {(t["criterion"], t["budget"]) for t in _trials(bench_dir)}
    expected = {(c, b) for c in load_recipe(SMALL).bench.criteria for b in ("macs0.3", "k2")}
    expected |= {(WIDTH, "macs0.3"), (depth_width_name("tail"), "macs0.3")}  # channel rows: MACs budgets only
    expected |= {(UNPRUNED, "none")}  # once per seed, whatever the budgets
    assert seen == expected


def test_the_unpruned_row_is_the_base_model_finetuned_and_never_ranked(bench_dir):
    (trial,) = [t for t in _trials(bench_dir) if t["criterion"] == UNPRUNED]
    base = json.loads((bench_dir / "base.json").read_text())
    assert trial["removed"] == [] and trial["macs_reduction"] == 0 and trial["params_reduction"] == 0
    assert trial["before_finetune"] == trial["after_finetune"] == pytest.approx(base["accuracy"])  # 0 epochs here
    suite = json.loads((bench_dir.parents[1] / "trials.json").read_text())
    assert all(r["criterion"] != UNPRUNED for board in suite["leaderboards"].values() for r in board)
    assert "| unpruned | none |" in (bench_dir / "report.md").read_text()


def test_every_plan_is_valid_and_within_budget(bench_dir, blocks):
    by_name = {b.name: b for b in blocks}
    for t in _trials(bench_dir):
        if t["criterion"] == WIDTH:
            assert t["macs_reduction"] >= 0.3 - 0.01 and t["channel_ratio"] > 0
            continue
        if t["criterion"] == UNPRUNED:
            continue  # checked on its own below
        if is_channel_row(t["criterion"]):  # depth+width: blocks to half the budget, channels the rest
            assert 0.15 - 1e-9 <= sum(by_name[n].macs_share for n in t["removed"]) < 0.3
            assert t["macs_reduction"] >= 0.3 - 0.01 and t["channel_ratio"] > 0
            continue
        removed = t["removed"]
        assert all(by_name[n].removable for n in removed), t
        for stage in {by_name[n].stage for n in removed}:  # a stage always keeps a block
            assert sum(b.stage == stage for b in blocks) > sum(by_name[n].stage == stage for n in removed)
        if t["budget"] == "k2":
            assert len(removed) == 2
        else:
            assert sum(by_name[n].macs_share for n in removed) >= 0.3 - 1e-9
            assert t["macs_reduction"] >= 0.3 - 0.02  # measured on the pruned model


def test_each_depth_plan_is_the_selection_of_its_stored_scores(bench_dir, blocks, recipe):
    trials = _depth_trials(bench_dir)
    assert {t["budget"] for t in trials} == set(RULES)
    for t in trials:
        expected = layerprune.select_blocks(_scores(bench_dir, t["criterion"], t["seed"]), blocks,
                                            protect=recipe.select.protect, collapse=recipe.select.collapse,
                                            **RULES[t["budget"]])
        assert t["removed"] == expected, t


def test_tail_at_k2_removes_the_last_block_of_two_stages(bench_dir, blocks):
    (trial,) = [t for t in _trials(bench_dir) if t["criterion"] == "tail" and t["budget"] == "k2"]
    last_of_stage = {}
    for b in blocks:  # forward order: the last one seen in a stage is its last block
        if b.stage:
            last_of_stage[b.stage] = b.name
    assert len(trial["removed"]) == 2 and set(trial["removed"]) <= set(last_of_stage.values())


def test_base_costs_are_those_of_the_recipe_model(bench_dir, fresh_model, example_input):
    base = json.loads((bench_dir / "base.json").read_text())
    cost = layerprune.model_cost(fresh_model, example_input)
    assert (base["params"], base["macs"]) == (cost.params, cost.macs)


def test_trial_costs_are_those_of_the_model_without_the_removed_blocks(bench_dir, fresh_model, example_input, blocks):
    for t in _depth_trials(bench_dir):
        pruned = layerprune.remove_blocks(fresh_model, t["removed"], example_input, blocks=blocks)
        cost = layerprune.model_cost(pruned, example_input)
        assert (t["params"], t["macs"]) == (cost.params, cost.macs), t


def test_reductions_are_relative_to_the_base_model(bench_dir):
    base = json.loads((bench_dir / "base.json").read_text())
    for t in _trials(bench_dir):
        assert t["params_reduction"] == pytest.approx(1 - t["params"] / base["params"]), t
        assert t["macs_reduction"] == pytest.approx(1 - t["macs"] / base["macs"]), t


def test_without_finetuning_the_accuracy_after_finetune_is_the_one_before(bench_dir):
    for t in _trials(bench_dir):
        assert t["after_finetune"] == t["before_finetune"], t


def test_the_same_blocks_removed_at_the_same_seed_give_the_same_accuracies(bench_dir):
    # Every criterion's trial goes through the same surgery and repair batches: only the
    # removed blocks may make a difference.
    groups = {}
    for t in _depth_trials(bench_dir):
        groups.setdefault((tuple(t["removed"]), t["seed"]), []).append(t)
    shared = [ts for ts in groups.values() if len(ts) > 1]
    assert shared  # tail, ablation and sr_init agree on the small bench; otherwise this checks nothing
    for ts in shared:
        measured = {(t["after_surgery"], t["before_finetune"], t["loss"], t["macs"]) for t in ts}
        assert len(measured) == 1, [(t["criterion"], t["budget"]) for t in ts]


def test_correlations_are_those_of_the_stored_scores_with_the_oracle(bench_dir, recipe):
    from scipy.stats import kendalltau, spearmanr

    corr = json.loads((bench_dir / "trials.json").read_text())["correlations"]
    assert sorted((c["criterion"], c["seed"]) for c in corr) == sorted((c, 0) for c in load_recipe(SMALL).bench.criteria)
    oracle = _scores(bench_dir, recipe.bench.oracle)
    for row in corr:
        scores = _scores(bench_dir, row["criterion"])
        common = sorted(set(scores) & set(oracle))
        a, b = [scores[n] for n in common], [oracle[n] for n in common]
        assert row["blocks"] == len(common) >= 3, row
        varied = len(set(a)) > 1 and len(set(b)) > 1
        expected = (spearmanr(a, b).statistic, kendalltau(a, b).statistic) if varied else (math.nan, math.nan)
        assert row["spearman"] == pytest.approx(expected[0], nan_ok=True), row
        assert row["kendall"] == pytest.approx(expected[1], nan_ok=True), row


def test_costs_order_the_criteria_by_forward_passes(bench_dir):
    costs = {c["criterion"]: c for c in json.loads((bench_dir / "trials.json").read_text())["costs"]}
    assert costs["ablation"]["forward_passes"] > costs["modularity"]["forward_passes"] >= 1
    assert costs["random"]["forward_passes"] < 0.1  # only the few samples that trace the blocks


def test_outputs_exist_and_the_csv_has_every_trial(bench_dir):
    rows = list(csv.DictReader((bench_dir / "trials.csv").open()))
    assert len(rows) == len(_trials(bench_dir))
    assert set(rows[0]) >= {"setting", "criterion", "budget", "seed", "after_finetune"}
    for name in ("report.md", "accuracy_vs_macs.png", "curve_choices.png", "base.json"):
        assert (bench_dir / name).is_file(), name
    assert "| modularity | macs0.3 |" in (bench_dir / "report.md").read_text()
    top = bench_dir.parents[1]  # the suite's own outputs, over its one setting
    assert list(csv.DictReader((top / "trials.csv").open())) == rows
    for name in ("report.md", "leaderboard.png", "trials.json", "suite.yaml"):
        assert (top / name).is_file(), name


def test_rerun_resumes_without_recomputing(bench_dir):
    trial_files = sorted((bench_dir / "trials").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in trial_files}
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(bench_dir.parents[1]),
                                 *[a for s in FAST for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in trial_files} == before


def test_a_recipe_without_bench_section_exits_2(tmp_path):
    result = runner.invoke(app, ["bench", str(ROOT / "recipes/quickstart.yaml"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "nor a bench recipe (no bench:)" in result.output


def test_the_depth_width_row_is_tails_blocks_then_channels(bench_dir, blocks):
    """Its blocks are the ones tail removes at half the budget; the channels do the rest."""
    (trial,) = [t for t in _trials(bench_dir) if t["criterion"] == depth_width_name("tail")]
    tail = layerprune.select_blocks(_scores(bench_dir, "tail"), blocks, rule="budget", macs=0.15)
    assert trial["removed"] == tail


def test_the_frontier_plots_accuracy_against_measured_latency(bench_dir):
    trials = _trials(bench_dir)
    base = json.loads((bench_dir / "base.json").read_text())
    for t in trials:  # timed side by side with the base, on the scale of the base's own latency
        assert t["speedup"] > 0 and t["latency_ms"] * t["speedup"] == pytest.approx(base["latency_ms"])
    assert (bench_dir / "accuracy_vs_latency.png").stat().st_size > 10_000
    assert "](accuracy_vs_latency.png)" in (bench_dir / "report.md").read_text()

"""The small bench recipe end to end: every criterion gives a valid plan within its budget."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerprune import find_blocks
from layerprune.bench.harness import WIDTH
from layerprune.cli import app
from layerprune.recipe import load_recipe
from layerprune.recipe.schema import ALL_CRITERIA

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "recipes/bench_small.yaml"
FAST = ["bench.seeds=[0]", "bench.finetune_epochs=0", "pretrain.epochs=2"]
runner = CliRunner()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "small"
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(out), *[a for s in FAST for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return out


def test_bench_recipes_validate():
    for path in sorted((ROOT / "recipes").glob("bench_*.yaml")):
        assert load_recipe(path).bench is not None


def test_every_criterion_and_budget_has_a_trial(bench_dir):
    data = json.loads((bench_dir / "trials.json").read_text())
    seen = {(t["criterion"], t["budget"]) for t in data["trials"]}
    expected = {(c, b) for c in ALL_CRITERIA for b in ("macs0.3", "k2")} | {(WIDTH, "macs0.3")}
    assert seen == expected


def test_every_plan_is_valid_and_within_budget(bench_dir):
    import layerprune

    data = json.loads((bench_dir / "trials.json").read_text())
    model = layerprune.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    import torch

    blocks = {b.name: b for b in find_blocks(model, torch.zeros(1, 1, 32, 32))}
    for t in data["trials"]:
        if t["criterion"] == WIDTH:
            assert t["macs_reduction"] >= 0.3 - 0.01 and t["channel_ratio"] > 0
            continue
        removed = t["removed"]
        assert all(blocks[n].removable for n in removed), t
        stages = {blocks[n].stage for n in removed}
        for stage in stages:  # a stage always keeps a block
            assert sum(b.stage == stage for b in blocks.values()) > sum(blocks[n].stage == stage for n in removed)
        if t["budget"] == "k2":
            assert len(removed) == 2
        else:
            assert sum(blocks[n].macs_share for n in removed) >= 0.3 - 1e-9
            assert t["macs_reduction"] >= 0.3 - 0.02  # measured on the pruned model
        assert 0 <= t["before_finetune"] <= 1 and 0 <= t["after_finetune"] <= 1


def test_correlations_costs_and_table_structure(bench_dir):
    data = json.loads((bench_dir / "trials.json").read_text())
    corr = {c["criterion"]: c for c in data["correlations"]}
    assert set(corr) == set(ALL_CRITERIA)
    assert corr["ablation"]["spearman"] == pytest.approx(1.0)  # the oracle against itself
    assert all(-1 <= c["spearman"] <= 1 for c in corr.values() if c["spearman"] == c["spearman"])
    costs = {c["criterion"]: c for c in data["costs"]}
    assert costs["ablation"]["forward_passes"] > costs["modularity"]["forward_passes"] >= 1
    assert costs["random"]["forward_passes"] < 0.1  # only the few samples that trace the blocks
    rows = list(csv.DictReader((bench_dir / "trials.csv").open()))
    assert len(rows) == len(data["trials"]) and set(rows[0]) >= {"criterion", "budget", "seed", "after_finetune"}
    for name in ("report.md", "accuracy_vs_macs.png", "curve_choices.png", "base.json"):
        assert (bench_dir / name).is_file(), name
    assert "| modularity | macs0.3 |" in (bench_dir / "report.md").read_text()


def test_rerun_resumes_without_recomputing(bench_dir):
    trial_files = sorted((bench_dir / "trials").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in trial_files}
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(bench_dir), *[a for s in FAST for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in trial_files} == before


def test_a_recipe_without_bench_section_exits_2(tmp_path):
    result = runner.invoke(app, ["bench", str(ROOT / "recipes/quickstart.yaml"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "no bench section" in result.output


def test_under_torchrun_the_bench_refuses_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "single process" in result.output
    assert not (tmp_path / "b").exists()

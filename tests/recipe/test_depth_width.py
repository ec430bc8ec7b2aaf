"""A recipe with a latency budget and width pruning after the blocks (depth + width), end to end
on digits: the report lists both edits, metrics.json confirms the speed-up next to its target,
and the saved model, channel changes included, reloads to the same outputs."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import layerprune
from layerprune.cli import app
from layerprune.data import make_loader
from layerprune.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
TINY = ["pretrain.epochs=2", "finetune.epochs=1", "data.options={val_fraction: 0.1, test_fraction: 0.6}",
        "data.calibration.samples=64", "data.calibration.batches=1", "eval.latency=false",
        "select.params={latency: 0.3}", "prune.width={macs: 0.6, importance: l2}"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "depth_width"
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_report_lists_both_edits(run_dir):
    out, output = run_dir
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["removed"] and f"| blocks removed |  | {len(metrics['removed'])}: " in report
    width = metrics["width"]
    assert width["importance"] == "l2" and width["macs"] == 0.6 and 0 < width["channels_removed"] < width["channels"]
    assert f"| channels pruned |  | {width['channels_removed']} of {width['channels']} " in report
    assert metrics["macs_reduction"] >= 0.6 - 0.01  # depth and width together reach the width's target
    assert "width:" in output and "channels cut inside" in output


def test_the_latency_budget_is_confirmed_next_to_its_target(run_dir):
    out, _ = run_dir
    metrics = json.loads((out / "metrics.json").read_text())
    budget = metrics["latency_budget"]
    assert budget["latency"] == 0.3 and budget["target_speedup"] == pytest.approx(1 / 0.7)
    assert metrics["speedup"] == budget["speedup"] and budget["met"] == (budget["speedup"] >= budget["target_speedup"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["latency_reduction_estimate"] >= 0.3 and plan["latency_measured_at"]["batch_size"] == 1
    assert "| latency budget (batch 1, cpu, 32) |" in (out / "report.md").read_text()


def test_the_saved_depth_width_model_reloads_to_the_same_outputs(run_dir, digits):
    out, _ = run_dir
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["layerprune"]["removed"] and config["layerprune"]["channels"]
    first, again = layerprune.load_pruned(out / "model").eval(), layerprune.load_pruned(out / "model").eval()
    finetuned = layerprune.load_pruned(out / "finetuned").eval()
    convs = [m.out_channels for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    assert min(convs) < 16  # channels were cut, and the reloaded model has them cut
    x = torch.stack([digits.test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.equal(first(x), again(x)) and torch.equal(first(x), finetuned(x))
    metrics = json.loads((out / "metrics.json").read_text())
    from layerprune.data import build_dataset

    data = build_dataset("digits", seed=0, val_fraction=0.1, test_fraction=0.6)
    assert evaluate(first, make_loader(data.test, 256)).accuracy == pytest.approx(metrics["pruned"]["accuracy"])


def test_an_unreachable_latency_target_is_refused_before_training(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(tmp_path / "r"), "--set",
                                 "select.params={latency: 0.95}"])
    assert result.exit_code == 2, result.output
    assert "select.params.latency: 0.95 is out of reach for cifar_resnet20; removing every allowed block saves 0." \
        in result.output
    assert not (tmp_path / "r").exists()


def test_width_on_a_model_without_conv_branches_is_refused_before_training(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(tmp_path / "r"), "--set",
                                 "model.name=vit_tiny_patch16_224", "--set",
                                 "model.kwargs={img_size: 32, patch_size: 8, depth: 4, embed_dim: 96, num_heads: 3}",
                                 "--set", "prune.width={ratio: 0.2}", "--set", "select.params={k: 1}",
                                 "--set", "select.rule=count"])
    assert result.exit_code == 2, result.output
    assert "prune.width: vit_tiny_patch16_224 has no block with a conv feeding another" in result.output

"""Starting from a checkpoint and adapting it (model.checkpoint with a pretrain section), paths
from the environment, the base cache keyed on a checkpoint's content, and shorter epochs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from layerprune.recipe.cache import BaseCache, base_key
from layerprune.cli import app
from layerprune.recipe import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
TINY = ["finetune.epochs=1", "data.calibration.samples=64", "data.calibration.batches=2",
        "prune.repair_batches=2", "eval.latency=false", "export.enabled=false"]
runner = CliRunner()


def _sets(overrides):
    return [a for s in overrides for a in ("--set", s)]


@pytest.fixture
def checkpoint(tmp_path, trained_resnet20):
    path = tmp_path / "resnet20_digits.pth"
    torch.save(trained_resnet20.state_dict(), path)
    return path


def test_pretrain_starts_from_the_checkpoint_and_writes_its_record(tmp_path, checkpoint, trained_resnet20):
    # A learning rate too small to move the weights: what pretraining returns is the checkpoint
    # (BatchNorm statistics re-estimated), not a model trained from scratch.
    recipe = load_recipe(QUICKSTART, [*TINY, f"model.checkpoint={checkpoint}", "pretrain.epochs=1",
                                      "pretrain.lr=1.0e-9", "pretrain.weight_decay=0"])
    result = run_recipe(recipe, out=str(tmp_path / "run"), log=lambda m: None)
    run = tmp_path / "run"
    record = json.loads((run / "pretrain.json").read_text())
    assert len(record["history"]) == 1 and record["eval"]["accuracy"] > 0.6
    adapted = torch.load(run / "pretrained.pth", weights_only=True)
    start = trained_resnet20.state_dict()
    for name, value in adapted.items():
        if name.endswith(".weight"):
            torch.testing.assert_close(value, start[name], atol=1e-6, rtol=0)
    # the stages after it use the adapted model as the base
    assert result.metrics["base"]["accuracy"] == pytest.approx(record["eval"]["accuracy"])


def test_the_checkpoint_alone_is_still_the_base_without_a_pretrain_section(tmp_path, checkpoint):
    recipe = load_recipe(QUICKSTART, [*TINY, f"model.checkpoint={checkpoint}", "pretrain=null", "finetune.epochs=0"])
    run_recipe(recipe, out=str(tmp_path / "run"), log=lambda m: None)
    assert not (tmp_path / "run" / "pretrain.json").exists()


def test_paths_take_environment_variables(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("MY_WEIGHTS", str(checkpoint.parent))
    recipe = load_recipe(QUICKSTART, ["model.checkpoint=${MY_WEIGHTS}/" + checkpoint.name,
                                      "output_dir=$MY_WEIGHTS/runs"])
    assert recipe.model.checkpoint == str(checkpoint) and recipe.output_dir == f"{checkpoint.parent}/runs"


def test_an_unset_variable_in_a_path_is_named_with_its_key(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out),
                                 *_sets(["model.checkpoint=${NOT_SET_HERE}/r20.pth", "data.root=$NOT_SET_EITHER"])])
    assert result.exit_code == 2
    assert "model.checkpoint: environment variable NOT_SET_HERE is not set" in result.output
    assert "data.root: environment variable NOT_SET_EITHER is not set" in result.output
    assert "no such file" not in result.output and "Traceback" not in result.output and not out.exists()


def test_the_base_cache_keys_on_the_checkpoints_content_not_its_path(tmp_path, checkpoint):
    copy = tmp_path / "elsewhere" / "same.pth"
    copy.parent.mkdir()
    shutil.copy(checkpoint, copy)
    cache = BaseCache(tmp_path / "cache")

    def entry(path):
        return cache.entry(load_recipe(QUICKSTART, [f"model.checkpoint={path}"]))

    assert entry(copy) == entry(checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    last = list(state)[-1]
    state[last] = state[last] + 1
    torch.save(state, copy)
    assert entry(copy) != entry(checkpoint)
    assert entry(checkpoint) != cache.entry(load_recipe(QUICKSTART, []))  # from scratch: another base


@pytest.mark.slow
def test_a_bench_adapts_a_checkpoint_once_into_the_cache(tmp_path, checkpoint, monkeypatch):
    from layerprune.bench import load_suite, run_suite

    overrides = [f"model.checkpoint={checkpoint}", "pretrain.epochs=1", "pretrain.lr=1.0e-9", "bench.criteria=[tail]", "bench.seeds=[0]",
                 "bench.budgets=[{k: 1}]", "bench.width=false", "bench.finetune_epochs=1", "bench.finetune_base=true",
                 "eval.latency=false",
                 "data.calibration.samples=32", "data.calibration.batches=1", "prune.repair_batches=2"]
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    suite = load_suite(ROOT / "recipes/bench_small.yaml", overrides)
    result = run_suite(suite, out=str(tmp_path / "bench"), log=lambda m: None)
    bases = list((tmp_path / "cache" / "bases").iterdir())
    assert len(bases) == 1 and (bases[0] / "pretrained.pth").is_file()
    key = json.loads((bases[0] / "key.json").read_text())
    assert key["checkpoint"] == base_key(suite.recipes[0])["checkpoint"] and key["pretrain"]["epochs"] == 1
    base = json.loads((tmp_path / "bench" / "settings" / "bench_small" / "base.json").read_text())
    assert base["accuracy"] > 0.6 and base["cache"] == str(bases[0] / "pretrained.pth")
    tail, unpruned = result.trials
    assert (tail["criterion"], unpruned["criterion"]) == ("tail", "unpruned")
    # the unpruned base got the trials' finetuning (one epoch at finetune.lr): it changed
    assert unpruned["before_finetune"] == base["accuracy"] and unpruned["loss"] != base["loss"]


def test_the_paper_recipe_runs_to_its_report_on_real_images(tmp_path, cifar_jpeg_subset, skip_without_shared_data):
    """recipes/resnet56_cifar10_pretrained.yaml end to end, on a few hundred of the CIFAR-10 JPEGs
    (shortened: one epoch of each training stage, small calibration draws)."""
    path = ROOT / "recipes/resnet56_cifar10_pretrained.yaml"
    skip_without_shared_data(path)
    out = tmp_path / "run"
    short = [f"data.root={cifar_jpeg_subset}", "pretrain.epochs=1", "finetune.epochs=1",
             "data.calibration.samples=10", "data.calibration.batches=2", "prune.repair_batches=1",
             "eval.latency=false"]
    result = runner.invoke(app, ["run", str(path), "--out", str(out), *_sets(short)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert plan["rule"] == {"rule": "threshold", "threshold": 0.03} and metrics["removed"] == plan["removed"]
    assert json.loads((out / "pretrain.json").read_text())["history"]  # adapted from the checkpoint first
    assert metrics["base"]["accuracy"] > 0.6  # the pretrained ResNet-56, not a model trained on 180 images
    for name in ("report.md", "modularity_curve.png", "model/model.safetensors"):
        assert (out / name).is_file(), name


def test_a_run_after_a_bench_on_the_same_setting_skips_pretraining(tmp_path, monkeypatch):
    """`layerprune bench` trains the setting's base into the cache; `layerprune run` on the same
    recipe (model, data, pretraining, seed) takes it from there instead of pretraining again."""
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "cache"))
    recipe = ROOT / "recipes/bench_small.yaml"
    shared = ["pretrain.epochs=1", "data.calibration.samples=32", "prune.repair_batches=2", "eval.latency=false"]
    bench = runner.invoke(app, ["bench", str(recipe), "--out", str(tmp_path / "bench"), *_sets(
        [*shared, "bench.criteria=[tail]", "bench.budgets=[{k: 1}]", "bench.seeds=[0]", "bench.width=false",
         "bench.finetune_epochs=0"])])
    assert bench.exit_code == 0, bench.output
    (weights,) = (tmp_path / "cache" / "bases").glob("*/pretrained.pth")

    out = tmp_path / "run"
    run = runner.invoke(app, ["run", str(recipe), "--out", str(out), *_sets([*shared, "finetune.epochs=0"])])
    assert run.exit_code == 0, run.output
    assert f"pretrain: skipped, the base model layerprune bench trained for this key" in run.output
    assert str(weights) in run.output and "pretrain epoch" not in run.output
    assert (out / "pretrained.pth").read_bytes() == weights.read_bytes()
    record = json.loads((out / "pretrain.json").read_text())
    assert record["cache"] == str(weights) and len(record["history"]) == 1
    assert not (out / "pretrain.ckpt").exists() and not (out / "metrics.csv").exists()  # nothing trained
    base = json.loads((tmp_path / "bench" / "settings" / "bench_small" / "base.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["base"]["accuracy"] == pytest.approx(base["accuracy"])

    # another pretraining is another key: trained in the run, not taken from the cache
    other = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run2"),
                                *_sets([*shared, "finetune.epochs=0", "pretrain.lr=0.05"])])
    assert other.exit_code == 0, other.output
    assert "pretrain: skipped" not in other.output
    assert "cache" not in json.loads((tmp_path / "run2" / "pretrain.json").read_text())

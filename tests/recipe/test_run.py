"""The quickstart recipe end to end (with small overrides), resume, and run-directory rules."""

import csv
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.errors import LayerpruneError
from layerprune.recipe import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
SMALL = ["pretrain.epochs=2", "finetune.epochs=1", "data.calibration.samples=64",
         "data.calibration.batches=2", "prune.repair_batches=4", "eval.latency=false"]
FINISHED = [*SMALL, "export.formats=[onnx]"]
runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quickstart"
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), *sum((["--set", s] for s in FINISHED), [])])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_quickstart_writes_every_output(finished_run):
    out, _ = finished_run
    for name in ("recipe.yaml", "scores.json", "modularity_curve.png", "plan.json", "prune.json",
                 "metrics.json", "metrics.csv", "training.png", "report.md", "model/config.json",
                 "model/model.safetensors", "model/README.md", "state.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "state.json").read_text())["done"] == [
        "pretrain", "score", "select", "prune", "finetune", "eval", "export"]
    assert not list(out.glob("**/*.tmp")) and not list(out.glob(".*"))  # nothing half-written


def test_quickstart_metrics_follow_the_plan(finished_run):
    out, output = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert metrics["removed"] == plan["removed"] and plan["removed"]
    assert plan["rule"] == {"rule": "budget", "macs": 0.4}
    assert metrics["macs_reduction"] >= 0.4 - 0.02  # the plan's estimate, measured on the pruned model
    assert metrics["pruned"]["params"] < metrics["base"]["params"]
    step = metrics["prune_steps"][0]
    assert {"after_surgery", "after_repair"} <= set(step)
    assert "after BatchNorm repair" in output and "blocks removed" in output


def test_exported_model_loads_and_matches_the_metrics(finished_run):
    import layerprune
    from layerprune.data import make_loader
    from layerprune.train import evaluate

    out, _ = finished_run
    model = layerprune.load_pruned(out / "model")
    metrics = json.loads((out / "metrics.json").read_text())
    test = layerprune.build_dataset("digits").test
    assert evaluate(model, make_loader(test, 256)).accuracy == pytest.approx(metrics["pruned"]["accuracy"])


def test_rerunning_a_finished_run_resumes_and_changes_nothing(finished_run):
    out, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), *sum((["--set", s] for s in FINISHED), [])])
    assert result.exit_code == 0, result.output
    assert "done earlier" in result.output
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = [p.name for p in before if after.get(p) != before[p]]
    assert changed == []


def test_a_different_recipe_never_overwrites_a_run(finished_run):
    out, _ = finished_run
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), "--set", "finetune.epochs=3"])
    assert result.exit_code == 2
    assert "holds a run of a different recipe" in result.output and "--fresh" in result.output


def test_a_run_saved_before_keys_were_added_still_resumes(finished_run, tmp_path):
    import shutil

    import yaml

    out = tmp_path / "older"
    shutil.copytree(finished_run[0], out)
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    del saved["device"], saved["finetune"]["precision"], saved["data"]["on_device"]  # newer keys, at defaults
    del saved["logging"], saved["export"]["atol"], saved["export"]["rtol"]
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), *sum((["--set", s] for s in FINISHED), [])])
    assert result.exit_code == 0, result.output
    assert result.output.count("done earlier") == 7


class Interrupt(Exception):
    pass


def test_interrupted_finetune_resumes_from_its_last_epoch(tmp_path):
    recipe = load_recipe(QUICKSTART, [*SMALL, "finetune.epochs=2", "pretrain.epochs=1", "logging.tensorboard=true"])
    out = tmp_path / "run"
    lines: list[str] = []

    def stop_after_first_finetune_epoch(msg: str) -> None:
        lines.append(msg)
        if msg.startswith("finetune epoch 1/2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        run_recipe(recipe, out=str(out), log=stop_after_first_finetune_epoch)
    state = json.loads((out / "state.json").read_text())["done"]
    assert state == ["pretrain", "score", "select", "prune"]
    assert (out / "finetune.ckpt").is_file() and not (out / "metrics.json").exists()
    scores_before = (out / "scores.json").read_bytes()

    resumed: list[str] = []
    result = run_recipe(recipe, out=str(out), log=resumed.append)
    assert any("prune (done earlier)" in line for line in resumed)
    assert not any(line.startswith("finetune epoch 1/2") for line in resumed)  # not trained again
    assert any(line.startswith("finetune epoch 2/2") for line in resumed)
    history = json.loads((out / "finetune.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert (out / "scores.json").read_bytes() == scores_before  # no lost or rewritten outputs
    assert result.metrics["removed"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))  # one row per epoch, none twice after resume
    assert [(r["stage"], r["epoch"]) for r in rows] == [("pretrain", "1"), ("finetune", "1"), ("finetune", "2")]
    assert float(rows[2]["train_loss"]) == pytest.approx(history[1]["train_loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("finetune/train_loss")] == [1, 2]
    assert [e.step for e in events.Scalars("pretrain/val_accuracy")] == [1]


def test_the_export_stage_writes_checked_onnx_from_the_runs_own_samples(finished_run):
    out, _ = finished_run
    report = json.loads((out / "model" / "export" / "export.json").read_text())
    assert (out / "model" / "export" / "model.onnx").is_file()
    assert report["samples"] == "64 samples of the run's evaluation split"
    assert [c["format"] for c in report["checks"]] == ["onnx"] and report["checks"][0]["passed"]


def test_metrics_csv_has_one_row_per_epoch_of_each_stage(finished_run):
    out, _ = finished_run
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert list(rows[0]) == ["stage", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("pretrain", 1), ("pretrain", 2), ("finetune", 1)]
    pretrain = json.loads((out / "pretrain.json").read_text())["history"]
    assert [float(r["val_acc"]) for r in rows[:2]] == pytest.approx([h["val_accuracy"] for h in pretrain])
    assert "training.png" in (out / "report.md").read_text()


def test_model_card_holds_what_the_run_measured(finished_run):
    out, _ = finished_run
    card = (out / "model" / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.startswith("---\nlibrary_name: timm")
    assert f"{100 * metrics['pruned']['accuracy']:.2f}%" in card and f"{metrics['pruned']['params']:,}" in card
    assert "`modularity` criterion" in card and "digits" in card and "budget macs 0.4" in card
    assert all(f"`{name}`" in card for name in metrics["removed"])
    assert f"layerprune run {out / 'recipe.yaml'}" in card


def test_epoch_lines_stay_whole_when_logged_to_a_file(finished_run):
    _, output = finished_run  # CliRunner's output is not a terminal, like a CI log or a redirect
    lines = [line for line in output.splitlines() if line.startswith("pretrain epoch")]
    assert len(lines) == 2 and all("val_acc" in line and line.endswith("s") for line in lines)


def test_fresh_starts_over_beside_the_old_run(tmp_path):
    recipe = load_recipe(QUICKSTART, [*SMALL, "pretrain.epochs=0", "finetune.epochs=0"])
    first = run_recipe(recipe, out=str(tmp_path / "q"), log=lambda m: None)
    second = run_recipe(recipe, out=str(tmp_path / "q"), fresh=True, log=lambda m: None)
    assert first.run_dir.path == tmp_path / "q" and second.run_dir.path == tmp_path / "q-2"
    assert (tmp_path / "q" / "metrics.json").is_file() and (tmp_path / "q-2" / "metrics.json").is_file()


def test_scratch_recipe_without_cifar_exits_2_in_seconds_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = runner.invoke(app, ["run", str(ROOT / "recipes/resnet56_cifar_scratch.yaml")])
    assert result.exit_code == 2
    assert time.perf_counter() - start < 30
    assert f"{tmp_path / 'data' / 'cifar-10-batches-py'}" in result.output and "download: true" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # a run that cannot start leaves nothing behind


def test_a_budget_no_plan_can_meet_exits_2_before_training(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(tmp_path / "r"),
                                 "--set", "select.params.macs=0.95"])
    assert result.exit_code == 2
    assert f"{QUICKSTART}: 1 problem" in result.output  # the file, as for schema problems
    assert "select.params.macs: 0.95 is out of reach" in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_protected_block_is_refused(tmp_path):
    recipe = load_recipe(QUICKSTART, ["select.protect=[layer9.9]"])
    with pytest.raises(LayerpruneError, match="select.protect: unknown block 'layer9.9'"):
        run_recipe(recipe, out=str(tmp_path / "r"), log=lambda m: None)


def test_fp16_on_the_cpu_gets_a_warning_naming_the_key_at_preflight():
    from layerprune.recipe.runner import Runner

    lines: list[str] = []
    Runner(load_recipe(QUICKSTART, ["finetune.precision=fp16", "device=cpu"]), log=lines.append).preflight()
    assert len(lines) == 1 and "finetune.precision: fp16 has no fast CPU kernels" in lines[0]
    lines.clear()
    Runner(load_recipe(QUICKSTART, ["finetune.precision=bf16", "device=cpu"]), log=lines.append).preflight()
    assert lines == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_refused_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(tmp_path / "r"), "--set", "device=cuda:1"])
    assert result.exit_code == 2 and "device: 'cuda:1' requested but CUDA is not available" in result.output
    assert not (tmp_path / "r").exists()


def test_iterative_pruning_with_distillation_and_a_plugin_criterion(tmp_path):
    plugin = ROOT / "plugins/single_file/entropy_gain.py"
    recipe = load_recipe(QUICKSTART, [*SMALL, "pretrain.epochs=1", "prune.steps=2", "prune.epochs_between=1",
                                      "finetune.distill.enabled=true", f"plugins=[{plugin}]",
                                      "criterion.name=entropy_gain", "criterion.params={k: 5}"])
    result = run_recipe(recipe, out=str(tmp_path / "it"), log=lambda m: None)
    out = result.run_dir.path
    steps = json.loads((out / "prune.json").read_text())["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    planned = json.loads((out / "plan.json").read_text())["removed"]
    assert sum(len(s["removed"]) for s in steps) == len(planned)  # the plan's count, in two steps
    assert len(steps[0]["removed"]) >= 1 and len(steps[1]["removed"]) >= 1
    assert "finetune" in steps[0] and "finetune" not in steps[1]
    assert (out / "step1_scores.json").is_file() and (out / "step2_scores.json").is_file()
    assert json.loads((out / "step2_scores.json").read_text())["criterion"] == "entropy_gain"
    assert sorted(result.metrics["removed"]) == sorted(steps[0]["removed"] + steps[1]["removed"])

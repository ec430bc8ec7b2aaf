"""The paper's command, ``layerprune run recipes/resnet56_cifar.yaml``: the published checkpoint by
URL (served here by a real HTTP server on 127.0.0.1) is the base, run to its report; offline, it
stops in one line per thing it could not fetch, each saying which ``--set`` gives a local file."""

import json
from pathlib import Path

import torchvision
import yaml
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.models.remote import cache_dir

ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ROOT / "recipes/resnet56_cifar.yaml"
R56 = "resnet56-4bfd9763.th"
runner = CliRunner()


def _image_folder(root: Path, calibration: dict) -> str:
    """``--set data=...``: the recipe's data section for a CIFAR-10 image folder (its own
    normalisation kept), as the recipe's header shows."""
    data = yaml.safe_load(HEADLINE.read_text())["data"]
    options = {"input_size": 32, "augment": "crop_flip", "in_memory": True, "val_fraction": 0.1,
               "mean": data["options"]["mean"], "std": data["options"]["std"]}
    section = {"dataset": "imagefolder", "root": str(root), "options": options, "calibration": calibration}
    return "data=" + yaml.safe_dump(section, default_flow_style=True, width=10_000).strip()


def test_the_headline_recipe_runs_from_the_checkpoint_url_to_its_report(tmp_path, checkpoint_server, cifar_jpeg_subset):
    out = tmp_path / "run"
    sets = [f"model.checkpoint={checkpoint_server.url(R56)}",
            _image_folder(cifar_jpeg_subset, {"split": "val", "samples": 10, "batches": 2}),
            "finetune.epochs=1", "prune.repair_batches=1", "eval.latency=false"]
    result = runner.invoke(app, ["run", str(HEADLINE), "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert (cache_dir() / R56).is_file()  # fetched into torch hub's cache
    assert not (out / "pretrain.json").exists()  # the checkpoint is the base: nothing is pretrained
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert plan["rule"] == {"rule": "threshold", "threshold": 0.03} and metrics["removed"] == plan["removed"]
    assert metrics["base"]["accuracy"] > 0.6  # the published ResNet-56 on the JPEG test images, unchanged
    assert metrics["pruned"]["params"] < metrics["base"]["params"]
    for name in ("report.md", "modularity_curve.png", "model/model.safetensors", "scores.json"):
        assert (out / name).is_file(), name
    # a rerun resumes from the run directory: nothing is fetched again
    served = checkpoint_server.requests
    checkpoint_server.stop()
    again = runner.invoke(app, ["run", str(HEADLINE), "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert again.exit_code == 0, again.output
    assert checkpoint_server.requests == served


def test_offline_the_headline_recipe_says_what_it_could_not_fetch(tmp_path, monkeypatch):
    # Hosts under .invalid never resolve (RFC 2606): no network, whatever this machine has.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "https://data.layerprune.invalid/cifar-10-python.tar.gz")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    url = f"https://checkpoints.layerprune.invalid/{R56}"
    result = runner.invoke(app, ["run", str(HEADLINE), "--set", f"model.checkpoint={url}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"error: {HEADLINE}: 2 problems"
    data, checkpoint = (line.strip() for line in lines[1:])
    assert data.startswith("data: cifar10: https://data.layerprune.invalid/cifar-10-python.tar.gz: download failed")
    assert data.endswith("--set data.root=FOLDER")
    assert checkpoint.startswith(f"model.checkpoint: {url}: cannot be reached")
    assert checkpoint.endswith("--set model.checkpoint=PATH")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torch_home"]  # no data/ and no runs/ left behind
    assert list((tmp_path / "torch_home").rglob("*.th")) == []

"""An output location that cannot be written, or that fills up, gives one clear error and leaves
nothing half-written; earlier outputs stay as they were. (Tests run as root, where ``chmod``
does not stop writes: an unwritable location is a path whose parent is a regular file, and a
full disk is a file size limit, RLIMIT_FSIZE, on a fresh process.)"""

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.lock import LOCK_FILE
from layerprune.surgery import PruneSpec, remove_blocks, save_pruned

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
TINY = ["pretrain.epochs=1", "finetune.epochs=1", "data.options={val_fraction: 0.1, test_fraction: 0.6}",
        "data.calibration.samples=64", "data.calibration.batches=1", "prune.repair_batches=2", "eval.latency=false"]
runner = CliRunner()


def _sets(overrides):
    return [a for s in overrides for a in ("--set", s)]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned")
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    model = remove_blocks(model, ["layer1.1", "layer2.2"], torch.zeros(1, 1, 32, 32))
    save_pruned(model, PruneSpec.for_model(model, "cifar_resnet20", {"num_classes": 10, "in_chans": 1}), root / "model")
    return root / "model"


@pytest.mark.parametrize("command", ["run", "bench", "export"])
def test_an_output_under_a_file_is_one_error_naming_it_and_nothing_is_written(tmp_path, command, pruned_folder):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was expected\n")
    out = blocker / "sub" / "run"
    args = {"run": ["run", str(QUICKSTART), *_sets(TINY)],
            "bench": ["bench", str(ROOT / "recipes/bench_small.yaml")],
            "export": ["export", str(pruned_folder), "--format", "onnx", "--no-latency"]}[command]
    before = _fingerprint(pruned_folder)
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"cannot write {out}" in result.output and f"{blocker} is a file, not a folder" in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert blocker.read_text() == "a file where a folder was expected\n"
    assert _fingerprint(pruned_folder) == before


def _limited(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """``layerprune ARGS`` in a process that may write no file beyond ``max_bytes`` (a full disk)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "layerprune", *args], cwd=ROOT, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)


def _one_error(done: subprocess.CompletedProcess, path: Path) -> None:
    assert done.returncode == 1, done.stdout + done.stderr  # not bad input: the storage is full
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {path}: File too large" in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_full_disk_during_a_run_is_one_error_and_nothing_half_written(tmp_path):
    out = tmp_path / "run"
    done = _limited(["run", str(QUICKSTART), "--out", str(out), *_sets(TINY)], max_bytes=200_000)
    _one_error(done, out / "pretrain.ckpt")  # the first file larger than the limit
    assert not [p for p in out.rglob(".*")], "temporary files or the lock were left behind"
    assert not (out / "pretrain.ckpt").exists() and not (out / "state.json").exists()
    assert (out / "recipe.yaml").is_file()  # what was written whole stays, for the rerun to resume


def test_a_full_disk_during_an_export_keeps_the_earlier_export(tmp_path, pruned_folder):
    out = tmp_path / "export"
    first = runner.invoke(app, ["export", str(pruned_folder), "--format", "onnx", "--no-latency", "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = _fingerprint(out)
    assert "model.onnx" in before
    done = _limited(["export", str(pruned_folder), "--format", "onnx", "--no-latency", "--out", str(out)],
                    max_bytes=50_000)
    _one_error(done, out / "model.onnx")
    assert _fingerprint(out) == before  # the earlier export, byte for byte
    assert not [p for p in out.rglob(".*")]

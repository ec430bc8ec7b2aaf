"""Exports of pruned models (ONNX through onnxruntime, traced TorchScript, torch.export), each
reloaded from its file and compared with PyTorch on real digits samples at a batch size other than
the one it was traced with; failures and missing extras as the command line reports them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.errors import ExportMismatchError
from layerprune.export import FORMATS, Tolerance, export_model
from layerprune.surgery import PruneSpec, remove_blocks, save_pruned

runner = CliRunner()
VIT_ARGS = {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 48, "num_heads": 3, "in_chans": 1,
            "num_classes": 10}


def _samples(digits, n=24):
    return torch.stack([digits.test[i][0] for i in range(n)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits, _trained_resnet20):
    """A pruned, trained ResNet-20 and a pruned timm ViT, saved as pruned-model folders."""
    root = tmp_path_factory.mktemp("pruned")
    x = _samples(digits)
    resnet = remove_blocks(_trained_resnet20, ["layer1.1", "layer2.2"], x)
    save_pruned(resnet, PruneSpec.for_model(resnet, "cifar_resnet20", {"num_classes": 10, "in_chans": 1}),
                root / "resnet")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **VIT_ARGS).eval()
    vit = remove_blocks(vit, ["blocks.1", "blocks.2"], x)
    save_pruned(vit, PruneSpec.for_model(vit, "vit_tiny_patch16_224", VIT_ARGS), root / "vit")
    return {"resnet": (root / "resnet", resnet), "vit": (root / "vit", vit)}


def _reload(fmt, path):
    """Each file through its own runtime, as a user would load it."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_every_format_reloads_and_matches_pytorch_on_real_digits(folders, digits, kind):
    folder, model = folders[kind]
    x = _samples(digits)
    result = export_model(folder, list(FORMATS), samples=x, latency=False, log=lambda m: None)
    assert [c.format for c in result.checks] == list(FORMATS) and all(c.passed for c in result.checks)
    report = json.loads((folder / "export" / "export.json").read_text())
    assert report["tolerance"]["atol"] == Tolerance().atol and len(report["checks"]) == 3
    other = x[:5]  # the files were traced at batch 2: the batch dimension is dynamic
    with torch.inference_mode():
        expected = model.eval()(other)
        for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt"), ("exported", "model.pt2")):
            got = _reload(fmt, folder / "export" / name)(other)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3, msg=fmt)


def test_latency_is_reported_for_eager_and_onnxruntime_pruned_and_base(folders, digits, tmp_path):
    folder, _ = folders["resnet"]
    result = export_model(folder, ["onnx"], out=tmp_path / "ex", samples=_samples(digits), batch_sizes=(1, 8),
                          log=lambda m: None)
    seen = {(r["model"], r["runtime"], r["batch_size"]) for r in result.latency}
    assert seen == {(m, rt, b) for m in ("pruned", "base") for rt in ("pytorch eager", "onnxruntime") for b in (1, 8)}
    assert all(r["median_ms"] > 0 and r["threads"] == torch.get_num_threads() and r["warmup"] > 0
               for r in result.latency)
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["export.json", "model.onnx"]  # base: no files


def test_the_command_exports_a_folder(folders):
    folder, _ = folders["resnet"]
    result = runner.invoke(app, ["export", str(folder), "--format", "torchscript", "--no-latency",
                                 "--out", str(folder / "cli")])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "cli" / "export.json").read_text())
    assert report["checks"][0]["format"] == "torchscript" and report["checks"][0]["passed"]
    assert report["samples"].startswith("64 random inputs of size 1 × 32 × 32")  # a bare folder: no run data


def test_an_export_beyond_the_tolerance_exits_1_saying_by_how_much_and_writes_nothing(folders, tmp_path):
    folder, _ = folders["vit"]
    result = runner.invoke(app, ["export", str(folder), "--format", "onnx", "--atol", "0", "--rtol", "0",
                                 "--no-latency", "--out", str(tmp_path / "ex")])
    assert result.exit_code == 1, result.output
    assert "differ from PyTorch's by up to" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ex" / "model.onnx").exists()
    with pytest.raises(ExportMismatchError, match=r"by up to \d"):
        export_model(folder, ["onnx"], out=tmp_path / "ex", tolerance=Tolerance(0, 0), latency=False, log=lambda m: None)


def test_a_missing_extra_is_one_line_naming_it_exit_2(folders):
    folder, _ = folders["resnet"]
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.argv = ['layerprune', 'export', sys.argv[1], "
            "'--format', 'onnx']; from layerprune.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "[deploy]" in lines[0] and "pip install 'layerprune[deploy]'" in lines[0]


def test_unknown_formats_and_folders_are_refused(folders, tmp_path):
    folder, _ = folders["resnet"]
    result = runner.invoke(app, ["export", str(folder), "--format", "onxx"])
    assert result.exit_code == 2 and "did you mean 'onnx'" in result.output
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "neither a pruned-model folder" in result.output

import subprocess
import sys

from typer.testing import CliRunner

import layerprune
from layerprune.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"layerprune {layerprune.__version__}"


def test_models_lists_the_cifar_models_by_default():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("cifar_resnet20", "cifar_resnet110", "cifar_vgg19_bn"):
        assert name in result.stdout


def test_models_with_params_counts_them():
    result = runner.invoke(app, ["models", "cifar_resnet20", "--params"])
    assert result.exit_code == 0 and "269,722" in result.stdout


def test_unknown_model_exits_2_with_suggestion():
    result = runner.invoke(app, ["models", "cifar_resnet65"])
    assert result.exit_code == 2
    assert "did you mean 'cifar_resnet56'" in result.stderr
    assert "Traceback" not in result.output


def test_datasets_lists_all_and_shows_options():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0
    for name in layerprune.list_datasets():
        assert name in result.stdout
    result = runner.invoke(app, ["datasets", "mnist5k"])
    assert result.exit_code == 0 and "val_fraction" in result.stdout


def test_unknown_dataset_exits_2_with_suggestion():
    result = runner.invoke(app, ["datasets", "mnist"])
    assert result.exit_code == 2
    assert "did you mean 'mnist5k'" in result.stderr


def test_module_entry_point_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "layerprune", "datasets", "cifar"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown dataset 'cifar'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_inspect_json_has_the_documented_shape():
    import json

    result = runner.invoke(app, ["inspect", "cifar_resnet56", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "cifar_resnet56" and data["params"] == 853_018
    blocks = {b["name"]: b for b in data["blocks"]}
    assert {"name", "removable", "reason", "params", "macs", "in_shape", "out_shape"} <= set(blocks["layer1.0"])
    assert sum(b["removable"] for b in data["blocks"]) == 25
    assert blocks["layer2.0"]["collapsible"] and not blocks["layer2.0"]["removable"]


def test_inspect_table_model_args_and_input_size():
    result = runner.invoke(app, ["inspect", "resnet18", "--input-size", "3", "64", "64", "-a", "num_classes=7"])
    assert result.exit_code == 0, result.output
    assert "5 removable, 3 collapsible" in result.stdout
    assert "11,180,103" in result.stdout  # resnet18 with a 7-class head


def test_inspect_with_checkpoint(tmp_path):
    import timm
    import torch

    path = tmp_path / "r20.pth"
    torch.save({"state_dict": timm.create_model("cifar_resnet20").state_dict()}, path)
    assert runner.invoke(app, ["inspect", "cifar_resnet20", "--checkpoint", str(path)]).exit_code == 0
    result = runner.invoke(app, ["inspect", "cifar_resnet56", "--checkpoint", str(path)])
    assert result.exit_code == 2 and "missing" in result.stderr


def test_inspect_bad_input_exits_2():
    result = runner.invoke(app, ["inspect", "cifar_resnet5"])
    assert result.exit_code == 2 and "did you mean" in result.stderr
    result = runner.invoke(app, ["inspect", "cifar_resnet20", "-a", "shortcut"])
    assert result.exit_code == 2 and "--model-arg 'shortcut': expected KEY=VALUE" in result.stderr


def test_inspect_bad_model_args_and_input_size_are_one_line_errors():
    for args, message in (
        (["cifar_resnet20", "-a", "bogus=1"], "cifar_resnet20: CifarResNet.__init__() got an unexpected keyword argument 'bogus'"),
        (["cifar_resnet20", "-a", "shortcut=C"], "cifar_resnet20: shortcut must be 'A' or 'B'"),
        (["vit_tiny_patch16_224", "--input-size", "3", "32", "32"], "forward pass failed on input (1, 3, 32, 32)"),
    ):
        result = runner.invoke(app, ["inspect", *args])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1

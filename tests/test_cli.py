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

"""A broken image folder stops `layerprune run` with one line naming the path or key, exit 2, and
no run directory (or, for a file that breaks mid-training, the earlier stages' outputs only)."""

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from layerprune.cli import app

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    rng = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for name in ("a", "b"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "images" / split / name / f"{i}.jpg")
    return tmp_path / "images"


def _run(tmp_path, folder, **options):
    recipe = {
        "model": {"name": "cifar_resnet20"},
        "data": {"dataset": "imagefolder", "root": str(folder), "batch_size": 8,
                 "options": {"input_size": 32, "augment": "crop_flip", "val_fraction": 0.25, **options},
                 "calibration": {"samples": 4, "batches": 1}},
        "pretrain": {"epochs": 1, "lr": 0.01},
        "select": {"rule": "count", "params": {"k": 1}},
        "finetune": {"epochs": 1},
        "eval": {"latency": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    return runner.invoke(app, ["run", str(path), "--out", str(out)]), out


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_mean_of_the_wrong_length(tmp_path, folder):
    result, out = _run(tmp_path, folder, mean=[0.5, 0.5])
    line = _one_line_error(result)
    assert "mean has 2 values, but the images have 3 channels" in line and not out.exists()


def test_class_folders_that_differ(tmp_path, folder):
    (folder / "test" / "b").rename(folder / "test" / "c")
    result, out = _run(tmp_path, folder)
    line = _one_line_error(result)
    assert str(folder / "train") in line and "only in test/: c" in line and not out.exists()


def test_an_empty_class_folder(tmp_path, folder):
    (folder / "train" / "empty").mkdir()
    (folder / "test" / "empty").mkdir()
    result, out = _run(tmp_path, folder)
    line = _one_line_error(result)
    assert str(folder / "train") in line and "empty" in line and not out.exists()


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_corrupt_image(tmp_path, folder, in_memory):
    bad = folder / "train" / "b" / "5.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    result, out = _run(tmp_path, folder, in_memory=in_memory)
    line = _one_line_error(result)
    assert f"cannot read image {bad}" in line
    if in_memory:  # decoded before anything runs
        assert not out.exists()
    else:  # found while pretraining: nothing of that stage is written
        assert not (out / "pretrained.pth").exists()

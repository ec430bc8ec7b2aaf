import json

import pytest
import torch
from typer.testing import CliRunner

from layerprune.cli import app

runner = CliRunner()
FAST = ["--samples", "64", "--batches", "1"]


@pytest.fixture
def checkpoint(trained_resnet20, tmp_path):
    path = tmp_path / "resnet20_digits.pth"
    torch.save(trained_resnet20.state_dict(), path)
    return str(path)


def test_score_json_has_scores_rule_and_removed_blocks(checkpoint, tmp_path):
    plot = tmp_path / "curve.png"
    result = runner.invoke(app, ["score", "cifar_resnet20", "--data", "digits", "--checkpoint", checkpoint,
                                 *FAST, "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["criterion"] == "modularity" and report["rule"] == {"rule": "threshold", "threshold": 0.03}
    assert len(report["scores"]) == 9
    below = {b for b, s in report["scores"].items() if s < 0.03}
    assert set(report["removed"]) <= below
    assert report["calibration"] == {"split": "val", "samples": 64, "batches": 1, "seed": 0}
    assert report["diagnostics"]["curve"]["probes"][0] == "stem"
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_score_table_with_another_criterion_and_rule(checkpoint):
    result = runner.invoke(app, ["score", "cifar_resnet20", "-d", "digits", "--checkpoint", checkpoint,
                                 "-c", "tail", "--rule", "count", "-r", "k=2", *FAST])
    assert result.exit_code == 0, result.output
    assert "criterion tail" in result.stdout
    assert "rule count(k=2) removes 2 blocks" in result.stdout


def test_score_bar_chart_for_criteria_without_a_curve(checkpoint, tmp_path):
    plot = tmp_path / "bars.png"
    result = runner.invoke(app, ["score", "cifar_resnet20", "-d", "digits", "--checkpoint", checkpoint,
                                 "-c", "magnitude", "--plot", str(plot), *FAST])
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("args,message", [
    (["-c", "modularit"], "did you mean 'modularity'"),
    (["-p", "kk=3"], "kk: unknown parameter"),
    (["--rule", "count", "-r", "k=50"], "k=50 but only"),
    (["--split", "holdout"], "split"),
    (["--data", "nodata"], "unknown dataset 'nodata'"),
    (["-p", "k"], "--param 'k': expected KEY=VALUE"),
    (["--device", "gpu7"], "device: 'gpu7'"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    base = ["score", "cifar_resnet20", *FAST]
    if "--data" not in args:
        base += ["--data", "digits"]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_criteria_lists_builtins_with_origin():
    result = runner.invoke(app, ["criteria", "--json"])
    assert result.exit_code == 0
    listed = {c["name"]: c for c in json.loads(result.stdout)}
    assert {"modularity", "random", "tail", "magnitude", "block_influence", "cka", "linear_probe",
            "ablation", "taylor", "sr_init"} <= set(listed)
    assert listed["modularity"]["origin"] == "builtin"
    assert all(c["description"] for c in listed.values())

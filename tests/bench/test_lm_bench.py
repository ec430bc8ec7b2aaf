"""The bench on language models: trials measured by perplexity (the task's metric, lower is
better), ranked with the lowest first, reported in perplexity; suites that would mix metrics
refused."""

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune.bench.stats import leaderboard  # noqa: E402
from layerprune.bench.suite import load_suite  # noqa: E402
from layerprune.cli import app  # noqa: E402
from layerprune.recipe import RecipeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

TINY_LLAMA = {"hf_config": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}}
SUITE = {
    "name": "lm_tiny",
    "defaults": {
        "seed": 0,
        "data": {"dataset": "text", "options": {"corpus": "pydoc", "seq_len": 32, "vocab_size": 300},
                 "batch_size": 16, "eval_batch_size": 64, "calibration": {"samples": 8, "batches": 2}},
        "pretrain": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "batches_per_epoch": 15},
        "finetune": {"epochs": 1, "optimizer": "adamw", "lr": 0.001, "batches_per_epoch": 3},
        "eval": {"latency": False},
        "bench": {"criteria": ["tail", "angular", "random"], "budgets": [{"layers": 0.5}], "seeds": [0, 1],
                  "width": False, "oracle": "angular", "reference": "tail"},
    },
    "settings": [{"name": "pydoc_llama4", "model": TINY_LLAMA}],
}


def write(tmp_path: Path, doc: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_bench")
    out = tmp / "bench"
    result = runner.invoke(app, ["bench", str(write(tmp, SUITE)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_an_lm_bench_measures_every_trial_by_perplexity(lm_bench):
    out, _ = lm_bench
    setting = out / "settings" / "pydoc_llama4"
    base = json.loads((setting / "base.json").read_text())
    assert (base["metric"], base["lower_is_better"]) == ("perplexity", True)
    assert base["value"] == pytest.approx(math.exp(base["loss"]))
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3 * 2
    for t in trials:
        assert t["after_finetune"] == pytest.approx(math.exp(t["loss"]))  # perplexity, not next-token accuracy
        assert t["after_surgery"] > 1 and t["before_finetune"] == t["after_surgery"]  # no BatchNorm repair
        assert len(t["removed"]) == 2 and all(name.startswith("model.layers.") for name in t["removed"])


def test_the_lm_leaderboard_ranks_the_lowest_perplexity_first(lm_bench):
    out, _ = lm_bench
    report = json.loads((out / "trials.json").read_text())
    assert (report["metric"], report["lower_is_better"]) == ("perplexity", True)
    stored = report["leaderboards"]["after_finetune"]
    again = leaderboard(report["trials"], "tail", "after_finetune", ["tail", "angular", "random"], lower_is_better=True)
    assert json.dumps(again, sort_keys=True) == json.dumps(stored, sort_keys=True)
    assert json.dumps(again) != json.dumps(leaderboard(report["trials"], "tail", "after_finetune",
                                                       ["tail", "angular", "random"]))
    # Within every cell, rank 1 goes to the lowest perplexity: the criterion with the lowest mean
    # over the two seeds has the lowest average rank whenever it is lowest at both seeds.
    by = {}
    for t in report["trials"]:
        by.setdefault(t["seed"], {})[t["criterion"]] = t["after_finetune"]
    best = {min(v, key=v.get) for v in by.values()}
    if len(best) == 1:
        assert stored[0]["criterion"] == best.pop() and stored[0]["rank"] == 1.0


def test_the_lm_reports_speak_perplexity(lm_bench):
    out, output = lm_bench
    md = (out / "report.md").read_text()
    assert "## Leaderboard: perplexity after finetune" in md and "(1 = lowest perplexity)" in md
    assert "| before finetune ppl | after finetune ppl | Δ vs tail (ppl, 95% CI)" in md
    assert "mean perplexity ppl" in md and "accuracy" not in md.split("## Settings")[0]
    assert "Base model: test perplexity" in md
    assert (out / "settings" / "pydoc_llama4" / "perplexity_vs_macs.png").is_file()
    assert "Δ vs tail ppl" in output


def test_a_suite_mixing_perplexity_and_accuracy_is_refused(tmp_path):
    defaults = {k: v for k, v in SUITE["defaults"].items() if k != "data"}
    doc = {**SUITE, "defaults": defaults, "settings": [
        {**SUITE["settings"][0], "data": SUITE["defaults"]["data"]},
        {"name": "digits_resnet20", "model": {"name": "cifar_resnet20"},
         "data": {"dataset": "digits", "options": {"val_fraction": 0.2}, "batch_size": 64,
                  "calibration": {"split": "val", "samples": 50, "batches": 2}}}]}
    with pytest.raises(RecipeError) as info:
        load_suite(write(tmp_path, doc))
    (problem,) = info.value.problems
    assert problem.startswith("settings: their tasks measure different metrics (pydoc_llama4: perplexity, "
                              "digits_resnet20: accuracy)")


def test_the_setting_report_says_which_layers_each_criterion_removed(lm_bench):
    out, _ = lm_bench
    setting = out / "settings" / "pydoc_llama4"
    record = json.loads((setting / "trials.json").read_text())
    layers = [f"model.layers.{i}" for i in range(4)]
    for row in record["removals"]:
        ts = [t for t in record["trials"] if (t["criterion"], t["budget"]) == (row["criterion"], row["budget"])]
        assert row["seeds"] == len(ts) == 2
        assert row["share"] == {b: sum(b in t["removed"] for t in ts) / 2 for b in layers}
        depths = [layers.index(b) / 3 for t in ts for b in t["removed"]]
        assert row["depth"] == pytest.approx(sum(depths) / len(depths))
    tail = next(r for r in record["removals"] if r["criterion"] == "tail")
    assert tail["share"] == {"model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1, "model.layers.3": 1}
    md = (setting / "report.md").read_text()
    assert "## Blocks removed" in md and "| tail | layers0.5 | 0.83 | 2, 3 |  |" in md
    assert (setting / "removals.png").is_file()


@pytest.mark.slow  # a BPE tokenizer trained on 500 KB per setting (about a minute on 2 cores)
@pytest.mark.parametrize("setting", ["lm_shakespeare_llama8", "lm_pydoc_gpt2_8"])
def test_each_lm_small_setting_takes_any_english_text_of_500_kb(setting, tmp_path, monkeypatch):
    """Either setting of the shipped text suite with its text swapped for 500 KB of other English
    (here: the standard library's documentation, repeated to size) passes the bench's preflight:
    the tokenizer trains, and the val split holds more windows than a seed's calibration draw."""
    from layerprune.bench.harness import SettingBench
    from layerprune.data.text import pydoc_texts
    from layerprune.recipe.cache import BaseCache
    from layerprune.recipe.rundir import RunDir

    monkeypatch.setenv("LAYERPRUNE_DATA", str(tmp_path))  # the suite's own text is not read
    text = "".join(pydoc_texts())
    swapped = tmp_path / "english.txt"
    swapped.write_text((text * 2)[:500_000], encoding="utf-8")
    overrides = [f"data.options.files=[{swapped}]"] + (["data.options.corpus=null"] if "pydoc" in setting else [])
    (recipe,) = load_suite(ROOT / "recipes/suites/lm_small.yaml", overrides, only=[setting]).recipes
    assert recipe.model.hf_config["model_type"] in ("llama", "gpt2")
    bench = SettingBench(recipe, RunDir(tmp_path / "run", recipe), BaseCache(tmp_path / "cache"), progress=False,
                         log=lambda m: None)
    bench.preflight()  # raises RecipeError naming the problem otherwise
    data = bench.runner.build_data()
    cal = recipe.data.calibration
    assert len(data.split("val")) > cal.samples * cal.batches
    layers = [b for b in bench.runner.preflight() if b.removable]  # the new model's blocks (no base trained)
    assert len(layers) >= 8 and all(b.name.startswith(("model.layers.", "transformer.h.")) for b in layers)


def test_angular_removes_one_run_of_consecutive_layers_as_long_as_the_budget(lm_bench):
    """Gromov et al. remove the run of n consecutive layers whose output is closest in angle to its
    input: with half of 4 layers to remove, the bench scores angular for runs of 2 and removes one
    such run, the one with the lowest stored run score."""
    out, _ = lm_bench
    setting = out / "settings" / "pydoc_llama4"
    for seed in (0, 1):
        stored = json.loads((setting / "scores" / f"angular_n2_s{seed}.json").read_text())
        runs = stored["diagnostics"]["runs"]
        assert runs["n"] == 2
        trial = json.loads((setting / "trials" / f"angular__layers0.5__s{seed}.json").read_text())
        first = min(runs["scores"], key=runs["scores"].get)
        assert trial["removed"] == runs["blocks"][first]
        i = int(trial["removed"][0].rsplit(".", 1)[1])
        assert trial["removed"] == [f"model.layers.{i}", f"model.layers.{i + 1}"]

"""Language models through `layerprune run`: a tiny Llama built from a configuration, trained on
the standard library's documentation, pruned, finetuned and measured by perplexity; its model/
folder loaded by plain transformers in a process that never imports layerprune; the same
run_recipe for a classifier and a language model, each stage asking the task; bad inputs refused
in one line with exit code 2 and nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune.cli import app  # noqa: E402
from layerprune.recipe import load_recipe, run_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

TINY_LM = {
    "name": "tiny_lm", "seed": 0,
    "model": {"hf_config": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}},
    "data": {"dataset": "text", "options": {"corpus": "pydoc", "seq_len": 32, "vocab_size": 300},
             "batch_size": 16, "eval_batch_size": 64, "calibration": {"samples": 8, "batches": 2}},
    "pretrain": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "batches_per_epoch": 15},
    "criterion": {"name": "angular"},
    "select": {"rule": "count", "params": {"k": 2}},
    "finetune": {"epochs": 1, "optimizer": "adamw", "lr": 0.001, "batches_per_epoch": 5},
    "eval": {"latency": False},
}


def write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    out = tmp / "run"
    result = runner.invoke(app, ["run", str(write(tmp, TINY_LM)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_an_lm_run_reports_three_perplexities_and_saves_a_plain_transformers_folder(lm_run):
    out, output = lm_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "causal-lm" and len(metrics["removed"]) == 2
    base, pruned = metrics["base"], metrics["pruned"]
    after_removal = metrics["prune_steps"][-1]["after_surgery"]
    for measured in (base, pruned, after_removal):
        assert measured["perplexity"] > 1 and measured["tokens"] > 0
    assert "after_repair" not in metrics["prune_steps"][-1]  # a language model has no BatchNorm to repair
    assert pruned["params"] < base["params"]
    report = (out / "report.md").read_text()
    for value in (base["perplexity"], pruned["perplexity"], after_removal["perplexity"]):
        assert f"{value:.2f}" in report
    assert "perplexity (test)" in report and "layers removed" in report
    assert "perplexity (test)" in output and "removed 2 blocks: perplexity after surgery" in output
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in (out / "model").iterdir()}


def test_the_model_folder_loads_without_layerprune(lm_run):
    out, _ = lm_run
    metrics = json.loads((out / "metrics.json").read_text())
    code = f"""
import json, sys, torch, transformers
folder = {str(out / "model")!r}
model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
ids = tokenizer("The for statement is used to iterate", return_tensors="pt").input_ids
with torch.no_grad():
    loss = float(model(ids, labels=ids).loss)
print(json.dumps({{"layers": model.config.num_hidden_layers, "found": len(model.model.layers),
                  "params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer), "loss": loss,
                  "imported": "layerprune" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["layers"] == found["found"] == 2 and not found["imported"]
    assert found["params"] == metrics["pruned"]["params"] and found["vocab"] == 300
    assert 0 < found["loss"] < 20


def test_a_classifier_and_a_language_model_run_through_one_run_recipe_and_every_stage_asks_the_task(
        tmp_path, monkeypatch):
    from layerprune.recipe import resources

    real = resources.Resources.task
    asked: dict[str, set[str]] = {}
    stage = ["preflight"]

    class Spy:
        def __init__(self, task):
            self._task = task

        def __getattr__(self, name):
            asked.setdefault(stage[0], set()).add(name)
            return getattr(self._task, name)

    monkeypatch.setattr(resources.Resources, "task", property(lambda self: Spy(real.fget(self))))
    # Every stage must run: a base another test trained into the shared cache would skip pretraining.
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path / "empty-cache"))

    def log(message: str) -> None:
        if "▶" in message:
            stage[0] = message.split("▶ ")[1].split("[")[0].strip()

    image = load_recipe(ROOT / "recipes/quickstart.yaml",
                        ["pretrain.epochs=1", "pretrain.batches_per_epoch=3", "finetune.epochs=1",
                         "finetune.batches_per_epoch=2", "data.calibration.samples=64", "data.calibration.batches=2",
                         "prune.repair_batches=2", "eval.latency=false"])
    language = load_recipe(write(tmp_path, TINY_LM))
    for recipe, kind in ((image, "image-classification"), (language, "causal-lm")):
        asked.clear()
        result = run_recipe(recipe, out=str(tmp_path / kind), log=log)
        assert result.metrics["task"] == kind
        for name in ("pretrain", "score", "prune", "finetune", "eval"):
            assert asked.get(name), f"{kind}: the {name} stage never asked the task"
        assert {"forward", "rows"} <= asked["pretrain"] and "evaluate" in asked["eval"]


@pytest.mark.parametrize("change, expected", [
    ({"model": {"name": "cifar_resnet20"}}, "data.dataset: text is for a language model"),
    ({"data": {"dataset": "digits"}}, "data.dataset: a causal language model trains and is measured on text"),
    ({"model": {"hf_config": {"model_type": "llama", "num_hiden_layers": 2}}},
     "model.hf_config.num_hiden_layers: unknown key of LlamaConfig 'num_hiden_layers'; did you mean 'num_hidden_layers'"),
    ({"model": {"hf_config": {"model_type": "lama"}}}, "model.hf_config.model_type: unknown model type 'lama'"),
    ({"model": {"hf_config": {"num_hidden_layers": 2}}}, "model.hf_config: needs model_type"),
    ({"model": {"hf": "/nonexistent/model"}}, "model.hf: no such folder"),
    ({"model": {"name": "cifar_resnet20", "hf": "gpt2"}}, "model.hf: give one of name (timm), hf"),
    ({"prune": {"width": {"macs": 0.5}}}, "prune.width: channel pruning covers the conv blocks of timm models"),
    ({"export": {"formats": ["onnx"]}}, "export.formats: exports cover timm models"),
    ({"select": {"rule": "budget", "params": {"layers": 1.5}}}, "select.params.layers: must be a fraction in (0, 1)"),
])
def test_a_recipe_that_cannot_run_a_language_model_is_refused_naming_the_key(tmp_path, change, expected):
    recipe = json.loads(json.dumps(TINY_LM))
    for section, value in change.items():
        if section == "model":
            recipe["model"] = value
        else:
            recipe[section] = {**recipe.get(section, {}), **value}
    result = runner.invoke(app, ["run", str(write(tmp_path, recipe)), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    ("Too short for one window.\n".encode(), "fewer than seq_len=32"),
    ("caf\xe9 au lait\n".encode("latin-1") * 2000, "not UTF-8"),
])
def test_bad_text_is_one_line_exit_2_and_nothing_written(tmp_path, content, expected):
    text = tmp_path / "my.txt"
    text.write_bytes(content)
    result = runner.invoke(app, ["run", str(write(tmp_path, TINY_LM)), "--out", str(tmp_path / "run"),
                                 *sets(f"data.options={{files: [{text}], seq_len: 32, vocab_size: 300}}")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output and str(text) in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_tokenizer_is_one_line_exit_2_and_nothing_written(tmp_path):
    result = runner.invoke(app, ["run", str(write(tmp_path, TINY_LM)), "--out", str(tmp_path / "run"),
                                 *sets("data.options.tokenizer=/nonexistent/tokenizer")])
    assert result.exit_code == 2 and "tokenizer '/nonexistent/tokenizer'" in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_criterion_for_another_task_is_refused_when_the_recipe_is_validated(tmp_path, fresh_catalog):
    plugin = tmp_path / "images_only.py"
    plugin.write_text(
        "from layerprune import Criterion, register_criterion\n\n"
        "@register_criterion('images_only')\n"
        "class ImagesOnly(Criterion):\n"
        "    tasks = ('image-classification',)\n\n"
        "    def score(self, ctx):\n"
        "        return {b.name: 0.0 for b in ctx.scorable}\n", encoding="utf-8")
    result = runner.invoke(app, ["run", str(write(tmp_path, TINY_LM)), "--out", str(tmp_path / "run"),
                                 *sets(f"plugins=[{plugin}]", "criterion.name=images_only")])
    assert result.exit_code == 2, result.output
    assert "criterion.name: 'images_only' scores models for image-classification, not causal-lm" in result.output
    assert not (tmp_path / "run").exists()


def test_the_hub_recipe_runs_with_a_local_model_and_text_in_place_of_the_hub_ones(tmp_path):
    """recipes/llama_wikitext2.yaml needs a network and a GPU; here its model is a tiny Llama saved
    with its own tokenizer (the text is tokenized by it: the recipe names none) and its text a
    local file, swapped in with --set. The layers budget removes a quarter of the layers and the
    latency is measured on token ids."""
    import torch
    import transformers

    from layerprune.data.text import pydoc_texts, train_bpe_tokenizer

    text = tmp_path / "doc.txt"
    text.write_text("".join(pydoc_texts())[:150_000], encoding="utf-8")
    tokenizer = train_bpe_tokenizer([text.read_text(encoding="utf-8")], 300)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=4, vocab_size=len(tokenizer), max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(ROOT / "recipes/llama_wikitext2.yaml"), "--out", str(out), *sets(
        f"model.hf={folder}", f"data.options={{files: [{text}], seq_len: 32}}", "data.batch_size=8",
        "data.calibration.samples=8", "finetune.precision=32", "finetune.batches_per_epoch=3", "device=cpu")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["removed"] == [metrics["removed"][0]] and metrics["removed"][0].startswith("model.layers.")
    assert metrics["base"]["latency"]["median_ms"] > 0 and metrics["pruned"]["perplexity"] > 1
    saved = transformers.AutoTokenizer.from_pretrained(out / "model")
    assert saved("def f(): pass")["input_ids"] == tokenizer("def f(): pass")["input_ids"]
    assert f"base_model: {folder}" in (out / "model/README.md").read_text()


@pytest.mark.slow
def test_the_lm_quickstart_as_shipped(tmp_path):
    """recipes/quickstart_lm.yaml as it is (about 2 minutes on 2 cores): 6 layers, 2 removed by
    angular, three perplexities, and a 4-layer model/ with its tokenizer."""
    out = tmp_path / "quickstart_lm"
    result = runner.invoke(app, ["run", str(ROOT / "recipes/quickstart_lm.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["removed"]) == 2 and metrics["speedup"] > 1
    assert metrics["prune_steps"][0]["after_surgery"]["perplexity"] > metrics["base"]["perplexity"]
    config = json.loads((out / "model/config.json").read_text())
    assert config["num_hidden_layers"] == 4 and (out / "model/tokenizer.json").is_file()
    assert "right after surgery" in (out / "report.md").read_text()


def test_layerprune_score_scores_a_saved_language_model_on_text(lm_run):
    out, _ = lm_run
    model = f"hf:{out / 'model'}"
    result = runner.invoke(app, ["score", model, "-d", "text", "--data-arg", "corpus=pydoc", "--data-arg", "seq_len=32",
                                 "-c", "modularity", "-p", "top=8", "--samples", "8", "--batches", "1",
                                 "--rule", "budget", "-r", "layers=0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert sorted(report["scores"]) == ["model.layers.0", "model.layers.1"] and len(report["removed"]) == 1
    wrong = runner.invoke(app, ["score", model, "-d", "digits"])
    assert wrong.exit_code == 2 and "--data: a causal language model is scored on text" in wrong.output


def test_lora_finetuning_merges_the_adapters_into_a_plain_model(tmp_path):
    """finetune.lora trains low-rank adapters on the kept layers' projections through peft and
    merges them before saving: model/ holds no adapter weights and loads with plain transformers,
    without peft being imported; only the projections changed (the embeddings did not)."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(write(tmp_path, TINY_LM)), "--out", str(out),
                                 *sets("finetune.lora={r: 4, alpha: 8}", "finetune.lr=0.01")])
    assert result.exit_code == 0, result.output
    files = {p.name for p in (out / "model").iterdir()}
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    pruned, final = load_file(out / "pruned/model.safetensors"), load_file(out / "model/model.safetensors")
    assert set(final) == set(pruned) and not any("lora" in k for k in final)
    assert all((pruned[k] == final[k]).all() for k in final if "embed" in k or "norm" in k)
    assert any(not (pruned[k] == final[k]).all() for k in final if k.endswith("q_proj.weight"))
    code = f"""
import sys, transformers
model = transformers.AutoModelForCausalLM.from_pretrained({str(out / "model")!r})
print(len(model.model.layers), "peft" in sys.modules, "layerprune" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False", "False"]
    assert "LoRA adapters, rank 4, alpha 8, merged" in (out / "report.md").read_text()


def test_lora_is_refused_for_a_timm_model(tmp_path):
    result = runner.invoke(app, ["run", str(ROOT / "recipes/quickstart.yaml"), "--out", str(tmp_path / "run"),
                                 *sets("finetune.lora={r: 4}")])
    assert result.exit_code == 2 and "finetune.lora: low-rank adapters cover transformers models" in result.output
    assert not (tmp_path / "run").exists()


def test_distillation_from_the_unpruned_language_model(lm_run, tmp_path):
    """finetune.distill on a language model: the KL between the pruned model's and the unpruned
    model's next-token distributions (with the temperature) is mixed into each token's loss, so
    the finetuning follows another course than without it."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(write(tmp_path, TINY_LM)), "--out", str(out),
                                 *sets("finetune.distill={enabled: true, alpha: 0.5, temperature: 2.0}")])
    assert result.exit_code == 0, result.output
    plain = json.loads((lm_run[0] / "finetune.json").read_text())["history"]
    distilled = json.loads((out / "finetune.json").read_text())["history"]
    assert json.loads((out / "prune.json").read_text())["removed"] == json.loads((lm_run[0] / "prune.json").read_text())["removed"]
    assert distilled[0]["train_loss"] != pytest.approx(plain[0]["train_loss"], rel=1e-3)
    assert "with distillation" in (out / "report.md").read_text()


def test_environment_variables_in_text_file_paths_are_expanded(tmp_path, monkeypatch):
    """data.options.files (a list) and splits (a mapping of lists) are path keys: ``$VAR`` in them
    is the environment's value, and an unset one is named with its key, one line."""
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat\n" * 20, encoding="utf-8")
    monkeypatch.setenv("MY_TEXTS", str(tmp_path))
    recipe = {**TINY_LM, "data": {**TINY_LM["data"], "options": {"files": ["${MY_TEXTS}/corpus.txt"], "seq_len": 8,
                                                                 "vocab_size": 300}}}
    loaded = load_recipe(write(tmp_path, recipe))
    assert loaded.data.options["files"] == [str(text)]
    split = {**recipe, "data": {**recipe["data"], "options": {
        "splits": {s: ["$MY_TEXTS/corpus.txt"] for s in ("train", "val", "test")}, "seq_len": 8}}}
    assert load_recipe(write(tmp_path, split)).data.options["splits"]["val"] == [str(text)]
    monkeypatch.delenv("MY_TEXTS")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(write(tmp_path, recipe)), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output and not out.exists()
    assert "data.options.files.0: environment variable MY_TEXTS is not set" in result.output

"""Transformers models in the surgery engine, on tiny random-init configurations of the real
classes: the layer list found from the structure, removal equal to the original with those layers
skipped (logits, and greedy generation through the KV cache), the configuration and per-layer
indices kept consistent, and a saved folder that plain transformers reloads in a process that never
imports layerprune."""

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune import SurgeryError, find_blocks, remove_blocks  # noqa: E402
from layerprune.surgery.hf import layer_indices, layer_list  # noqa: E402

VOCAB = 128
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
             vocab_size=VOCAB, max_position_embeddings=128)
CONFIGS = {
    "llama": ("causal", SMALL),
    "qwen2": ("causal", {**SMALL, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}),
    "mistral": ("causal", {**SMALL, "sliding_window": 8}),
    "gemma3_text": ("causal", {**SMALL, "head_dim": 16, "sliding_window": 8,
                               "layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                                               "full_attention"]}),
    "gpt2": ("causal", dict(n_embd=64, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=128, bos_token_id=0,
                            eos_token_id=0)),
    "bert": ("classification", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=4,
                                    vocab_size=VOCAB, num_labels=3)),
}
LAYERS = {"llama": "model.layers", "qwen2": "model.layers", "mistral": "model.layers", "gemma3_text": "model.layers",
          "gpt2": "transformer.h", "bert": "bert.encoder.layer"}


def tiny(model_type: str):
    task, kwargs = CONFIGS[model_type]
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    auto = transformers.AutoModelForCausalLM if task == "causal" else transformers.AutoModelForSequenceClassification
    torch.manual_seed(0)
    return auto.from_config(config).eval()


def tokens(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def skipped(model, path: str, indices, fn):
    """``fn()`` with the layers ``indices`` of ``model`` passing their input on (the reference)."""
    layers = model.get_submodule(path)

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return type(output)([hidden, *output[1:]]) if isinstance(output, (tuple, list)) else hidden

    handles = [layers[i].register_forward_hook(skip, with_kwargs=True) for i in indices]
    try:
        with torch.no_grad():
            return fn()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_the_layer_list_is_found_and_only_its_layers_are_removable(model_type):
    model = tiny(model_type)
    blocks = find_blocks(model, tokens())
    path = LAYERS[model_type]
    assert layer_list(model)[0] == path
    removable = [b.name for b in blocks if b.removable]
    assert removable == [f"{path}.{i}" for i in range(4)]
    fixed = [b for b in blocks if not b.removable]
    assert fixed and all(b.kind == "fixed" for b in fixed)  # embeddings, final norm, head
    assert blocks[0].kind == "fixed" and "embed" in blocks[0].reason
    assert all(b.params > 0 and b.macs > 0 for b in blocks if b.removable)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_removing_layers_1_and_3_equals_the_original_with_them_skipped(model_type, tmp_path):
    model = tiny(model_type)
    path, x = LAYERS[model_type], tokens()
    reference = skipped(model, path, [1, 3], lambda: model(x).logits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = remove_blocks(model, [f"{path}.1", f"{path}.3"], x)
    assert type(pruned) is type(model)  # still a model of the same class
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original untouched
    assert len(model.get_submodule(path)) == 4 and len(pruned.get_submodule(path)) == 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, reference, atol=1e-5, rtol=0)
    assert pruned.config.num_hidden_layers == 2 and model.config.num_hidden_layers == 4
    indices = dict(layer_indices(pruned))
    assert indices and {v for k, v in indices.items() if k.startswith(f"{path}.0.")} == {0}
    assert {v for k, v in indices.items() if k.startswith(f"{path}.1.")} == {1}
    if model_type == "gemma3_text":
        assert pruned.config.layer_types == ["sliding_attention", "sliding_attention"]
    if model_type == "qwen2":
        assert len(pruned.config.layer_types) == 2
    if CONFIGS[model_type][0] == "causal":
        prompt = x[:1, :6]
        expected = skipped(model, path, [1, 3], lambda: model.generate(prompt, max_new_tokens=16, do_sample=False,
                                                                        pad_token_id=0))
        with torch.no_grad():
            got = pruned.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert got.shape[1] == prompt.shape[1] + 16 and torch.equal(got, expected)


def test_a_saved_folder_reloads_in_plain_transformers_without_layerprune(tmp_path):
    """save_pretrained of every pruned model, then one fresh process that imports transformers
    alone: identical logits, no missing or unexpected keys, counts and per-layer lists consistent."""
    x = tokens()
    expected = {}
    for model_type, (task, _) in CONFIGS.items():
        path = LAYERS[model_type]
        pruned = remove_blocks(tiny(model_type), [f"{path}.1", f"{path}.3"], x)
        folder = tmp_path / model_type
        pruned.save_pretrained(folder)
        assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
        with torch.no_grad():
            torch.save(pruned(x).logits, folder / "logits.pt")
        expected[model_type] = task
    torch.save(x, tmp_path / "tokens.pt")
    script = f"""
import json, sys, torch, transformers
x = torch.load({str(tmp_path / 'tokens.pt')!r})
report = {{}}
for name, task in {expected!r}.items():
    folder = {str(tmp_path)!r} + '/' + name
    auto = transformers.AutoModelForCausalLM if task == 'causal' else transformers.AutoModelForSequenceClassification
    model, info = auto.from_pretrained(folder, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        gap = (model(x).logits - torch.load(folder + '/logits.pt')).abs().max().item()
    config = model.config
    report[name] = {{'gap': gap, 'missing': sorted(info['missing_keys']), 'unexpected': sorted(info['unexpected_keys']),
                     'layers': config.num_hidden_layers, 'types': getattr(config, 'layer_types', None)}}
report['layerprune_imported'] = any(m.split('.')[0] == 'layerprune' for m in sys.modules)
print(json.dumps(report))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("layerprune_imported") is False
    for name, r in report.items():
        assert r["gap"] == 0.0 and r["missing"] == [] and r["unexpected"] == [], (name, r)
        assert r["layers"] == 2 and (r["types"] is None or len(r["types"]) == 2), (name, r)
    assert report["gemma3_text"]["types"] == ["sliding_attention", "sliding_attention"]


def test_inplace_removal_edits_the_model_itself_and_keeps_its_dtype():
    model = tiny("llama").to(torch.bfloat16)
    x = tokens()
    first = model.model.layers[0]
    pruned = remove_blocks(model, ["model.layers.2"], x, inplace=True)
    assert pruned is model and len(model.model.layers) == 3 and model.model.layers[0] is first
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert [v for _, v in layer_indices(model)] == [0, 1, 2]


@pytest.mark.parametrize("names, message", [
    (["model.layers.0", "model.layers.1", "model.layers.2", "model.layers.3"], "without layers; keep at least one"),
    (["model.layers.7"], "model.layers.7: not a layer of LlamaForCausalLM"),
    (["model.norm"], "model.norm: not a layer"),
])
def test_bad_removals_are_refused_naming_the_layer(names, message):
    model = tiny("llama")
    with pytest.raises(SurgeryError, match=message):
        remove_blocks(model, names, tokens())
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4


def test_an_encoder_decoder_model_is_refused_with_the_reason():
    config = transformers.AutoConfig.for_model("t5", d_model=32, d_ff=64, num_layers=2, num_heads=2, vocab_size=VOCAB,
                                               d_kv=16)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    with pytest.raises(SurgeryError, match="T5ForConditionalGeneration: an encoder-decoder model"):
        find_blocks(model, tokens())


def test_image_inputs_to_a_language_model_are_refused_in_one_line():
    model = tiny("llama")
    with pytest.raises(SurgeryError, match="token ids"):
        find_blocks(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(SurgeryError, match="batch × length"):
        find_blocks(model, tokens()[0])


# -- by folder or hub id ---------------------------------------------------------------------------
from typer.testing import CliRunner  # noqa: E402

from layerprune.cli import app  # noqa: E402

runner = CliRunner()


def test_inspect_takes_a_transformers_folder(tmp_path):
    tiny("qwen2").save_pretrained(tmp_path / "qwen")
    result = runner.invoke(app, ["inspect", f"hf:{tmp_path / 'qwen'}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert [b["name"] for b in report["blocks"] if b["removable"]] == [f"model.layers.{i}" for i in range(4)]
    assert report["params"] == sum(p.numel() for p in tiny("qwen2").parameters())


@pytest.mark.parametrize("case", ["no folder", "no config.json", "hub id offline", "encoder-decoder"])
def test_a_model_that_cannot_be_had_is_one_line_exit_2(tmp_path, case, monkeypatch):
    if case == "no folder":
        name, expected = str(tmp_path / "missing"), "no such folder"
    elif case == "no config.json":
        (tmp_path / "empty").mkdir()
        name, expected = str(tmp_path / "empty"), "no config.json in the folder"
    elif case == "hub id offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network, whatever this machine has
        name, expected = "layerprune-tests/no-such-model", "cannot load its configuration"
    else:
        config = transformers.AutoConfig.for_model("t5", d_model=32, d_ff=64, num_layers=2, num_heads=2,
                                                   vocab_size=VOCAB, d_kv=16)
        transformers.AutoModelForSeq2SeqLM.from_config(config).save_pretrained(tmp_path / "t5")
        name, expected = str(tmp_path / "t5"), "an encoder-decoder model (T5Config)"
    result = runner.invoke(app, ["inspect", f"hf:{name}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {name}: ") and expected in line, result.output


def test_without_the_extra_one_line_says_what_to_install():
    script = ("import sys; sys.modules['transformers'] = None\n"
              "sys.argv = ['layerprune', 'inspect', 'hf:some/model']\n"
              "from layerprune.cli import main\nmain()")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: transformers models need the optional extra [hf]: pip install 'layerprune[hf]'"


def _tokenizer():
    """A real fast tokenizer, trained here on a few lines (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the layers of a model", "remove a layer and reload the model"] * 20,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<pad>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def test_layerprunes_own_folder_adds_the_tokenizer_and_a_model_card(tmp_path):
    from layerprune import load_pruned
    from layerprune.surgery.hf import save_pruned

    model, x = tiny("llama"), tokens()
    pruned = remove_blocks(model, ["model.layers.0", "model.layers.2"], x)
    folder = save_pruned(pruned, tmp_path / "model", base_model="org/tiny-llama",
                         removed=["model.layers.0", "model.layers.2"], tokenizer=_tokenizer())
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= names
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: org/tiny-llama\n")
    assert "`model.layers.0`, `model.layers.2`" in card and "2 of its 4 layers" in card
    assert transformers.AutoTokenizer.from_pretrained(folder)("remove a layer")["input_ids"]
    again = load_pruned(folder)  # a transformers folder loads through transformers
    assert type(again) is type(pruned) and again.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.equal(again(x).logits, pruned(x).logits)
    # a failed save leaves an earlier folder as it was
    with pytest.raises(SurgeryError, match="ModuleList: not a transformers model"):
        save_pruned(model.model.layers, tmp_path / "model")

    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        save_pruned(model, tmp_path / "model", tokenizer=Broken())
    assert (tmp_path / "model" / "README.md").read_text() == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_a_layer_that_returns_a_list_is_skipped_and_removed_alike():
    """OpenAI GPT's blocks return a list ([hidden, *attention]): the skip reference keeps that
    structure, and the removal equals it."""
    config = transformers.AutoConfig.for_model("openai-gpt", n_embd=64, n_layer=4, n_head=4, vocab_size=VOCAB,
                                               n_positions=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    x = tokens()
    reference = skipped(model, "transformer.h", [1, 3], lambda: model(x).logits)
    pruned = remove_blocks(model, ["transformer.h.1", "transformer.h.3"], x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, reference, atol=1e-5, rtol=0)


def test_a_removal_the_model_cannot_run_is_a_surgery_error():
    """Qwen3-Next without its one full-attention layer holds only linear-attention layers, which
    transformers' masking cannot run: one SurgeryError naming the removal, the model unchanged."""
    config = transformers.AutoConfig.for_model(
        "qwen3_next", hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=4, head_dim=16, vocab_size=VOCAB, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=64, shared_expert_intermediate_size=64,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(SurgeryError, match=r"^Qwen3NextForCausalLM fails after removing model.layers.3: ValueError"):
        remove_blocks(model, ["model.layers.3"], tokens())
    assert len(model.model.layers) == 4 and model.config.layer_types[3] == "full_attention"


def test_a_dispatched_model_keeps_each_kept_layer_where_it_was(tmp_path):
    """device_map with one layer offloaded to disk (accelerate's hooks): removal in place keeps
    every kept layer where it was, renames hf_device_map's entries to the new layer names, and the
    logits and cached generation equal the skip reference."""
    tiny("llama").save_pretrained(tmp_path / "base")
    where = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
             "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map=where,
                                                              offload_folder=tmp_path / "offload").eval()
    x = tokens()
    prompt = x[:1, :6]
    expected_logits = skipped(model, "model.layers", [1], lambda: model(x).logits)
    expected = skipped(model, "model.layers", [1], lambda: model.generate(prompt, max_new_tokens=8, do_sample=False,
                                                                          pad_token_id=0))
    offloaded = model.model.layers[2]
    pruned = remove_blocks(model, ["model.layers.1"], x, inplace=True)
    assert pruned is model and pruned.model.layers[1] is offloaded
    assert next(offloaded.parameters()).device.type == "meta"  # still on disk, loaded per call
    assert pruned.hf_device_map == {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                                    "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu",
                                    "lm_head": "cpu"}
    with torch.no_grad():
        assert torch.allclose(pruned(x).logits, expected_logits, atol=1e-5)
        assert torch.equal(pruned.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0), expected)


def test_the_pruner_removes_from_a_transformers_model_in_place_without_a_copy():
    from layerprune import Pruner, Repair
    from layerprune.evaluation import EvalResult

    model, x = tiny("llama"), tokens()
    first = model.model.layers[0]
    pruner = Pruner("random", repair=Repair(enabled=False))
    kept_copy, _ = pruner.remove(model, ["model.layers.2"], None, example_input=x,
                                 evaluate_with=lambda m: EvalResult(0.0, 0.0, 0))
    assert kept_copy is not model and len(model.model.layers) == 4
    pruned, record = pruner.remove(model, ["model.layers.2"], None, example_input=x, inplace=True,
                                   evaluate_with=lambda m: EvalResult(0.0, 0.0, 0))
    assert pruned is model and pruned.model.layers[0] is first and len(model.model.layers) == 3
    assert record.removed == ["model.layers.2"] and model.config.num_hidden_layers == 3


def test_a_layer_that_carries_a_state_to_the_next_passes_it_on_when_skipped():
    """Zaya's layers hand their router states on to the next layer (called as layer(hidden, router
    states, ...), returning both): a skipped layer passes both on, and deleting it equals that."""
    config = transformers.AutoConfig.for_model("zaya", **{**SMALL, "head_dim": 16, "num_experts": 4,
                                                          "moe_intermediate_size": 64, "sliding_window": 8,
                                                          "layer_types": ["hybrid"] * 4})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    x = tokens()

    def absent(module, args, kwargs, output):
        assert isinstance(args[1], torch.Tensor)  # the router states of the layer before
        return args[0], args[1]

    handles = [model.model.layers[i].register_forward_hook(absent, with_kwargs=True) for i in (1, 3)]
    try:
        with torch.no_grad():
            reference = model(x).logits
    finally:
        for h in handles:
            h.remove()
    pruned = remove_blocks(model, ["model.layers.1", "model.layers.3"], x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, reference, atol=1e-5, rtol=0)

"""Attention and MLP sub-layers of transformers layers (level="sublayer"), on tiny random-init
models of the real classes: which are offered (pre-norm residual branches, not BERT's post-norm
ones), removal equal to the original with them answering zeros (logits and greedy generation
through the KV cache, also with the first layer's attention gone), weights gone, whole layers
removable afterwards, and a saved folder that layerprune reloads and whose card says how."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune import SurgeryError, find_blocks, load_pruned, remove_blocks  # noqa: E402
from layerprune.surgery.hf import layer_indices, save_pruned, skipping  # noqa: E402
from layerprune.surgery.hf_sublayers import STAND_INS_FILE, ZeroBranch  # noqa: E402

VOCAB = 96
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
             vocab_size=VOCAB, max_position_embeddings=64)
MODELS = {
    "llama": ("model.layers", "self_attn", "mlp", SMALL),
    "gemma3_text": ("model.layers", "self_attn", "mlp",
                    {**SMALL, "head_dim": 8, "sliding_window": 4,
                     "layer_types": ["sliding_attention", "full_attention"] * 2}),
    "gpt2": ("transformer.h", "attn", "mlp", dict(n_embd=32, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=64)),
    "mixtral": ("model.layers", "self_attn", "mlp", {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2}),
}


def tiny(model_type: str):
    config = transformers.AutoConfig.for_model(model_type, **MODELS[model_type][3])
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def tokens(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("model_type", list(MODELS))
def test_each_layer_offers_its_attention_and_mlp(model_type):
    path, attn, mlp, _ = MODELS[model_type]
    blocks = find_blocks(tiny(model_type), tokens(), level="sublayer")
    offered = [b.name for b in blocks if b.removable]
    assert offered == [f"{path}.{i}.{part}" for i in range(4) for part in (attn, mlp)]
    assert all(b.stand_in == "zeros" and b.params > 0 and b.macs > 0 for b in blocks if b.removable)
    assert not any(b.removable for b in blocks if not b.name.startswith(path))


@pytest.mark.parametrize("model_type", list(MODELS))
def test_removed_sublayers_equal_the_original_with_them_answering_zeros(model_type):
    """Attention of the first two layers and the last MLP: logits within 1e-5, and 12 greedy tokens
    through the KV cache equal (the first layer's attention is where the cache's length is read)."""
    path, attn, mlp, _ = MODELS[model_type]
    model, x = tiny(model_type), tokens()
    names = [f"{path}.0.{attn}", f"{path}.1.{attn}", f"{path}.3.{mlp}"]
    pruned = remove_blocks(model, names, x)
    assert all(isinstance(pruned.get_submodule(n), ZeroBranch) for n in names)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert not isinstance(model.get_submodule(names[0]), ZeroBranch)  # the original untouched
    with skipping(model, path, [], names), torch.no_grad():
        expected_logits = model(x).logits
        prompt = x[:1, :5]
        expected = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.allclose(pruned(x).logits, expected_logits, atol=1e-5)
        got = pruned.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)


def test_a_removed_attention_keeps_the_cache_count_but_not_its_keys():
    model, x = tiny("llama"), tokens(1, 10)
    pruned = remove_blocks(model, ["model.layers.0.self_attn"], x)
    with torch.no_grad():
        cache = pruned(x, use_cache=True).cache
    assert cache.get_seq_length() == 10
    assert cache.layers[0].keys.numel() == 10  # one number per token
    assert cache.layers[1].keys.numel() == 10 * 2 * 8  # kv heads × head dim per token


def test_whole_layers_after_sublayers_renumber_the_stand_ins(tmp_path):
    model, x = tiny("llama"), tokens()
    step = remove_blocks(model, ["model.layers.2.self_attn"], x)
    pruned = remove_blocks(step, ["model.layers.0"], x)
    assert isinstance(pruned.model.layers[1].self_attn, ZeroBranch)
    assert pruned.model.layers[1].self_attn.layer_idx == 1
    assert [v for _, v in layer_indices(pruned) if True] == sorted(v for _, v in layer_indices(pruned))
    with skipping(model, "model.layers", [0], ["model.layers.2.self_attn"]), torch.no_grad():
        prompt = x[:1, :4]
        expected = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(pruned.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0), expected)


def test_a_saved_folder_loads_through_layerprune_and_its_card_says_so(tmp_path):
    model, x = tiny("gemma3_text"), tokens()
    names = ["model.layers.1.self_attn", "model.layers.2.mlp"]
    pruned = remove_blocks(model, names, x)
    folder = save_pruned(pruned, tmp_path / "out", base_model="tiny-gemma", removed=names)
    stand_ins = json.loads((folder / STAND_INS_FILE).read_text())["stand_ins"]
    assert set(stand_ins) == set(names)
    card = (folder / "README.md").read_text()
    assert "layerprune.load_pruned" in card and "model.layers.1.self_attn" in card and "base_model: tiny-gemma" in card
    again = load_pruned(folder)
    assert isinstance(again.model.layers[1].self_attn, ZeroBranch)
    with torch.no_grad():
        assert torch.equal(again(x).logits, pruned(x).logits)
    # Plain transformers rebuilds the removed sub-layers and says their weights are missing.
    _, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith(tuple(names)) for k in info["missing_keys"])


def offered_whole(model, path: str, count: int, sublayer: str) -> None:
    """Only the ``count`` layers at ``path`` are offered, and removing ``path.sublayer`` is refused."""
    blocks = find_blocks(model, tokens(), level="sublayer")
    assert [b.name for b in blocks if b.removable] == [f"{path}.{i}" for i in range(count)]
    with pytest.raises(SurgeryError, match=rf"{path}.{sublayer}: not an attention or MLP residual branch"):
        remove_blocks(model, [f"{path}.{sublayer}"], tokens())


def test_post_norm_layers_are_offered_whole():
    """BERT's attention ends in LayerNorm(h + attn(h)): not a residual branch of the layer."""
    config = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                                     vocab_size=VOCAB)
    torch.manual_seed(0)
    offered_whole(transformers.BertForSequenceClassification(config).eval(), "bert.encoder.layer", 3, "1.attention")


def test_a_bad_sublayer_name_is_refused():
    model = tiny("llama")
    with pytest.raises(SurgeryError, match=r"model.layers.1.input_layernorm: not an attention or MLP"):
        remove_blocks(model, ["model.layers.1.input_layernorm"], tokens())
    with pytest.raises(SurgeryError, match=r"level must be one of"):
        find_blocks(model, tokens(), level="head")


def test_sublayers_whose_second_output_the_model_uses_are_not_offered():
    """RWKV's attention returns the recurrent state its layer passes on: answering zeros (and no
    state) breaks the next layer, so no sub-layer is offered and removing one is refused; the
    layers themselves still are."""
    config = transformers.RwkvConfig(hidden_size=32, attention_hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=4, vocab_size=VOCAB, context_length=64)
    torch.manual_seed(0)
    offered_whole(transformers.RwkvForCausalLM(config).eval(), "rwkv.blocks", 4, "0.attention")

"""A transformers removal is correct only when the cut configuration rebuilds the kept layers as
they are: per-layer placement of mixture-of-experts layers (an index list, a step, a dense prefix),
a residual scale tied to the layer count, and models whose layers depend on their index, which the
configuration cannot describe and are refused before anything changes."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune import SurgeryError, remove_blocks  # noqa: E402
from layerprune.surgery import hf_config  # noqa: E402
from layerprune.surgery.hf import skipping  # noqa: E402

SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
             vocab_size=64, max_position_embeddings=64, head_dim=8)
MOE = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
           shared_expert_intermediate_size=32)


def tiny(model_type: str, **kwargs):
    config = transformers.AutoConfig.for_model(model_type, **{**SMALL, **kwargs})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def tokens():
    return torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(3))


def reloads_equal(pruned, tmp_path) -> None:
    x = tokens()
    pruned.save_pretrained(tmp_path)
    again, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.allclose(again.eval()(x).logits, pruned(x).logits, atol=1e-5)


def generates_as_skipped(model, pruned, removed: list[int]) -> None:
    """8 greedy tokens through the KV cache: the pruned model's equal the original's with the
    ``removed`` layers skipped."""
    prompt, kwargs = tokens()[:1, :5], dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with skipping(model, "model.layers", removed), torch.no_grad():
        expected = model.generate(prompt, **kwargs)
    with torch.no_grad():
        assert torch.equal(pruned.generate(prompt, **kwargs), expected)


@pytest.mark.parametrize("removed", [[0, 2], [1, 3], [0, 3]])
def test_mixture_of_experts_placed_by_a_step_reloads_as_pruned(tmp_path, removed):
    """Qwen2-MoE with every second layer sparse: the kept dense layers are listed in mlp_only_layers."""
    model = tiny("qwen2_moe", **MOE, decoder_sparse_step=2)
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    pruned = remove_blocks(model, [f"model.layers.{i}" for i in removed], tokens())
    kept = [i for i in range(4) if i not in removed]
    assert [type(layer.mlp).__name__ for layer in pruned.model.layers] == [kinds[i] for i in kept]
    reloads_equal(pruned, tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert [type(layer.mlp).__name__ for layer in again.model.layers] == [kinds[i] for i in kept]


def test_an_index_list_of_expert_layers_is_renumbered(tmp_path):
    model = tiny("llama4_text", **MOE, interleave_moe_layer_step=2, intermediate_size_mlp=64, attention_chunk_size=16)
    assert model.config.moe_layers == [1, 3]
    pruned = remove_blocks(model, ["model.layers.0", "model.layers.1"], tokens())
    assert pruned.config.moe_layers == [1] and pruned.config.num_hidden_layers == 2
    reloads_equal(pruned, tmp_path)


def test_a_dense_prefix_counts_the_dense_layers_kept(tmp_path):
    model = tiny("deepseek_v2", **MOE, first_k_dense_replace=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                 qk_nope_head_dim=8, v_head_dim=8, n_shared_experts=1, n_group=1, topk_group=1,
                 num_key_value_heads=4)
    pruned = remove_blocks(model, ["model.layers.0", "model.layers.3"], tokens())
    assert pruned.config.first_k_dense_replace == 1
    reloads_equal(pruned, tmp_path)


def test_a_residual_scale_tied_to_the_layer_count_is_kept(tmp_path):
    model = tiny("minicpm3", kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                 scale_depth=1.4, num_key_value_heads=4)
    scale = model.model.layers[0].residual_scale
    pruned = remove_blocks(model, ["model.layers.1", "model.layers.2"], tokens())
    assert pruned.model.layers[0].residual_scale == pytest.approx(scale)
    reloads_equal(pruned, tmp_path)


def test_a_layer_that_depends_on_its_index_is_refused_before_anything_changes():
    """DiffLlama's attention keeps lambda_init, a function of its layer index: renumbered, it would
    reload as another layer. The refusal names it, and the model (in place) is untouched."""
    model = tiny("diffllama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SurgeryError, match=r"lambda_init"):
        remove_blocks(model, ["model.layers.0"], tokens(), inplace=True)
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Removing only the last layer renumbers nothing: allowed.
    pruned = remove_blocks(model, ["model.layers.3"], tokens())
    assert len(pruned.model.layers) == 3


def test_a_configuration_the_library_rewrites_on_reload_is_refused():
    """Gemma 4 forces its last layer to full attention when the configuration loads: a removal that
    leaves a sliding-window layer last could not be saved as it is."""
    model = tiny("gemma4_text", layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                             "full_attention"], sliding_window=8, global_head_dim=8,
                 hidden_size_per_layer_input=8, vocab_size_per_layer_input=64, num_kv_shared_layers=0)
    with pytest.raises(SurgeryError, match=r"layer_types.*rewritten|rewritten.*layer_types"):
        remove_blocks(model, ["model.layers.3"], tokens())


def test_cut_keeps_the_entries_of_kept_layers():
    config = transformers.AutoConfig.for_model("qwen2_moe", **SMALL, **MOE, mlp_only_layers=[0, 2],
                                               layer_types=["full_attention", "sliding_attention"] * 2)
    hf_config.cut(config, "num_hidden_layers", [1, 2], 4)
    assert config.num_hidden_layers == 2
    assert config.mlp_only_layers == [1]
    assert config.layer_types == ["sliding_attention", "full_attention"]


def test_layer_indices_follow_the_models_own_rule():
    """LongCat-Flash numbers its layer i and gives its two attentions the cache slots 2i and 2i+1:
    after removing layers 0 and 2, the kept layers get what a rebuild gives them, and generation
    with the cache equals the original's with those layers skipped."""
    from layerprune.surgery.hf import layer_indices

    model = tiny("longcat_flash", num_layers=4, num_hidden_layers=8, ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16,
                 qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, qk_head_dim=16, num_key_value_heads=4,
                 moe_topk=2, n_routed_experts=4, expert_ffn_hidden_size=32)
    pruned = remove_blocks(model, ["model.layers.0", "model.layers.2"], tokens())
    found = dict(layer_indices(pruned))
    assert [found[f"model.layers.{i}.layer_idx"] for i in range(2)] == [0, 1]
    assert [found[f"model.layers.{i}.self_attn.{j}.layer_idx"] for i in range(2) for j in range(2)] == [0, 1, 2, 3]
    generates_as_skipped(model, pruned, [0, 2])


def test_indices_out_of_order_are_named():
    from layerprune.surgery.hf import check_consistent

    model = tiny("llama")
    model.model.layers[2].self_attn.layer_idx = 3  # what a removal without renumbering leaves
    with pytest.raises(SurgeryError, match=r"self_attn.layer_idx does not number the layers in order"):
        check_consistent(model)


def test_weights_with_a_slice_per_layer_and_kv_sharing_follow_the_kept_layers(tmp_path):
    """Gemma 4 embeds each token once per layer (a weight of width layers × 8) and its last layer
    reads the keys and values of the last full-attention layer before it. Removing layer 2 keeps
    the kept layers' slices, moves the store flag of the sliding layers to layer 0 as a rebuild
    does, and recounts where sharing starts; logits, cached generation and a plain reload agree."""
    model = tiny("gemma4_text", layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                             "full_attention"], sliding_window=8, global_head_dim=8,
                 hidden_size_per_layer_input=8, vocab_size_per_layer_input=64, num_kv_shared_layers=1)
    assert model.model.embed_tokens_per_layer.weight.shape[1] == 4 * 8
    pruned = remove_blocks(model, ["model.layers.2"], tokens())
    assert pruned.model.embed_tokens_per_layer.weight.shape[1] == 3 * 8
    assert torch.equal(pruned.model.embed_tokens_per_layer.weight[:, 16:], model.model.embed_tokens_per_layer.weight[:, 24:])
    assert [layer.self_attn.store_full_length_kv for layer in pruned.model.layers] == [True, True, False]
    assert pruned.model.first_kv_shared_layer_idx == 2
    generates_as_skipped(model, pruned, [2])
    reloads_equal(pruned, tmp_path)
    # Removing the layer whose keys the last layer reads is refused: the rebuild has no source for them.
    with pytest.raises(SurgeryError, match=r"producing a cache"):
        remove_blocks(model, ["model.layers.1"], tokens())


def test_section_counts_count_the_kept_layers_of_each_section(tmp_path):
    """Dory runs its input layers once, its recurrent layers in loops and its output layers once;
    the three counts must add up to the layer count (and its config.json writes two entries a
    layer). Removing a recurrent layer recounts each section; cached generation and a plain reload
    agree with the original with that layer skipped in every loop."""
    model = tiny("dory", num_hidden_layers=5, n_input_layers=1, n_recurrent_layers=3, n_output_layers=1,
                 sliding_window=8)
    pruned = remove_blocks(model, ["model.layers.2"], tokens())
    config = pruned.config
    assert (config.n_input_layers, config.n_recurrent_layers, config.n_output_layers) == (1, 2, 1)
    assert len(config.layer_types) == config.num_hidden_layers == 4
    generates_as_skipped(model, pruned, [2])
    reloads_equal(pruned, tmp_path)


def test_a_layer_reading_another_layers_keys_follows_it_and_loses_it_by_name(tmp_path):
    """Kolibri 1.1's layer 3 reads the keys and values of layer 2 (kv_source_layers, and each
    attention's kv_source_layer): removing layer 1 renumbers both; removing layer 2 is refused."""
    model = tiny("kolibri1_1", layer_types=["sliding_attention", "sliding_attention", "indexed_attention",
                                            "indexed_attention"], index_layers=[2], kv_source_layers=[0, 1, 2, 2],
                 sliding_window=8, mlp_only_layers=[0, 1, 2, 3], index_num_heads=2, head_dim=16)
    pruned = remove_blocks(model, ["model.layers.1"], tokens())
    assert pruned.config.kv_source_layers == [0, 1, 1]
    assert [layer.self_attn.kv_source_layer for layer in pruned.model.layers] == [0, 1, 1]
    generates_as_skipped(model, pruned, [1])
    reloads_equal(pruned, tmp_path)
    with pytest.raises(SurgeryError, match=r"kv_source_layers: layer 3 reads from layer 2, which would be removed"):
        remove_blocks(model, ["model.layers.2"], tokens())

"""Modularity on next-token classes: which positions get which class, features gathered at every
layer boundary equal to transformers' own hidden states, Q by hand, and the curve of a model
trained here."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune.criteria.graph import modularity  # noqa: E402
from layerprune.criteria.tokens import EMBEDDINGS, _features, next_token_classes, next_token_curve  # noqa: E402
from layerprune.errors import LayerpruneError  # noqa: E402


def tiny_llama(vocab: int = 64, layers: int = 3):
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_a_positions_class_is_the_rank_of_its_next_token_among_the_most_frequent():
    windows = torch.tensor([[5, 7, 7, 9, 7],
                            [9, 9, 7, 3, 9]])
    # next tokens: [7, 7, 9, 7] and [9, 7, 3, 9]: 7 four times, 9 three times, 3 once
    w, t, c = next_token_classes(windows, top=2)
    assert list(zip(w.tolist(), t.tolist(), c.tolist())) == [
        (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 0), (1, 0, 1), (1, 1, 0), (1, 3, 1)]
    with pytest.raises(LayerpruneError, match=r"top: must be an integer >= 2"):
        next_token_classes(windows, top=1)


def test_features_are_the_residual_stream_at_each_boundary():
    """The embeddings and every layer's output but the last equal transformers' hidden states
    (its last one has the final norm applied; ours is the last layer's output before it)."""
    model = tiny_llama()
    windows = torch.randint(0, 64, (5, 16), generator=torch.Generator().manual_seed(1))
    rows, cols = torch.tensor([4, 0, 2, 0, 4]), torch.tensor([3, 15, 0, 7, 9])
    feats = _features(model, windows, (rows, cols), batch_size=2)
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats[EMBEDDINGS], hidden[0][rows, cols])
    for i in range(2):
        torch.testing.assert_close(feats[f"model.layers.{i}"], hidden[i + 1][rows, cols], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats["model.layers.2"], hidden[3][rows, cols])


def test_the_curve_of_a_model_trained_here():
    from layerprune.data import build_dataset
    from layerprune.tasks import CausalLM
    from layerprune.train import TrainSettings, train

    data = build_dataset("text", corpus="pydoc", seq_len=32, vocab_size=300)
    model = tiny_llama(vocab=data.num_classes)
    loader = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    train(model, loader, TrainSettings(epochs=1, lr=3e-3, optimizer="adamw", weight_decay=0.0, batches_per_epoch=20),
          task=CausalLM(32))
    windows = data.windows("val")
    curve = next_token_curve(model, windows, top=16, samples=200, batches=2)
    assert curve.probes == [EMBEDDINGS, "model.layers.0", "model.layers.1", "model.layers.2"]
    assert curve.values.shape == (2, 4) and ((curve.values > -0.5) & (curve.values < 1)).all()
    assert list(curve.deltas()) == ["model.layers.0", "model.layers.1", "model.layers.2"]
    # Q at a boundary is modularity of the drawn positions' features by their classes, by hand.
    w, t, classes = next_token_classes(windows, 16)
    draw = torch.randperm(len(classes), generator=torch.Generator().manual_seed(0))[:200]
    feats = _features(model, windows, (w[draw], t[draw]), batch_size=8)
    assert curve.values[0, 2] == pytest.approx(modularity(feats["model.layers.1"], classes[draw], k=3))
    with pytest.raises(LayerpruneError, match=r"samples: 100000 positions wanted"):
        next_token_curve(model, windows, top=16, samples=100_000)

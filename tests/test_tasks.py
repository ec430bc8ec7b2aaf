"""Tasks: one measuring loop for image classification, sequence classification and causal language
modelling. Perplexity against a plain loop over the windows with transformers' own loss, masked
positions, independence of the batching; the image task's numbers are the cross-entropy and top-1
accuracy computed by hand; unknown task names are refused by name."""

import math

import pytest
import torch
import torch.nn.functional as F

from layerprune.errors import UnknownNameError
from layerprune.tasks import (IGNORE, CausalLM, EvalResult, ImageClassification, SequenceClassification, get_task,
                              perplexity)

VOCAB, LEN = 96, 16


def tiny_llama():
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def windows(n: int = 5) -> torch.Tensor:
    stream = torch.randint(0, VOCAB, (n * LEN + 7,), generator=torch.Generator().manual_seed(1))
    return stream[: n * LEN].view(n, LEN)  # non-overlapping windows, the short tail dropped


def plain_nll(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL and predicted tokens, one window at a time, by transformers' own loss."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(ids, labels):
            n = int((y[1:] != IGNORE).sum())
            total += float(model(x[None], labels=y[None]).loss) * n
            count += n
    return total, count


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_perplexity_equals_a_plain_loop_over_the_windows(batch_size):
    model, w = tiny_llama(), windows()
    total, count = plain_nll(model, w, w)
    assert count == 5 * (LEN - 1)
    assert perplexity(model, w, batch_size=batch_size) == pytest.approx(math.exp(total / count), rel=1e-5)
    result = CausalLM(LEN).evaluate(model, CausalLM.batches(w, batch_size))
    assert result.tokens == count and result.samples == 5
    assert result.to_dict()["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_positions_labelled_ignore_are_not_scored():
    model, w = tiny_llama(), windows(3)
    labels = w.clone()
    labels[:, :6] = IGNORE  # e.g. a prompt that is not scored
    total, count = plain_nll(model, w, labels)
    assert count == 3 * (LEN - 6)
    result = CausalLM(LEN).evaluate(model, [(w, labels)])
    assert result.tokens == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)


def test_an_early_stop_is_asked_with_the_units_seen():
    model, w = tiny_llama(), windows(4)
    seen = []
    result = CausalLM(LEN).evaluate(model, CausalLM.batches(w, 1), until=lambda loss, hits, units: seen.append(units))
    assert seen == [15, 30, 45, 60] and result.tokens == 60
    assert CausalLM(LEN).evaluate(model, CausalLM.batches(w, 1), until=lambda *_: True) is None


def test_the_image_task_is_cross_entropy_and_top1_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    batches = [(torch.randn(7, 3, 2, 2), torch.randint(0, 5, (7,))) for _ in range(3)]
    result = ImageClassification().evaluate(model, batches)
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        logits = model(x)
    assert result.samples == 21 and result.tokens is None
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert set(result.to_dict()) == {"loss", "accuracy", "samples"}  # what run files held before tasks


def test_sequence_classification_masks_the_padding():
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")
    config = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                                     vocab_size=VOCAB, num_labels=3, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, VOCAB, (4, 10), generator=torch.Generator().manual_seed(2))
    ids[0, 6:] = 0
    ids[2, 3:] = 0
    y = torch.tensor([0, 1, 2, 1])
    result = SequenceClassification(pad_token_id=0).evaluate(model, [(ids, y)])
    with torch.no_grad():
        logits = model(ids, attention_mask=(ids != 0).long()).logits
        unmasked = model(ids).logits
    assert not torch.allclose(logits, unmasked)  # the mask matters here
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def test_tasks_say_which_way_is_better_and_unknown_names_are_refused():
    lm, image = get_task("causal-lm", seq_len=LEN), get_task("image-classification")
    assert lm.lower_is_better and lm.better(10.0, 12.0) and not image.better(0.5, 0.6)
    assert lm.format(EvalResult(math.log(12.5), 0.1, 2, 30).perplexity) == "12.50"
    assert image.format(0.9338) == "93.38%"
    with pytest.raises(UnknownNameError, match=r"task: unknown task 'regression'"):
        get_task("regression")


def test_a_language_model_trains_on_next_tokens_and_its_perplexity_falls():
    """The trainer and the plain loop ask the task: a tiny Llama trained for a few steps on the
    standard library's documentation has a lower validation perplexity than before; the epoch's
    accuracies are next-token accuracies over predicted tokens."""
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")
    from layerprune.data import build_dataset
    from layerprune.train import TrainSettings, fit, train

    data = build_dataset("text", corpus="pydoc", seq_len=32, vocab_size=300)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=2, vocab_size=data.num_classes, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    task = CausalLM(32)
    val = CausalLM.batches(data.windows("val"), 16)
    before = task.evaluate(model, val)
    loader = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    history = train(model, loader, TrainSettings(epochs=1, lr=3e-3, optimizer="adamw", weight_decay=0.0,
                                                 batches_per_epoch=40), val_batches=val, task=task)
    after = task.evaluate(model, val)
    assert after.perplexity < 0.8 * before.perplexity
    assert history[0].val_loss == pytest.approx(after.loss, rel=1e-6)
    assert 0 < history[0].train_accuracy < 1
    fit(model, list(val[:2]), epochs=1, lr=1e-3, task=task)  # the plain loop takes the task too
    assert task.evaluate(model, val).perplexity < before.perplexity


def test_the_pruner_measures_and_prunes_a_language_model_by_its_task():
    """A Pruner given the causal-LM task scores a transformers model's layers on text windows with
    a one-pass criterion, removes two, measures perplexity (not accuracy) on its calibration
    windows and repairs no BatchNorm; the ablation oracle measures each layer's removal the same way."""
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")
    from layerprune import Calibration, Pruner
    from layerprune.data import build_dataset

    data = build_dataset("text", corpus="pydoc", seq_len=32, vocab_size=300)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=4, vocab_size=data.num_classes, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    task, calibration = CausalLM(32), Calibration(samples=16, batches=2)
    result = Pruner("angular", rule="count", rule_params={"k": 2}, calibration=calibration,
                    task=task).prune(model, data)
    assert len(result.removed) == 2 and len(result.model.model.layers) == 2
    step = result.steps[0]
    assert step.after_repair is None and step.after_surgery.tokens == 2 * 16 * 31
    windows = torch.cat([w for w, _ in Pruner("random", task=task, calibration=calibration).context(model, data).batches()])
    assert step.after_surgery.perplexity == pytest.approx(perplexity(result.model, windows), rel=1e-5)
    assert "perplexity" in step.summary() and "accuracy" not in step.summary()
    scored = Pruner("ablation", task=task, calibration=calibration).score(model, data)
    assert sorted(scored.scores) == [f"model.layers.{i}" for i in range(4)]

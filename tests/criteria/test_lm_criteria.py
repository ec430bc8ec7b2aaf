"""Criteria on a language model's residual stream: each reads the positions its source reads
(block influence every token, angular the last one, modularity and the linear probe the positions
of the most frequent next tokens), checked against transformers' own hidden states by hand; the
loss-based oracles and Taylor measure next-token NLL; every built-in criterion scores an LM; a
layers budget; image models unchanged by the views."""

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]'")

from layerprune import Calibration, Pruner  # noqa: E402
from layerprune.criteria.catalog import CRITERIA  # noqa: E402
from layerprune.criteria.graph import modularity  # noqa: E402
from layerprune.tasks import IGNORE, CausalLM, View, top_next_tokens  # noqa: E402

VOCAB, LEN = 48, 16


@pytest.fixture(scope="module")
def lm():
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=4, vocab_size=VOCAB, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    # windows with structure: a few frequent tokens, so next-token classes have members
    g = torch.Generator().manual_seed(3)
    ids = torch.multinomial(torch.linspace(1, 0.02, VOCAB) ** 3, 24 * LEN, replacement=True, generator=g)
    windows = ids.view(24, LEN)
    return model, windows


def hidden(model, windows):
    """The residual stream at every layer boundary: transformers' hidden states but the last,
    which we read before the final norm."""
    outs = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
             for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        first = model(windows, output_hidden_states=True).hidden_states[0]
    for h in hooks:
        h.remove()
    return [first] + [outs[i] for i in range(len(model.model.layers))]


def score(model, windows, name, **params):
    data = (windows, windows)
    calibration = Calibration(split="val", samples=len(windows), batches=1)
    return Pruner(name, criterion_params=params, task=CausalLM(LEN), calibration=calibration).score(model, data).result


def test_block_influence_is_shortgpts_mean_over_every_token(lm):
    model, windows = lm
    h = hidden(model, windows)
    got = score(model, windows, "block_influence").scores
    for i in range(4):
        cos = torch.nn.functional.cosine_similarity(h[i].double(), h[i + 1].double(), dim=-1)
        assert got[f"model.layers.{i}"] == pytest.approx(float(1 - cos.mean()), rel=1e-4)


def test_angular_reads_each_windows_last_token(lm):
    model, windows = lm
    h = hidden(model, windows)
    got = score(model, windows, "angular", n=2)
    for i in range(4):
        cos = torch.nn.functional.cosine_similarity(h[i][:, -1].double(), h[i + 1][:, -1].double(), dim=-1)
        assert got.scores[f"model.layers.{i}"] == pytest.approx(float(torch.arccos(cos.clamp(-1, 1)).mean() / math.pi),
                                                                rel=1e-4)
    runs = got.diagnostics["runs"]["scores"]
    cos = torch.nn.functional.cosine_similarity(h[1][:, -1].double(), h[3][:, -1].double(), dim=-1)
    assert runs["model.layers.1"] == pytest.approx(float(torch.arccos(cos.clamp(-1, 1)).mean() / math.pi), rel=1e-4)


def test_modularity_uses_next_token_classes_of_the_most_frequent_next_tokens(lm):
    model, windows = lm
    h = hidden(model, windows)
    result = score(model, windows, "modularity", top=5, positions=10_000)
    ranks = top_next_tokens(windows, 5)
    following = windows[:, 1:]
    rows, cols = (ranks[following] >= 0).nonzero(as_tuple=True)
    classes = ranks[following[rows, cols]]
    assert len(set(classes.tolist())) == 5 and len(rows) < windows[:, 1:].numel()
    q = [modularity(h[i][rows, cols].float(), classes, k=3) for i in range(5)]
    for i in range(4):
        assert result.scores[f"model.layers.{i}"] == pytest.approx(q[i + 1] - q[i], abs=1e-9)
    # at most `positions` rows per batch, the same ones for every layer boundary
    few = score(model, windows, "modularity", top=5, positions=40).diagnostics["curve"]
    assert few.samples == len(windows) and np.isfinite(few.values).all()


def test_the_view_draws_at_most_positions_rows_and_labels_the_last_position_ignored():
    task = CausalLM(4)
    labels = torch.tensor([[1, 2, 1, 2], [2, 1, 2, 3]])
    feats = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 12)
    (tokens,), following = task.view(View("token"), (feats,), labels)
    assert tokens.shape == (8, 3) and following.tolist() == [2, 1, 2, IGNORE, 1, 2, 3, IGNORE]
    (last,), _ = task.view(View("last"), (feats,), labels)
    assert torch.equal(last, feats.view(2, 4, 3)[:, -1])
    ranks = top_next_tokens(labels, 2)  # next tokens 2, 1, 2, 1, 2, 3: 2 first, then 1
    (rows,), cls = task.view(View("next-token", top=2, positions=3), (feats,), labels, lambda top: ranks)
    assert len(rows) == 3 and set(cls.tolist()) <= {0, 1}


def test_every_builtin_criterion_scores_a_language_model(lm):
    model, windows = lm
    data = (windows, windows)
    calibration = Calibration(samples=12, batches=2)
    for name in sorted(CRITERIA.names()):
        if CRITERIA.origin(name) != "builtin":
            continue
        result = Pruner(name, task=CausalLM(LEN), calibration=calibration).score(model, data)
        assert result.scores and all(math.isfinite(v) for v in result.scores.values()), name
        assert set(result.scores) <= {f"model.layers.{i}" for i in range(4)}, name


def test_every_builtin_criterion_scores_every_layer_of_a_gpt2(lm):
    """GPT-2's projections are transformers' ``Conv1D`` (a linear layer stored transposed), not
    ``nn.Linear``: weight-reading criteria must read them as well, so every layer gets a score."""
    _, windows = lm
    config = transformers.GPT2Config(n_embd=32, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    data = (windows, windows)
    calibration = Calibration(samples=12, batches=2)
    layers = {f"transformer.h.{i}" for i in range(4)}
    for name in sorted(CRITERIA.names()):
        if CRITERIA.origin(name) != "builtin":
            continue
        result = Pruner(name, task=CausalLM(LEN), calibration=calibration).score(model, data)
        # greedy scores blocks in the order it removes them: the one a stage must keep gets none
        assert set(result.scores) == layers or (name == "greedy" and len(result.scores) == len(layers) - 1), name
        assert set(result.scores) <= layers and all(math.isfinite(v) for v in result.scores.values()), name
    weights = [m.weight for m in model.transformer.h[0].modules() if type(m).__name__ == "Conv1D"]
    expected = float(torch.cat([w.detach().flatten() for w in weights]).double().abs().mean())
    assert Pruner("magnitude").score(model, data).scores["transformer.h.0"] == pytest.approx(expected)


def test_loss_oracles_and_taylor_measure_next_token_nll(lm):
    """ablation scores a layer by how much the calibration NLL rises without it (Shortened LLaMA's
    perplexity criterion), Taylor by its first-order estimate of the same rise."""
    model, windows = lm
    ablation = score(model, windows, "ablation").scores
    task = CausalLM(LEN)
    base = task.evaluate(model, [(windows, windows)]).loss
    from layerprune.surgery.hf import skipping

    with skipping(model, "model.layers", [2]):
        without = task.evaluate(model, [(windows, windows)]).loss
    assert ablation["model.layers.2"] == pytest.approx(without - base, rel=1e-4)
    taylor = score(model, windows, "taylor").scores
    assert np.corrcoef([taylor[k] for k in sorted(taylor)], [ablation[k] for k in sorted(ablation)])[0, 1] > 0


def test_greedy_removes_the_layer_whose_removal_raises_the_next_token_nll_least_at_each_step(lm):
    """SLEB's loop on a language model: each step removes the layer whose removal (from the model
    pruned so far) gives the lowest calibration NLL, averaged over predicted tokens; the early stop
    of hopeless candidates (``reuse``) changes nothing."""
    import copy

    from layerprune.surgery.hf import skipping

    model, windows = lm
    model = copy.deepcopy(model)
    with torch.no_grad():  # loud noise from layer 1: the layers differ (random ones barely do)
        model.model.layers[1].self_attn.o_proj.weight.mul_(30)
        model.model.layers[1].mlp.down_proj.weight.mul_(30)
    task = CausalLM(LEN)
    removed, left = [], list(range(4))
    for _ in range(3):  # the last layer of the list stays
        losses = {}
        for i in left:
            with skipping(model, "model.layers", removed + [i]):
                losses[i] = task.evaluate(model, [(windows, windows)]).loss
        best = min(left, key=lambda i: (losses[i], i))
        removed.append(best)
        left.remove(best)
    assert removed[0] != 3  # the candidate visited first (the latest) must not win by being first
    expected = [f"model.layers.{i}" for i in removed]
    for reuse in (True, False):
        assert score(model, windows, "greedy", reuse=reuse).diagnostics["order"] == expected, reuse


def test_a_layers_budget_removes_that_share_of_the_layers(lm):
    model, windows = lm
    data = (windows, windows)
    result = Pruner("block_influence", rule="budget", rule_params={"layers": 0.25}, task=CausalLM(LEN),
                    calibration=Calibration(samples=12, batches=1)).prune(model, data)
    assert len(result.removed) == 1 and len(result.model.model.layers) == 3


def test_modularity_on_next_token_classes_matches_q_computed_by_hand_on_a_small_graph():
    """Two windows of four positions whose hidden vectors are set by hand (2-D, at known angles);
    with top=2 the positions whose next token is one of the two most frequent are the nodes, each
    joined to its one most cosine-similar other node (k=1, weight the cosine), the graph
    symmetrised as (A + Aᵀ)/2, and Q = Σ_ij [W_ij − d_i d_j / 2m] δ(c_i, c_j) / 2m by hand."""
    from layerprune.tasks import View

    ids = torch.tensor([[7, 5, 9, 5], [9, 5, 7, 7]])  # next tokens: 5, 9, 5 | 5, 7, 7 → 5 ×3, 7 ×2, 9 ×1
    angles = torch.tensor([[0.0, 80.0, 10.0, 0.0], [20.0, 75.0, 90.0, 0.0]]) * math.pi / 180
    feats = torch.stack([angles.cos(), angles.sin()], dim=-1).reshape(2, 8)  # [window, positions × 2]
    ranks = top_next_tokens(ids, 2)
    (rows,), classes = CausalLM(4).view(View("next-token", top=2, positions=100), (feats,), ids, lambda top: ranks)
    # nodes: (0,0)→5, (0,2)→5, (1,0)→5, (1,1)→7, (1,2)→7 (position (0,1) predicts 9, last positions predict nothing)
    assert classes.tolist() == [0, 0, 0, 1, 1]
    x = rows.double() / rows.double().norm(dim=1, keepdim=True)
    cos = x @ x.T
    cos.fill_diagonal_(-2)
    a = torch.zeros_like(cos)
    nearest = cos.argmax(dim=1)
    a[torch.arange(len(x)), nearest] = cos[torch.arange(len(x)), nearest]
    w = (a + a.T) / 2
    degree, two_m = w.sum(dim=1), w.sum()
    same = classes[:, None] == classes[None, :]
    by_hand = float(((w - degree[:, None] * degree[None, :] / two_m) * same).sum() / two_m)
    assert modularity(rows, classes, k=1) == pytest.approx(by_hand, abs=1e-6)
    assert 0 < by_hand < 1

"""A single-file criterion plugin: ``entropy_gain``, written as a function.

How much uncertainty about the label a block removes: ``H(Y | input) − H(Y | output)``, each
conditional entropy estimated from k-nearest-neighbour label votes on the calibration samples.

Use it without installing anything::

    layerprune criteria --plugin plugins/single_file/entropy_gain.py
    layerprune score cifar_resnet20 --data digits --plugin plugins/single_file/entropy_gain.py \\
        --criterion entropy_gain -p k=5 --samples 64 --batches 1

or from a recipe (recipes: see docs/plugins.md)::

    plugins: [plugins/single_file/entropy_gain.py]

or from Python: ``layerprune.load_plugin("plugins/single_file/entropy_gain.py")``.
"""

from __future__ import annotations

import math

import torch

import layerprune
from layerprune.errors import LayerpruneError


def knn_conditional_entropy(features: torch.Tensor, labels: torch.Tensor, *, k: int = 10,
                            smoothing: float = 1.0) -> float:
    """Plug-in estimate of ``H(Y | features)`` in bits from leave-one-out kNN label votes.

    Each sample's ``k`` most cosine-similar other samples vote for their labels; with additive
    ``smoothing`` over the ``C`` classes present, ``p_i(c) = (votes_c + smoothing) / (k + C ·
    smoothing)``, and the estimate is ``−mean_i log2 p_i(y_i)`` — the cross-entropy of a kNN
    classifier. Between 0 (every neighbourhood pure, with ``smoothing → 0``) and about
    ``log2 C`` (neighbourhoods as mixed as the classes). Cost: one ``N × N`` GEMM.
    """
    n = len(labels)
    f = features.reshape(n, -1).float()
    f = torch.nn.functional.normalize(f, dim=1, eps=1e-12)
    sim = f @ f.T
    sim.fill_diagonal_(-math.inf)  # leave one out: a sample does not vote for itself
    k = min(k, n - 1)
    neighbours = sim.topk(k, dim=1).indices  # (N, k)
    classes, y = torch.unique(labels, return_inverse=True)
    votes = torch.nn.functional.one_hot(y[neighbours], len(classes)).sum(dim=1).double()  # (N, C)
    p = (votes + smoothing) / (k + len(classes) * smoothing)
    p_true = p.gather(1, y.view(-1, 1)).squeeze(1)
    return float(-(p_true.log2()).mean())


@layerprune.register_criterion("entropy_gain")
def entropy_gain(ctx, k: int = 10, smoothing: float = 1.0) -> dict[str, float]:
    """Label entropy a block removes: H(Y|input) − H(Y|output), by kNN votes (example).

    An example criterion, not one validated for pruning. It reads like the information plane of
    Shwartz-Ziv & Tishby, "Opening the Black Box of Deep Neural Networks via Information", 2017
    (how much a layer tells about the label), with the simplest estimator there is: the
    cross-entropy of a leave-one-out cosine kNN classifier (see ``knn_conditional_entropy``).
    Close in spirit to modularity (Lu et al., ECCV 2022), which reads the same kNN graph.
    A block whose output lets neighbours predict the label better than its input scores high.
    Cost: one forward pass, one ``N × N`` similarity matrix per probe point per batch.
    """
    if not isinstance(k, int) or k < 1:
        raise LayerpruneError(f"entropy_gain: k must be an integer ≥ 1, got {k!r}")
    if not smoothing > 0:
        raise LayerpruneError(f"entropy_gain: smoothing must be > 0, got {smoothing!r}")
    key = f"knn_label_entropy(k={k},smoothing={smoothing:g})"
    stats, _ = ctx.feature_stats(
        probe={key: lambda f, y: knn_conditional_entropy(f, y, k=k, smoothing=smoothing)})
    entropy = {p: sum(v) / len(v) for p, v in stats[key].items() if v}
    return {block: entropy[before] - entropy[after] for block, (before, after) in ctx.block_probes.items()}

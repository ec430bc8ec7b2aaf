"""Modularity on next-token classes: the modularity curve of a causal language model.

Lu et al. (ECCV 2022) measure, at each layer, how well the kNN graph of the samples' features is
partitioned by their classes. A language model's samples are token positions and what it is
trained to tell apart is the token that comes next, so the class of a position is its next token:
restricted to the ``top`` most frequent next tokens of the windows (every other position is left
out, as a rare class would have too few members to form a community). At each layer boundary (the
embeddings, then the output of every layer, before the final norm) the representations of
``samples`` such positions are the nodes of the cosine kNN graph (k = 3, as for images) and Q of
the next-token partition is computed; a layer's ΔQ is the change across it, as for images.

>>> curve = next_token_curve(model, windows, top=32, samples=500)  # doctest: +SKIP
>>> curve.deltas()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from layerprune.criteria.curve import ModularityCurve
from layerprune.criteria.graph import modularity
from layerprune.errors import LayerpruneError
from layerprune.tasks import top_next_tokens
from layerprune.hooks import eval_mode, forward_hooks, main_tensor, model_device
from layerprune.lazy import lazy_import, no_grad
from layerprune.surgery.hf import layer_list
from layerprune.surgery.hf_sublayers import hidden_input

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

EMBEDDINGS = "embeddings"  # the probe before the first layer: what the first layer is given


def next_token_classes(windows: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(window, position, class)`` of every position of ``windows`` (``[n, seq_len]`` token ids)
    whose next token in its window is one of the ``top`` most frequent next tokens; the class is
    that token's rank among them (0 = the most frequent; ties go to the smaller id)."""
    nxt = windows[:, 1:]
    rank = top_next_tokens(windows, top)
    where = (rank[nxt] >= 0).nonzero()
    return where[:, 0], where[:, 1], rank[nxt[where[:, 0], where[:, 1]]]




def _draws(count: int, samples: int, batches: int, seed: int) -> list[torch.Tensor]:
    """``batches`` draws of ``samples`` of ``count`` positions: disjoint where there are enough."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    if samples * batches <= count:
        return list(order[: samples * batches].split(samples))
    return [torch.randperm(count, generator=torch.Generator().manual_seed(seed + b))[:samples] for b in range(batches)]


def _probes(model: nn.Module) -> list[str]:
    """The layer boundaries: the embeddings, then each layer of the model's layer list."""
    path, layers = layer_list(model)
    return [EMBEDDINGS] + [f"{path}.{i}" for i in range(len(layers))]


@no_grad
def _features(model: nn.Module, windows: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor],
              batch_size: int) -> dict[str, torch.Tensor]:
    """The residual stream of the positions ``where`` (window, position) at every layer boundary:
    ``{probe: (positions, hidden)}`` in float32."""
    probes = _probes(model)
    rows, cols = where
    out: dict[str, list[torch.Tensor]] = {p: [] for p in probes}
    chosen = rows.unique()
    device = model_device(model)
    held: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args, kwargs, output):
            if name == probes[1]:  # what the first layer was given: the embeddings
                held[EMBEDDINGS] = hidden_input(args, kwargs)
            held[name] = main_tensor(output)
        return hook

    order: list[torch.Tensor] = []
    with eval_mode(model), forward_hooks(model, after={name: record(name) for name in probes[1:]}, with_kwargs=True):
        for part in chosen.split(batch_size):
            model(windows[part].to(device), use_cache=False)
            mine = torch.isin(rows, part)
            local = torch.searchsorted(part, rows[mine])
            order.append(mine.nonzero().squeeze(1))
            for p in probes:
                out[p].append(held[p][local.to(device), cols[mine].to(device)].float().cpu())
    back = torch.argsort(torch.cat(order))
    return {p: torch.cat(v)[back] for p, v in out.items()}


def next_token_curve(model: nn.Module, windows: torch.Tensor, *, top: int = 32, samples: int = 500,
                     batches: int = 3, k: int = 3, seed: int = 0, batch_size: int = 8) -> ModularityCurve:
    """Q of the next-token partition at every layer boundary of a causal LM, on ``batches`` draws
    of ``samples`` positions of ``windows`` (``[n, seq_len]`` token ids); the blocks are the
    layers, each between the boundary before and after it (:meth:`ModularityCurve.deltas`)."""
    w, t, classes = next_token_classes(windows, top)
    if len(classes) < max(samples, k + 1):
        raise LayerpruneError(f"samples: {samples} positions wanted, but only {len(classes)} have one of the {top} "
                              "most frequent next tokens: give more windows or fewer samples")
    draws = _draws(len(classes), samples, batches, seed)
    probes = _probes(model)
    values = np.zeros((batches, len(probes)))
    for b, draw in enumerate(draws):
        feats = _features(model, windows, (w[draw], t[draw]), batch_size)
        for j, p in enumerate(probes):
            values[b, j] = modularity(feats[p], classes[draw], k=k)
    blocks = {after: (before, after) for before, after in zip(probes, probes[1:])}
    return ModularityCurve(probes, values, k, samples, blocks)


__all__ = ["EMBEDDINGS", "next_token_classes", "next_token_curve"]

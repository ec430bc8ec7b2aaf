"""The cosine k-nearest-neighbour graph of a set of features, and its label modularity.

This is the measurement of Lu et al., "Understanding the Dynamics of DNNs Using Graph Modularity"
(ECCV 2022): flatten each sample's features, connect every sample to its ``k`` most
cosine-similar other samples by directed edges weighted by that cosine, symmetrise as
``(A + Aᵀ) / 2`` and take the weighted modularity (resolution 1) of the partition given by the
true labels.

Speed and memory: similarities are computed block by block (384 × 384), and only for block pairs
on or above the diagonal — the matrix is symmetric, so each block serves its rows and, transposed,
its columns, half the GEMM work of computing every entry. A running top-``k`` per row is kept; the
dense ``N × N`` matrix never exists, and the graph is kept as its ``N·k`` edges. Features are
L2-normalised row by row (by scaling the products, not by copying the features) and multiplied
in float32 (float64 inputs stay float64); float32 changes a similarity by ~1e-7, which only
matters when two neighbours tie to that precision.

>>> x = torch.randn(200, 64); y = torch.randint(0, 4, (200,))
>>> abs(modularity(x, y)) < 0.1  # random features: no class structure
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerprune.lazy import lazy_import

torch = lazy_import("torch")

# Side of a similarity block: each is 384 × 384 floats (0.6 MB) whatever N is.
_BLOCK = 384


@dataclass(frozen=True)
class KnnGraph:
    """Directed kNN edges ``src → dst`` with cosine ``weight`` (``N·k`` of each)."""

    num_nodes: int
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray

    def symmetrised(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges ``(u < v)`` of ``(A + Aᵀ) / 2``, each pair once."""
        u = np.minimum(self.src, self.dst)
        v = np.maximum(self.src, self.dst)
        key = u.astype(np.int64) * self.num_nodes + v
        uniq, inverse = np.unique(key, return_inverse=True)
        weight = np.bincount(inverse, weights=self.weight / 2.0, minlength=len(uniq))
        return uniq // self.num_nodes, uniq % self.num_nodes, weight


def _flatten(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    f = torch.as_tensor(features)
    if f.ndim < 1 or len(f) < 2:
        raise ValueError(f"need features for at least 2 samples, got shape {tuple(f.shape)}")
    f = f.reshape(len(f), -1)
    return f if f.dtype in (torch.float32, torch.float64) else f.float()


def _symmetric_topk(f: torch.Tensor, inv_norm: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of every row, computing each block pair ``(a, b ≥ a)`` of the
    similarity matrix once: block ``(a, b)`` serves rows of ``a`` and, transposed, rows of ``b``,
    which halves the GEMM work against computing all ``N × N`` entries."""
    n = len(f)
    best_w = torch.full((n, k), -torch.inf, dtype=f.dtype, device=f.device)
    best_i = torch.zeros((n, k), dtype=torch.long, device=f.device)

    def merge(rows: slice, w: torch.Tensor, i: torch.Tensor) -> None:
        w_all = torch.cat([best_w[rows], w], dim=1)
        i_all = torch.cat([best_i[rows], i], dim=1)
        top_w, pos = w_all.topk(k, dim=1)
        best_w[rows], best_i[rows] = top_w, i_all.gather(1, pos)

    for a in range(0, n, _BLOCK):
        rows_a = slice(a, min(a + _BLOCK, n))
        fa = f[rows_a]
        for b in range(a, n, _BLOCK):
            rows_b = slice(b, min(b + _BLOCK, n))
            sim = fa @ f[rows_b].T
            sim.mul_(inv_norm[rows_a, None]).mul_(inv_norm[None, rows_b])
            if a == b:
                sim.fill_diagonal_(-torch.inf)  # no self-loops
            w, i = sim.topk(min(k, sim.shape[1]), dim=1)
            merge(rows_a, w, i + b)
            if a != b:
                w, i = sim.topk(min(k, sim.shape[0]), dim=0)
                merge(rows_b, w.T, i.T + a)
    return best_w, best_i


def knn_graph(features: torch.Tensor | np.ndarray, k: int = 3) -> KnnGraph:
    """Each sample's ``k`` most cosine-similar other samples, as weighted directed edges."""
    f = _flatten(features)
    n = len(f)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} samples, got {k}")
    # Scale by the inverse norms instead of normalising a copy: the features can be gigabytes.
    inv_norm = f.norm(dim=1).clamp_min(torch.finfo(f.dtype).tiny).reciprocal()
    best_w, best_i = _symmetric_topk(f, inv_norm, k)
    w = best_w.double().numpy().ravel()
    dst = best_i.numpy().ravel().astype(np.int64)
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    return KnnGraph(n, src, dst, w)


def graph_modularity(graph: KnnGraph, labels: torch.Tensor | np.ndarray) -> float:
    """Weighted modularity (resolution 1) of the label partition of the symmetrised graph.

    igraph computes it when every weight is non-negative (always so after a ReLU); igraph refuses
    negative weights, so then the same formula is evaluated here with numpy.
    """
    labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).ravel()
    if len(labels) != graph.num_nodes:
        raise ValueError(f"{graph.num_nodes} samples but {len(labels)} labels")
    _, membership = np.unique(labels, return_inverse=True)
    u, v, w = graph.symmetrised()
    if w.sum() == 0:
        return 0.0
    if (w >= 0).all():
        import igraph as ig

        g = ig.Graph(n=graph.num_nodes, edges=np.column_stack([u, v]).tolist(), directed=False)
        return float(g.modularity(membership.tolist(), weights=w.tolist()))
    return _modularity_numpy(u, v, w, membership)


def _modularity_numpy(u, v, w, membership) -> float:
    """``Σ_c [ L_c / m − (d_c / 2m)² ]`` for undirected edges ``(u, v, w)``."""
    m = w.sum()
    same = membership[u] == membership[v]
    degree = np.bincount(membership[u], weights=w, minlength=membership.max() + 1)
    degree += np.bincount(membership[v], weights=w, minlength=membership.max() + 1)
    return float(w[same].sum() / m - ((degree / (2 * m)) ** 2).sum())


def modularity(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, k: int = 3) -> float:
    """Q of the label partition on the cosine kNN graph of ``features`` ``(N, ...)``.

    >>> x = torch.eye(4).repeat_interleave(5, 0) + 0.01 * torch.rand(20, 4)  # 4 separated classes
    >>> round(modularity(x, torch.arange(4).repeat_interleave(5)), 2)
    0.75
    """
    return graph_modularity(knn_graph(features, k), labels)

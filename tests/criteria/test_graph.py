import networkx as nx
import numpy as np
import pytest
import torch

from layerprune import modularity
from layerprune.criteria.graph import graph_modularity, knn_graph


def networkx_q(graph, labels):
    """Q of the label partition by networkx, on the symmetrised graph built from the same edges."""
    u, v, w = graph.symmetrised()
    g = nx.Graph()
    g.add_nodes_from(range(graph.num_nodes))
    g.add_weighted_edges_from(zip(u.tolist(), v.tolist(), w.tolist()))
    labels = np.asarray(labels)
    communities = [set(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)]
    return nx.community.modularity(g, communities, weight="weight")


def brute_force_edges(features, k):
    """Dense float64 cosine similarities, self excluded, the k largest per row."""
    f = features.reshape(len(features), -1).double()
    f = f / f.norm(dim=1, keepdim=True)
    sim = f @ f.T
    sim.fill_diagonal_(-np.inf)
    w, i = sim.topk(k, dim=1)
    return {(r, int(c)): float(x) for r in range(len(f)) for c, x in zip(i[r], w[r])}


def clustered(n_per_class, classes, dim, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x.relu(), labels


@pytest.mark.parametrize("n,k", [(30, 1), (120, 3), (400, 5), (1500, 3)])
def test_equals_networkx_on_the_same_knn_graph(n, k):
    x, y = clustered(n // 5, 5, 48, spread=1.5, seed=n)
    graph = knn_graph(x, k)
    assert len(graph.src) == len(y) * k
    assert graph_modularity(graph, y) == pytest.approx(networkx_q(graph, y.numpy()), abs=1e-6)
    assert modularity(x, y, k) == pytest.approx(networkx_q(graph, y.numpy()), abs=1e-6)


def test_negative_cosines_use_the_same_formula_as_networkx():
    # Signed features: some kNN weights are negative, which igraph refuses.
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    graph = knn_graph(x, 5)
    assert (graph.weight < 0).any()
    assert graph_modularity(graph, y) == pytest.approx(networkx_q(graph, y.numpy()), abs=1e-9)


def test_knn_edges_match_a_dense_float64_reference():
    x, _ = clustered(40, 5, 64, spread=2.0)
    graph = knn_graph(x, 3)
    got = {(int(s), int(d)): float(w) for s, d, w in zip(graph.src, graph.dst, graph.weight)}
    want = brute_force_edges(x, 3)
    assert got.keys() == want.keys()
    assert max(abs(got[e] - want[e]) for e in want) < 1e-5
    assert all(s != d for s, d in got)  # no self-loops


def test_symmetrisation_halves_one_way_edges_and_sums_mutual_ones():
    # 0 and 1 are each other's nearest neighbour; 2's nearest is 1 but 1's is 0.
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
    u, v, w = knn_graph(x, 1).symmetrised()
    edges = {(int(a), int(b)): float(c) for a, b, c in zip(u, v, w)}
    cos01 = float(torch.nn.functional.cosine_similarity(x[0], x[1], dim=0))
    cos12 = float(torch.nn.functional.cosine_similarity(x[1], x[2], dim=0))
    assert edges == pytest.approx({(0, 1): cos01, (1, 2): cos12 / 2})


@pytest.mark.parametrize("classes", [2, 4, 10])
def test_perfectly_separated_balanced_classes_give_one_minus_one_over_c(classes):
    x, y = clustered(30, classes, 64, spread=0.01)
    assert modularity(x, y) == pytest.approx(1 - 1 / classes, abs=1e-3)


def test_random_features_give_q_near_zero():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 128, generator=g), torch.randint(0, 10, (1000,), generator=g)
    assert abs(modularity(x, y)) < 0.02


def test_invariant_to_feature_scaling_per_sample_and_overall():
    x, y = clustered(40, 5, 32, spread=1.0)
    q = modularity(x, y)
    scale = torch.rand(len(x), 1) * 10 + 0.1
    assert modularity(x * scale, y) == pytest.approx(q, abs=1e-6)
    assert modularity(x * 1e4, y) == pytest.approx(q, abs=1e-6)


def test_invariant_to_sample_permutation_and_label_renaming():
    x, y = clustered(40, 5, 32, spread=1.0)
    q = modularity(x, y)
    perm = torch.randperm(len(x))
    assert modularity(x[perm], y[perm]) == pytest.approx(q, abs=1e-6)
    assert modularity(x, (y + 3) * 7) == pytest.approx(q, abs=1e-6)


def test_feature_maps_are_flattened():
    x, y = clustered(20, 4, 48, spread=1.0)
    assert modularity(x.reshape(len(x), 3, 4, 4), y) == pytest.approx(modularity(x, y), abs=1e-9)


def test_more_separation_gives_higher_q():
    qs = [modularity(*clustered(30, 5, 32, spread=s)) for s in (4.0, 1.0, 0.2)]
    assert qs[0] < qs[1] < qs[2]


@pytest.mark.parametrize("k", [0, 10])
def test_k_out_of_range_is_refused(k):
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(torch.randn(10, 4), k)


def test_label_count_must_match():
    with pytest.raises(ValueError, match="labels"):
        modularity(torch.randn(10, 4), torch.zeros(9, dtype=torch.long))


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocked_symmetric_search_finds_the_same_neighbours(monkeypatch, block):
    import layerprune.criteria.graph as graph_module

    monkeypatch.setattr(graph_module, "_BLOCK", block)  # many blocks, ragged last one
    x, _ = clustered(20, 5, 32, spread=2.0, seed=3)
    graph = knn_graph(x, 4)
    got = {(int(s), int(d)): float(w) for s, d, w in zip(graph.src, graph.dst, graph.weight)}
    want = brute_force_edges(x, 4)
    assert got.keys() == want.keys()
    assert max(abs(got[e] - want[e]) for e in want) < 1e-5

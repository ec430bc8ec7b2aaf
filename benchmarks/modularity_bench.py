"""Modularity benchmarks (not tests): scorer vs a dense reference, curve cost, N=10,000 memory.

1. ``layerprune.modularity`` (chunked GEMM + topk, sparse symmetrisation, igraph) against a
   straightforward reference written here (dense float64 cosine matrix in numpy, ``heapq.nlargest``
   per row, (A + Aᵀ)/2 as a networkx Graph, ``networkx`` modularity) on identical features:
   MNIST-5k images through a fixed random ReLU layer (1024 → D), 10 classes, k=3, at
   N ∈ {500, 2000} × D ∈ {4096, 16384}. Goals: |ΔQ| < 1e-6, and ≥ 5× faster at N=2000.
2. ResNet-56 (untrained, eval) ``modularity_curve`` with the paper defaults (5 batches × 500
   samples, k=3, 28 probe points) against (a) one plain no-hook forward over the same 2,500
   samples in micro-batches of 256 and (b) the N×N similarity GEMMs ``f @ f.T`` alone, on each
   probe's float32 features. Goal: curve / (forward + GEMM) ≤ 1.5.
3. ``modularity_curve`` on ResNet-56 at N=10,000 (one batch) in a fresh child process, so that
   its peak RSS (``ru_maxrss``) is its own. Goal: peak RSS ≤ 4 GB. Takes several minutes on 2 cores.

Timings in parts 1 and 2 are the best (minimum) of ``--repeats`` runs; part 3 runs once.

    python benchmarks/modularity_bench.py                       # all three parts
    python benchmarks/modularity_bench.py --part reference --sizes 500 2000 --dims 4096 16384
    python benchmarks/modularity_bench.py --part large --memory-budget 536870912
"""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import layerprune
from layerprune.criteria.context import ScoringContext

GB = 1e9


def best_of(repeats: int, fn):
    """(minimum seconds over ``repeats`` calls, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def reference_modularity(features: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Dense float64 cosine kNN graph, (A + Aᵀ)/2 in networkx, networkx's weighted modularity."""
    import networkx as nx
    from networkx.algorithms.community import modularity as nx_modularity

    f = features.astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = f @ f.T  # numpy spots the a @ a.T pattern and calls BLAS SYRK: half the flops of a GEMM
    np.fill_diagonal(s, -np.inf)  # a sample is not its own neighbour
    n = len(f)
    a = np.zeros((n, n))
    for i in range(n):
        row = s[i].tolist()
        for j in heapq.nlargest(k, range(n), key=row.__getitem__):
            a[i, j] = row[j]
    g = nx.from_numpy_array((a + a.T) / 2)  # edge attribute "weight"
    communities = [set(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)]
    return nx_modularity(g, communities, weight="weight")


def make_features(kind: str, n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) float32 non-negative features with 10 classes, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "mnist5k":
        x, y = layerprune.build_dataset("mnist5k", augment=False).train.batch(torch.arange(n))
        x = x.flatten(1)
    else:  # class means + Gaussian noise
        y = torch.randint(0, 10, (n,), generator=gen)
        x = torch.randn(10, 1024, generator=gen)[y] + 2 * torch.randn(n, 1024, generator=gen)
    w = torch.randn(x.shape[1], dim, generator=gen) / x.shape[1] ** 0.5
    return torch.relu(x @ w).contiguous(), y


def cifar_shaped(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised 3×32×32 images of the seeded synthetic dataset (10 classes, so Q > 0)."""
    bundle = layerprune.build_dataset("synthetic", num_samples=n, image_size=32, channels=3,
                                      val_fraction=0, test_fraction=0)
    return bundle.train.batch(torch.arange(n))


def part_reference(args) -> None:
    print(f"\n[1] modularity scorer vs dense float64 numpy/heapq/networkx reference "
          f"({args.features} features, k=3, best of {args.repeats})")
    print(f"{'N':>6} {'D':>6} {'Q library':>12} {'Q reference':>12} {'|ΔQ|':>9} "
          f"{'library s':>10} {'reference s':>12} {'speed-up':>9}")
    warm = torch.rand(20, 8), torch.arange(20) % 2  # first-call imports (igraph, networkx) not timed
    layerprune.modularity(*warm)
    reference_modularity(warm[0].numpy(), warm[1].numpy())
    for n in args.sizes:
        for dim in args.dims:
            f, y = make_features(args.features, n, dim)
            f64, y_np = f.numpy(), y.numpy()
            t_lib, q_lib = best_of(args.repeats, lambda: layerprune.modularity(f, y, k=3))
            t_ref, q_ref = best_of(args.repeats, lambda: reference_modularity(f64, y_np, k=3))
            print(f"{n:>6} {dim:>6} {q_lib:>12.8f} {q_ref:>12.8f} {abs(q_lib - q_ref):>9.1e} "
                  f"{t_lib:>10.3f} {t_ref:>12.3f} {t_ref / t_lib:>8.1f}×")
    print("goals: |ΔQ| < 1e-6; speed-up ≥ 5× at N=2000")


def part_curve(args) -> None:
    samples, batches, mb = 500, 5, 256
    model = layerprune.create_model("cifar_resnet56").eval()
    x, y = cifar_shaped(samples * batches)

    @torch.no_grad()
    def forward():
        for chunk in x.split(mb):
            model(chunk)

    forward()  # warm-up
    t = time.perf_counter()
    ctx = ScoringContext(model, (x, y), samples=samples, batches=batches, micro_batch=mb)
    t_setup = time.perf_counter() - t
    gemm: list[float] = []

    def time_gemm(f: torch.Tensor, labels: torch.Tensor) -> None:
        gemm.append(best_of(args.repeats, lambda: f @ f.T)[0])

    ctx.feature_stats(probe={"gemm": time_gemm})
    t_gemm = sum(gemm)

    fwd_times, curve_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a burst of other load hits both alike
        fwd_times.append(best_of(1, forward)[0])
        t, curve = best_of(1, lambda: layerprune.modularity_curve(
            model, (x, y), samples=samples, batches=batches, k=3, micro_batch=mb))
        curve_times.append(t)
    t_fwd, t_curve = min(fwd_times), min(curve_times)
    print(f"\n[2] ResNet-56 modularity curve, {batches} batches × {samples} samples, k=3, "
          f"{len(curve.probes)} probes, {len(ctx.stream.groups(ctx.samples, pairs=False))} forward group(s) (best of {args.repeats})")
    print(f"  curve (modularity_curve, end to end)   {t_curve:8.2f} s")
    print(f"    of which context setup (find_blocks)  {t_setup:8.2f} s  (timed separately)")
    print(f"  plain forward, {samples * batches} samples, no hooks   {t_fwd:8.2f} s")
    print(f"  GEMM f @ f.T, {len(gemm)} calls (N={samples})      {t_gemm:8.2f} s")
    print(f"  curve / (forward + GEMM)               {t_curve / (t_fwd + t_gemm):8.2f}   (goal ≤ 1.5)")
    print(f"  (curve − setup) / (forward + GEMM)     {(t_curve - t_setup) / (t_fwd + t_gemm):8.2f}")
    print(f"  Q at {curve.probes[0]} = {curve.q(curve.probes[0]):.4f}, "
          f"Q at {curve.probes[-1]} = {curve.q(curve.probes[-1]):.4f}")


def rss_now_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def part_large(args) -> None:
    """Runs in its own process: ru_maxrss is this process's peak resident set."""
    n = 10_000
    extra = {k: v for k, v in (("memory_budget", args.memory_budget), ("micro_batch", args.micro_batch))
             if v is not None}
    torch.manual_seed(0)  # the same weights and inputs every run, so Q can be compared across runs
    model = layerprune.create_model("cifar_resnet56").eval()
    x, y = cifar_shaped(n)
    base = rss_now_kib()
    t = time.perf_counter()
    # what modularity_curve(model, (x, y), samples=n, batches=1, k=3) does, keeping the context
    ctx = ScoringContext(model, (x, y), samples=n, batches=1, **extra)
    curve = layerprune.get_criterion("modularity", k=3)(ctx).diagnostics["curve"]
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    groups = ctx.stream.groups(n, pairs=False)
    resumed = sum(p.resumed_from is not None for p in ctx.stream.passes)
    held = [sum(p.numel for p in g.probes) * n * 4 for g in groups]
    print(f"\n[3] ResNet-56 modularity curve at N={n}, 1 batch, k=3, {extra or 'default context'} "
          f"(child process, one run, load average {os.getloadavg()[0]:.2f})")
    print(f"  wall time                     {wall:8.1f} s   ({len(curve.probes)} probes)")
    print(f"  RSS before the curve          {base * 1024 / GB:8.2f} GB  (torch, model, {n} inputs)")
    print(f"  peak RSS (ru_maxrss)          {peak * 1024 / GB:8.2f} GB = {peak / 2**20:.2f} GiB "
          f"→ {'≤' if peak * 1024 <= 4 * GB else '>'} 4 GB")
    print(f"  forward groups                {len(groups):8d}    (largest holds {max(held) / GB:.2f} GB "
          f"of features, total {sum(held) / GB:.2f} GB over all groups)")
    print(f"  passes resumed mid-network    {resumed:8d}    of {len(ctx.stream.passes)} (the others start at the image)")
    print(f"  Q at {curve.probes[0]} = {curve.q(curve.probes[0]):.4f}, "
          f"Q at {curve.probes[-1]} = {curve.q(curve.probes[-1]):.4f}")


def run_large_in_child(args) -> None:
    cmd = [sys.executable, __file__, "--part", "large"]
    for flag, value in (("--memory-budget", args.memory_budget), ("--micro-batch", args.micro_batch)):
        if value is not None:
            cmd += [flag, str(value)]
    sys.stdout.flush()
    subprocess.run(cmd, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"  parent's RUSAGE_CHILDREN peak {peak * 1024 / GB:8.2f} GB  (cross-check)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["reference", "curve", "large", "all"], default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--features", choices=["mnist5k", "gaussian"], default="mnist5k")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes (part 3; default: the library's)")
    parser.add_argument("--micro-batch", type=int, default=None, help="part 3; default: the library's")
    args = parser.parse_args()
    if args.part == "large":
        part_large(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, layerprune {layerprune.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.part in ("reference", "all"):
        part_reference(args)
    if args.part in ("curve", "all"):
        part_curve(args)
    if args.part == "all":
        run_large_in_child(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs; other processes skew seconds)")


if __name__ == "__main__":
    main()

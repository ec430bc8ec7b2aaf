"""Criteria compared side by side: ``layerprune bench RECIPE`` (a recipe with a ``bench:`` section)."""

from layerprune.bench.harness import WIDTH, Bench, BenchResult, run_bench

__all__ = ["WIDTH", "Bench", "BenchResult", "run_bench"]

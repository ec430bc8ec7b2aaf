"""Criteria compared side by side: ``layerprune bench SUITE.yaml`` (a suite of settings, or a
recipe with a ``bench:`` section as a suite of one)."""

from layerprune.bench.harness import WIDTH, BenchResult, SettingBench, run_bench, run_suite
from layerprune.bench.suite import Suite, load_suite

__all__ = ["WIDTH", "BenchResult", "SettingBench", "Suite", "load_suite", "run_bench", "run_suite"]

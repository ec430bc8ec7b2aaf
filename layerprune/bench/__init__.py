"""Criteria compared side by side: ``layerprune bench SUITE.yaml`` (a suite of settings, or a
recipe with a ``bench:`` section as a suite of one)."""

from layerprune.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {".harness": ["WIDTH", "BenchResult", "SettingBench", "run_bench", "run_suite"],
                                               ".suite": ["Suite", "load_suite"]})

__all__ = ["WIDTH", "BenchResult", "SettingBench", "Suite", "load_suite", "run_bench", "run_suite"]

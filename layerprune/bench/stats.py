"""Statistics of a suite's trials: paired differences to a reference criterion with bootstrap
intervals, average ranks and win rates across settings.

A *cell* is one setting, budget and seed: there every criterion pruned the same base model to
the same budget with the same calibration, repair and finetuning draws, so criteria are compared
within a cell (paired) and never across cells.

* Per setting and budget: each criterion's mean ± std over seeds, and its paired difference to the
  reference, ``m(c, seed) − m(reference, seed)`` of the task's metric ``m`` (accuracy, or a
  language model's perplexity, where a negative difference is the better one), with a 95% percentile-bootstrap interval
  over seeds (marked when it rests on fewer than :data:`FEW_SEEDS` seeds).
* Across the suite: each criterion's rank in every cell (1 = the best metric: the highest
  accuracy, the lowest perplexity; ties share the mean rank), averaged; its win rate against the reference (a win 1, a tie ½); its mean difference.
  Intervals come from a two-level bootstrap: settings drawn with replacement, then seeds within
  each drawn setting, so they cover both how settings and how seeds vary.

>>> rows = leaderboard(trials, reference="tail")  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any, Iterable

import numpy as np

FEW_SEEDS = 5
RESAMPLES = 2000
LEVEL = 0.95


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def _ranks(values: list[float], lower_is_better: bool = False) -> list[float]:
    """1 for the best value (the highest, or the lowest when ``lower_is_better``); tied values
    share the mean of their ranks."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(values if lower_is_better else [-v for v in values], method="average")]


def cells(trials: Iterable[dict[str, Any]], metric: str, criteria: list[str]) -> dict[tuple, dict[str, float]]:
    """(setting, budget, seed) → {criterion: metric} for ``criteria``."""
    out: dict[tuple, dict[str, float]] = {}
    for t in trials:
        if t["criterion"] in criteria:
            out.setdefault((t.get("setting", ""), t["budget"], t["seed"]), {})[t["criterion"]] = float(t[metric])
    return out


def paired(trials: list[dict[str, Any]], reference: str, metric: str = "after_finetune",
           seed: int = 0) -> list[dict[str, Any]]:
    """Per setting, budget and criterion: the paired difference to ``reference`` over seeds."""
    criteria = list(dict.fromkeys(t["criterion"] for t in trials))
    table = cells(trials, metric, criteria)
    rng = np.random.default_rng(seed)
    rows = []
    groups = list(dict.fromkeys((s, b) for s, b, _ in table))
    for setting, budget in groups:
        here = [v for (s, b, _), v in table.items() if (s, b) == (setting, budget)]
        for criterion in criteria:
            diffs = np.array([v[criterion] - v[reference] for v in here if criterion in v and reference in v])
            if not len(diffs) or criterion == reference:
                continue
            boot = diffs[rng.integers(0, len(diffs), size=(RESAMPLES, len(diffs)))].mean(axis=1)
            lo, hi = _interval(boot)
            rows.append({"setting": setting, "budget": budget, "criterion": criterion, "metric": metric,
                         "diff": float(diffs.mean()), "lo": lo, "hi": hi, "seeds": len(diffs),
                         "few_seeds": len(diffs) < FEW_SEEDS})
    return rows


def leaderboard(trials: list[dict[str, Any]], reference: str, metric: str = "after_finetune",
                criteria: list[str] | None = None, seed: int = 0, lower_is_better: bool = False) -> list[dict[str, Any]]:
    """Average rank, win rate and mean difference against ``reference`` per criterion, over every
    cell, with two-level bootstrap intervals (settings, then seeds); sorted by average rank.
    ``lower_is_better``: the metric is a perplexity (rank 1 and a win go to the lower value)."""
    criteria = criteria or list(dict.fromkeys(t["criterion"] for t in trials))
    table = cells(trials, metric, criteria)
    # Per setting and seed, each criterion's per-cell rank, win and difference (over the budgets).
    units: dict[str, dict[Any, list[dict[str, tuple[float, float, float]]]]] = {}
    for (setting, budget, s), values in table.items():
        names = [c for c in criteria if c in values]
        ranks = dict(zip(names, _ranks([values[c] for c in names], lower_is_better)))
        ref = values.get(reference)
        sign = -1 if lower_is_better else 1
        stats = {c: (ranks[c],
                     float("nan") if ref is None else
                     1.0 if sign * values[c] > sign * ref else 0.5 if values[c] == ref else 0.0,
                     float("nan") if ref is None else values[c] - ref) for c in names}
        units.setdefault(setting, {}).setdefault(s, []).append(stats)
    settings = list(units)
    # One array per criterion: [setting][seed][budget] → (rank, win, diff); missing → nan.
    arrays = {c: [[np.array([cell.get(c, (np.nan,) * 3) for cell in units[st][s]]) for s in units[st]]
                  for st in settings] for c in criteria}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(RESAMPLES):
        picked = [(i, rng.integers(0, len(units[settings[i]]), size=len(units[settings[i]])))
                  for i in rng.integers(0, len(settings), size=len(settings))]
        draws.append(picked)

    def estimate(c: str, plan) -> np.ndarray:
        stacked = np.concatenate([arrays[c][i][j] for i, seeds in plan for j in seeds])
        return np.nanmean(stacked, axis=0) if np.isfinite(stacked).any() else np.full(3, np.nan)

    everything = [(i, range(len(units[settings[i]]))) for i in range(len(settings))]
    rows = []
    for c in criteria:
        point = estimate(c, everything)
        with warnings.catch_warnings():  # a draw without the criterion: nan, left out below
            warnings.simplefilter("ignore", RuntimeWarning)
            boot = np.array([estimate(c, plan) for plan in draws])
        n = sum(1 for cell in table.values() if c in cell)
        row = {"criterion": c, "metric": metric, "cells": n, "settings": sum(1 for st in settings if any(
            c in cell for (s, _, _), cell in table.items() if s == st))}
        for k, key in enumerate(("rank", "win_rate", "diff")):
            finite = boot[:, k][np.isfinite(boot[:, k])]
            lo, hi = _interval(finite) if len(finite) else (float("nan"), float("nan"))
            row.update({key: float(point[k]), f"{key}_lo": lo, f"{key}_hi": hi})
        if c == reference:
            row.update(win_rate=float("nan"), win_rate_lo=float("nan"), win_rate_hi=float("nan"),
                       diff=0.0, diff_lo=0.0, diff_hi=0.0)
        rows.append(row)
    rows.sort(key=lambda r: (r["rank"], r["criterion"]))
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


__all__ = ["FEW_SEEDS", "LEVEL", "RESAMPLES", "cells", "leaderboard", "mean_std", "paired"]

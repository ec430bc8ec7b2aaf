"""The suite statistics on hand-built trials: paired differences to the reference, average
ranks, win rates and the two-level bootstrap, each checked against values computed here
(scipy's rankdata, plain numpy, or by hand on inputs small enough to see the answer)."""

import itertools
import random

import numpy as np
import pytest
from scipy.stats import rankdata

from layerprune.bench import stats
from layerprune.bench.stats import FEW_SEEDS, cells, leaderboard, mean_std, paired

REF = "tail"


def trial(setting, criterion, budget, seed, acc, before=0.0):
    return {"setting": setting, "criterion": criterion, "budget": budget, "seed": seed,
            "after_finetune": acc, "before_finetune": before}


def grid(settings, criteria, budgets, seeds, acc):
    """One trial per combination; ``acc(setting, criterion, budget, seed)`` gives its accuracy."""
    return [trial(st, c, b, s, acc(st, c, b, s))
            for st, c, b, s in itertools.product(settings, criteria, budgets, seeds)]


def random_trials(seed=0, settings=("x", "y", "z"), criteria=(REF, "a", "b", "c"), budgets=("k1", "k2"),
                  seeds=(0, 1, 2), levels=None):
    """Random accuracies; with ``levels`` only that many distinct values, so that ties occur."""
    rng = np.random.default_rng(seed)
    draw = (lambda: float(rng.integers(0, levels)) / 10) if levels else (lambda: float(rng.random()))
    return grid(settings, criteria, budgets, seeds, lambda *_: draw())


def by_cell(trials, criteria=None, metric="after_finetune"):
    """(setting, budget, seed) → {criterion: value}, built here independently of the library."""
    out = {}
    for t in trials:
        if criteria is None or t["criterion"] in criteria:
            out.setdefault((t["setting"], t["budget"], t["seed"]), {})[t["criterion"]] = t[metric]
    return out


def row_of(rows, criterion):
    (row,) = [r for r in rows if r["criterion"] == criterion]
    return row


# -- cells ---------------------------------------------------------------------------------------

def test_cells_group_by_setting_budget_and_seed_and_keep_only_the_listed_criteria():
    trials = [trial("x", REF, "k1", 0, 0.5), trial("x", "a", "k1", 0, 0.6), trial("x", "b", "k1", 0, 0.7),
              trial("x", REF, "k1", 1, 0.4), trial("y", REF, "k1", 0, 0.3)]
    assert cells(trials, "after_finetune", [REF, "a"]) == {
        ("x", "k1", 0): {REF: 0.5, "a": 0.6}, ("x", "k1", 1): {REF: 0.4}, ("y", "k1", 0): {REF: 0.3}}


def test_cells_of_trials_without_a_setting_share_the_empty_setting():
    """A plain bench recipe's trials carry no setting: they form one (unnamed) setting."""
    trials = [{k: v for k, v in trial("x", c, "k1", 0, acc).items() if k != "setting"}
              for c, acc in ((REF, 0.5), ("a", 0.6))]
    assert cells(trials, "after_finetune", [REF, "a"]) == {("", "k1", 0): {REF: 0.5, "a": 0.6}}


# -- paired --------------------------------------------------------------------------------------

def test_a_constant_per_seed_offset_gets_a_point_interval():
    """The reference swings by 80 points across seeds, the criterion is +1 point above it at every
    seed: paired differences are all 0.01, so every bootstrap mean and both bounds are 0.01 (an
    unpaired comparison would see an interval tens of points wide). The trials are listed in a
    different seed order per criterion: pairing must follow the seed, not the position."""
    ref = {0: 0.10, 1: 0.90, 2: 0.35, 3: 0.70, 4: 0.20, 5: 0.55}
    trials = [trial("x", REF, "k1", s, acc) for s, acc in sorted(ref.items(), reverse=True)]
    trials += [trial("x", "a", "k1", s, acc + 0.01) for s, acc in ref.items()]
    (row,) = paired(trials, REF)
    assert (row["diff"], row["lo"], row["hi"]) == pytest.approx((0.01, 0.01, 0.01), abs=1e-12)


def test_paired_diff_is_the_mean_over_seeds_of_the_per_seed_difference():
    trials = random_trials(settings=("x",), budgets=("k1",), seeds=range(6))
    table = by_cell(trials)
    rows = paired(trials, REF)
    for c in ("a", "b", "c"):
        expected = np.mean([table[("x", "k1", s)][c] - table[("x", "k1", s)][REF] for s in range(6)])
        assert row_of(rows, c)["diff"] == pytest.approx(expected, abs=1e-12)
        assert row_of(rows, c)["seeds"] == 6


def test_paired_leaves_out_seeds_where_either_side_is_missing():
    """Seed 1 lacks the criterion, seed 2 the reference: only seeds 0 and 3 pair up."""
    trials = [trial("x", REF, "k1", 0, 0.5), trial("x", "a", "k1", 0, 0.7),
              trial("x", REF, "k1", 1, 0.5),
              trial("x", "a", "k1", 2, 0.9),
              trial("x", REF, "k1", 3, 0.6), trial("x", "a", "k1", 3, 0.5)]
    (row,) = paired(trials, REF)
    assert row["seeds"] == 2
    assert row["diff"] == pytest.approx(((0.7 - 0.5) + (0.5 - 0.6)) / 2)


def test_the_reference_gets_no_paired_row():
    rows = paired(random_trials(), REF)
    assert REF not in {r["criterion"] for r in rows}
    assert {r["criterion"] for r in rows} == {"a", "b", "c"}


@pytest.mark.parametrize("n,few", [(FEW_SEEDS - 1, True), (FEW_SEEDS, False), (FEW_SEEDS + 1, False)])
def test_few_seeds_marks_intervals_on_fewer_than_FEW_SEEDS_seeds(n, few):
    (row,) = paired(random_trials(settings=("x",), criteria=(REF, "a"), budgets=("k1",), seeds=range(n)), REF)
    assert (row["seeds"], row["few_seeds"]) == (n, few)


def test_paired_interval_contains_the_estimate_within_the_range_of_the_differences():
    """A bootstrap mean over seeds can never leave [min, max] of the per-seed differences."""
    trials = random_trials(settings=("x",), budgets=("k1",), seeds=range(8))
    table = by_cell(trials)
    for row in paired(trials, REF):
        diffs = [table[("x", "k1", s)][row["criterion"]] - table[("x", "k1", s)][REF] for s in range(8)]
        assert min(diffs) <= row["lo"] < row["diff"] < row["hi"] <= max(diffs)


def test_paired_rows_are_per_setting_and_budget():
    """Each (setting, budget) has its own offset: a row that mixed groups would not get it back."""
    settings, budgets = ("x", "y"), ("k1", "macs0.3")
    offset = {(st, b): 0.01 * (1 + i) for i, (st, b) in enumerate(itertools.product(settings, budgets))}
    rng = random.Random(0)
    base = {key: rng.random() for key in itertools.product(settings, budgets, range(3))}

    def acc(st, c, b, s):
        return base[st, b, s] + {REF: 0.0, "a": offset[st, b], "b": -offset[st, b]}[c]

    rows = paired(grid(settings, (REF, "a", "b"), budgets, range(3), acc), REF)
    assert sorted((r["setting"], r["budget"], r["criterion"]) for r in rows) == sorted(
        (st, b, c) for st, b in offset for c in ("a", "b"))
    for r in rows:
        sign = 1 if r["criterion"] == "a" else -1
        assert r["diff"] == pytest.approx(sign * offset[r["setting"], r["budget"]], abs=1e-12)


def test_paired_compares_the_metric_it_is_given():
    trials = [trial("x", REF, "k1", 0, 0.5, before=0.2), trial("x", "a", "k1", 0, 0.6, before=0.5)]
    (row,) = paired(trials, REF, metric="before_finetune")
    assert (row["metric"], row["diff"]) == ("before_finetune", pytest.approx(0.3))


def test_LEVEL_sets_the_coverage_of_the_interval(monkeypatch):
    """Differences 0 and 1 at two seeds: bootstrap means are 0, ½ or 1 with chances ¼, ½, ¼. A 95%
    interval (2.5th–97.5th percentiles) reaches both 0 and 1; a 40% one (30th–70th) is just ½."""
    trials = [trial("x", REF, "k1", 0, 0.5), trial("x", "a", "k1", 0, 0.5),
              trial("x", REF, "k1", 1, 0.0), trial("x", "a", "k1", 1, 1.0)]
    assert stats.LEVEL == 0.95
    (row,) = paired(trials, REF)
    assert (row["lo"], row["hi"]) == (0.0, 1.0)
    monkeypatch.setattr(stats, "LEVEL", 0.40)
    (row,) = paired(trials, REF)
    assert (row["lo"], row["hi"]) == (0.5, 0.5)


# -- leaderboard ---------------------------------------------------------------------------------

def test_average_rank_is_the_mean_over_cells_of_scipy_ranks_with_ties_sharing():
    trials = random_trials(levels=3)  # three distinct accuracies among four criteria: ties
    table = by_cell(trials)
    assert any(len(set(v.values())) < len(v) for v in table.values())
    ranks = {c: [] for c in (REF, "a", "b", "c")}
    for values in table.values():
        names = list(values)
        for name, r in zip(names, rankdata([-values[n] for n in names], method="average")):
            ranks[name].append(r)
    rows = leaderboard(trials, REF)
    for c, rs in ranks.items():
        assert row_of(rows, c)["rank"] == pytest.approx(np.mean(rs), abs=1e-12)


def test_a_criterion_that_wins_every_cell_ranks_first_with_a_point_interval():
    trials = random_trials()
    for t in trials:
        if t["criterion"] == "a":
            t["after_finetune"] = 2.0  # above any random accuracy in [0, 1)
    row = row_of(leaderboard(trials, REF), "a")
    assert (row["rank"], row["rank_lo"], row["rank_hi"]) == (1.0, 1.0, 1.0)
    assert (row["win_rate"], row["win_rate_lo"], row["win_rate_hi"]) == (1.0, 1.0, 1.0)


def test_win_rate_counts_a_tie_as_half():
    """Against the reference over four seeds: win, win, tie, loss → (1 + 1 + ½ + 0) / 4 = 0.625."""
    trials = []
    for s, (ref, a) in enumerate([(0.5, 0.6), (0.5, 0.7), (0.5, 0.5), (0.5, 0.4)]):
        trials += [trial("x", REF, "k1", s, ref), trial("x", "a", "k1", s, a)]
    assert row_of(leaderboard(trials, REF), "a")["win_rate"] == 0.625


def test_leaderboard_diff_is_the_mean_paired_difference_over_cells():
    trials = random_trials()
    table = by_cell(trials)
    rows = leaderboard(trials, REF)
    for c in ("a", "b", "c"):
        expected = np.mean([v[c] - v[REF] for v in table.values()])
        assert row_of(rows, c)["diff"] == pytest.approx(expected, abs=1e-12)


def test_the_reference_has_no_win_rate_and_a_zero_difference():
    row = row_of(leaderboard(random_trials(), REF), REF)
    assert np.isnan(row["win_rate"]) and np.isnan(row["win_rate_lo"]) and np.isnan(row["win_rate_hi"])
    assert (row["diff"], row["diff_lo"], row["diff_hi"]) == (0.0, 0.0, 0.0)


def test_leaderboard_rows_are_sorted_by_average_rank():
    """Criteria first seen in the order c, b, tail, a, with accuracies rising in that order: the
    leaderboard must reorder them a, tail, b, c."""
    acc = {"c": 0.1, "b": 0.2, REF: 0.3, "a": 0.4}
    rows = leaderboard(grid(("x",), list(acc), ("k1",), range(2), lambda st, c, b, s: acc[c]), REF)
    assert [r["criterion"] for r in rows] == ["a", REF, "b", "c"]
    assert [r["rank"] for r in rows] == [1.0, 2.0, 3.0, 4.0]


def test_cells_and_settings_count_where_the_criterion_was_run():
    """``extra`` ran only in setting x (2 budgets × 3 seeds); the others in all three settings."""
    trials = random_trials() + random_trials(settings=("x",), criteria=("extra",))
    rows = leaderboard(trials, REF)
    assert (row_of(rows, "extra")["cells"], row_of(rows, "extra")["settings"]) == (6, 1)
    assert (row_of(rows, "a")["cells"], row_of(rows, "a")["settings"]) == (18, 3)


def test_a_criterion_missing_from_a_setting_is_ranked_only_where_present():
    """``extra`` is best wherever it ran (setting x only): rank 1 there, and the others are ranked
    among four in x and among three in y and z."""
    trials = random_trials() + random_trials(settings=("x",), criteria=("extra",))
    for t in trials:
        if t["criterion"] == "extra":
            t["after_finetune"] = 2.0
    table = by_cell(trials)
    rows = leaderboard(trials, REF)
    extra = row_of(rows, "extra")
    assert (extra["rank"], extra["rank_lo"], extra["rank_hi"]) == (1.0, 1.0, 1.0)
    for c in (REF, "a", "b", "c"):
        expected = [rankdata([-v for v in values.values()])[list(values).index(c)] for values in table.values()]
        assert row_of(rows, c)["rank"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_criteria_argument_limits_what_is_ranked():
    """With criteria=[tail, a], b and c are neither listed nor counted in a's rank."""
    trials = random_trials()
    table = by_cell(trials, criteria=(REF, "a"))
    rows = leaderboard(trials, REF, criteria=[REF, "a"])
    assert {r["criterion"] for r in rows} == {REF, "a"}
    expected = np.mean([1.0 if v["a"] > v[REF] else 1.5 if v["a"] == v[REF] else 2.0 for v in table.values()])
    assert row_of(rows, "a")["rank"] == pytest.approx(expected)


def test_leaderboard_intervals_contain_the_point_estimates():
    for row in leaderboard(random_trials(seed=5), REF):
        for key in ("rank", "win_rate", "diff") if row["criterion"] != REF else ("rank",):
            assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"], (row["criterion"], key)
            assert row[f"{key}_lo"] < row[f"{key}_hi"], (row["criterion"], key)


def test_leaderboard_is_reproducible():
    trials = random_trials(seed=7)
    np.testing.assert_equal(leaderboard(trials, REF), leaderboard(trials, REF))


def test_the_rank_interval_covers_how_settings_vary_not_only_seeds():
    """``a`` is best in setting x and worst in setting y at every seed and budget, so resampling
    seeds alone would always give rank 2. Drawing two settings with replacement gives {x, x}
    (rank 1) and {y, y} (rank 3) a quarter of the time each, so the 95% interval is [1, 3]; the
    win rate's is [0, 1]."""
    def acc(st, c, b, s):
        return {REF: 0.5, "b": 0.6, "a": 0.9 if st == "x" else 0.1}[c] + 0.01 * s

    row = row_of(leaderboard(grid(("x", "y"), (REF, "a", "b"), ("k1", "k2"), range(3), acc), REF), "a")
    assert row["rank"] == 2.0
    assert (row["rank_lo"], row["rank_hi"]) == (1.0, 3.0)
    assert (row["win_rate"], row["win_rate_lo"], row["win_rate_hi"]) == (0.5, 0.0, 1.0)


def test_the_rank_interval_covers_how_seeds_vary_within_one_setting():
    """One setting, ``a`` beats the reference at three seeds and loses at three: rank 1.5 on
    average, and a seed resample can lean either way."""
    trials = []
    for s in range(6):
        trials += [trial("x", REF, "k1", s, 0.5), trial("x", "a", "k1", s, 0.6 if s % 2 else 0.4)]
    row = row_of(leaderboard(trials, REF), "a")
    assert row["rank_lo"] < row["rank"] == 1.5 < row["rank_hi"]


def test_mean_std_is_the_mean_and_population_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)  # deviations ±1 → population std 1
    assert mean_std([0.7]) == (0.7, 0.0)


# -- a metric where lower is better (a language model's perplexity) ----------------------------

def test_lower_is_better_ranks_the_lowest_value_first_and_counts_it_as_the_win():
    """Perplexities c < tail < b < a at every seed: with lower_is_better the order is c, tail, b,
    a, c wins every cell against tail and its difference (c − tail) is negative; the same trials
    read as accuracies give the reverse order."""
    ppl = {"a": 400.0, "b": 300.0, REF: 200.0, "c": 100.0}
    trials = grid(("x",), list(ppl), ("k1",), range(3), lambda st, c, b, s: ppl[c] + s)
    rows = leaderboard(trials, REF, lower_is_better=True)
    assert [r["criterion"] for r in rows] == ["c", REF, "b", "a"]
    c = row_of(rows, "c")
    assert (c["rank"], c["win_rate"], c["diff"]) == (1.0, 1.0, -100.0)
    assert row_of(rows, "a")["win_rate"] == 0.0
    assert [r["criterion"] for r in leaderboard(trials, REF)] == ["a", "b", REF, "c"]


def test_lower_is_better_ranks_agree_with_scipy_on_the_values_themselves():
    trials = random_trials(levels=3)
    table = by_cell(trials)
    ranks = {c: [] for c in (REF, "a", "b", "c")}
    for values in table.values():
        names = list(values)
        for name, r in zip(names, rankdata([values[n] for n in names], method="average")):
            ranks[name].append(r)
    rows = leaderboard(trials, REF, lower_is_better=True)
    for c, rs in ranks.items():
        assert row_of(rows, c)["rank"] == pytest.approx(np.mean(rs), abs=1e-12)

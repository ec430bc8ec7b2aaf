"""Bench outputs: per setting (rank correlation with the oracle, criterion cost, paired
differences, plots, ``report.md``) and for the suite (the leaderboard table and plot,
``trials.csv`` with every trial, ``report.md``), plus the terminal tables."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.table import Table

from layerprune.bench.stats import FEW_SEEDS, LEVEL, leaderboard, mean_std, paired
from layerprune.io import write_json, write_text
from layerprune.plots import pyplot, save_png
from layerprune.recipe.schema import BenchSection

if TYPE_CHECKING:
    from layerprune.bench.harness import SettingBench
    from layerprune.bench.suite import Suite

# criterion, seed → its stored score record ({"scores", "seconds", "forward_passes", "diagnostics"})
ScoresOf = Callable[[str, int], dict[str, Any]]

CSV_FIELDS = ["setting", "criterion", "budget", "seed", "after_surgery", "before_finetune", "after_finetune", "loss",
              "params", "macs", "params_reduction", "macs_reduction", "latency_ms", "speedup", "seconds", "removed"]
METRICS = (("after_finetune", "after finetune"), ("before_finetune", "after repair, before finetune"))


def correlations(cfg: BenchSection, scores_of: ScoresOf) -> list[dict[str, Any]]:
    """Spearman and Kendall rank correlation of each criterion's scores with the oracle's, per seed."""
    from scipy.stats import kendalltau, spearmanr

    rows = []
    for seed in cfg.seeds:
        oracle = scores_of(cfg.oracle, seed)["scores"]
        for criterion in cfg.criteria:
            scores = scores_of(criterion, seed)["scores"]
            common = sorted(set(scores) & set(oracle))
            a, b = [scores[n] for n in common], [oracle[n] for n in common]
            varied = len(set(a)) > 1 and len(set(b)) > 1
            rows.append({"criterion": criterion, "seed": seed, "blocks": len(common),
                         "spearman": float(spearmanr(a, b).statistic) if varied else float("nan"),
                         "kendall": float(kendalltau(a, b).statistic) if varied else float("nan")})
    return rows


def costs(cfg: BenchSection, scores_of: ScoresOf) -> list[dict[str, Any]]:
    rows = []
    for criterion in cfg.criteria:
        records = [scores_of(criterion, s) for s in cfg.seeds]
        rows.append({"criterion": criterion,
                     "seconds": statistics.fmean(r["seconds"] for r in records),
                     "forward_passes": statistics.fmean(r["forward_passes"] for r in records)})
    return rows


def summary(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per criterion and budget, in the order the trials came."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault((t["criterion"], t["budget"]), []).append(t)
    rows = []
    for (criterion, budget), ts in groups.items():
        row: dict[str, Any] = {"criterion": criterion, "budget": budget, "seeds": len(ts)}
        for key in ("before_finetune", "after_finetune", "macs_reduction", "params_reduction", "latency_ms"):
            values = [t[key] for t in ts if t.get(key) is not None]
            row[key], row[key + "_std"] = mean_std(values) if values else (float("nan"), float("nan"))
        rows.append(row)
    return rows


def _mean_over(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in rows:
        if not math.isnan(r[key]):
            out.setdefault(r["criterion"], []).append(r[key])
    return {c: statistics.fmean(v) for c, v in out.items()}


def _pct(x: float, digits: int = 2) -> str:
    return "" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


@dataclass(frozen=True)
class Metric:
    """The bench's metric as the reports show it: the task's (``base.json`` names it), accuracy in
    percent (higher is better) or a language model's perplexity as it is (lower is better)."""

    name: str = "accuracy"
    lower_is_better: bool = False

    @classmethod
    def of(cls, base: dict[str, Any]) -> "Metric":
        return cls(base.get("metric", "accuracy"), bool(base.get("lower_is_better", False)))

    @property
    def scale(self) -> float:
        return 100.0 if self.name == "accuracy" else 1.0

    @property
    def unit(self) -> str:
        """Column suffix of a value: ``%``, or ``ppl``."""
        return "%" if self.name == "accuracy" else "ppl" if self.name == "perplexity" else self.name

    @property
    def delta(self) -> str:
        """Unit of a difference: accuracy points, or perplexity."""
        return "pts" if self.name == "accuracy" else self.unit

    @property
    def best(self) -> str:
        return "most accurate" if self.name == "accuracy" else f"{'lowest' if self.lower_is_better else 'highest'} {self.name}"

    @property
    def axis(self) -> str:
        return "test accuracy %" if self.name == "accuracy" else f"test {self.name}"

    def fmt(self, x: float | None, digits: int = 2) -> str:
        return "" if x is None or math.isnan(x) else f"{self.scale * x:.{digits}f}"

    def diff(self, d: float, lo: float, hi: float) -> str:
        k = self.scale
        return f"{k * d:+.2f} [{k * lo:+.2f}, {k * hi:+.2f}]"

    def base(self, base: dict[str, Any]) -> float:
        return base.get("value", base["accuracy"])


def _ms(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.2f}"


# -- per setting -------------------------------------------------------------------------------
def setting_markdown(rows, corr, cost, diffs, reference: str, metric: Metric = Metric()) -> str:
    m = metric
    rho, tau = _mean_over(corr, "spearman"), _mean_over(corr, "kendall")
    by_cost = {c["criterion"]: c for c in cost}
    by_diff = {(d["criterion"], d["budget"]): d for d in diffs}
    lines = [f"| criterion | budget | before finetune {m.unit} | after finetune {m.unit} | Δ vs {reference} "
             f"({m.delta}, 95% CI) | MACs − "
             "| params − | latency ms | Spearman | Kendall | cost s | cost (forward passes) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = by_diff.get((r["criterion"], r["budget"]))
        delta = "" if d is None else m.diff(d["diff"], d["lo"], d["hi"]) + ("†" if d["few_seeds"] else "")
        c = by_cost.get(r["criterion"])
        cells = [r["criterion"], r["budget"],
                 f"{m.fmt(r['before_finetune'])} ± {m.fmt(r['before_finetune_std'])}",
                 f"{m.fmt(r['after_finetune'])} ± {m.fmt(r['after_finetune_std'])}", delta,
                 f"{_pct(r['macs_reduction'], 1)}%", f"{_pct(r['params_reduction'], 1)}%", _ms(r["latency_ms"]),
                 f"{rho[r['criterion']]:.2f}" if r["criterion"] in rho else "",
                 f"{tau[r['criterion']]:.2f}" if r["criterion"] in tau else "",
                 f"{c['seconds']:.1f}" if c else "", f"{c['forward_passes']:.1f}" if c else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_rows(ax, rows: list[dict[str, Any]], x: Callable[[dict[str, Any]], float], key: str, scale: float = 100,
               **style: Any) -> None:
    """One line per criterion (dashed: the channel rows) through its budgets: ``key`` (mean ± std
    over seeds, times ``scale``: in % for accuracy) against ``x``."""
    from layerprune.bench.width import is_channel_row

    colors = pyplot().get_cmap("tab20").colors
    for i, criterion in enumerate(dict.fromkeys(r["criterion"] for r in rows)):
        rs = sorted((r for r in rows if r["criterion"] == criterion), key=x)
        channels = is_channel_row(criterion)
        ax.errorbar([x(r) for r in rs], [scale * r[key] for r in rs], yerr=[scale * r[key + "_std"] for r in rs],
                    marker="osD^v<>ph*X"[i % 11], ms=5, capsize=3, color=colors[(2 * i) % 20 + (i // 10) % 2],
                    label=criterion, ls="--" if channels else "-", **(style if channels else {}))


def plot_accuracy(rows: list[dict[str, Any]], base: dict[str, Any], path, title: str = "") -> None:
    """The metric after finetune and before it against the MACs reduction (perplexity on a log
    scale: right after a removal it can be orders of magnitude above the healed model's)."""
    plt, m = pyplot(), Metric.of(base)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, (key, label) in zip(axes, METRICS[::-1]):
        _plot_rows(ax, rows, lambda r: 100 * r["macs_reduction"], key, m.scale)
        ax.axhline(m.scale * m.base(base), color="black", lw=0.8, ls=":", label="base")
        if m.lower_is_better:
            ax.set_yscale("log")
        ax.set_xlabel("MACs reduction %")
        ax.set_ylabel(m.axis)
        ax.set_title(f"{title}: {label}" if title else label, fontsize=9)
    axes[1].legend(fontsize=6, loc="best", ncol=2)
    fig.tight_layout()
    save_png(fig, path)


def plot_frontier(rows: list[dict[str, Any]], base: dict[str, Any], path, title: str = "") -> bool:
    """Accuracy after finetune against measured latency, one line per criterion (and the width and
    depth+width rows) through its budgets; ``False`` when the bench measured no latency."""
    if base.get("latency_ms") is None or any(math.isnan(r["latency_ms"]) for r in rows):
        return False
    plt, m = pyplot(), Metric.of(base)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    _plot_rows(ax, rows, lambda r: r["latency_ms"], "after_finetune", m.scale, lw=2)
    ax.scatter([base["latency_ms"]], [m.scale * m.base(base)], marker="*", s=120, color="black", label="base", zorder=5)
    ax.set_xlabel("latency, ms per image (batch 1, median, timed side by side with the base model)")
    ax.set_ylabel(f"{m.axis} after finetune")
    ax.set_title(f"{title}: {m.name} vs measured latency" if title else f"{m.name} vs measured latency", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best", ncol=2)
    fig.tight_layout()
    save_png(fig, path)
    return True


def plot_choices(cfg: BenchSection, scores_of: ScoresOf, trials: list[dict[str, Any]], path) -> bool:
    """The modularity curve, and under it which blocks each criterion removed (first seed and budget)."""
    if "modularity" not in cfg.criteria:
        return False
    seed, budget = cfg.seeds[0], trials[0]["budget"]
    curve = scores_of("modularity", seed)["diagnostics"].get("curve")
    if not curve:
        return False
    plt = pyplot()
    blocks = list(curve["blocks"])
    chosen = [(t["criterion"], set(t["removed"])) for t in trials
              if t["seed"] == seed and t["budget"] == budget and t["removed"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.3 * len(blocks) + 3), 3 + 0.3 * len(chosen)),
                                      gridspec_kw={"height_ratios": [2, max(1, 0.25 * len(chosen))]})
    index = {p: i for i, p in enumerate(curve["probes"])}
    xs = [index[curve["blocks"][b][1]] for b in blocks]
    mean = curve["mean"]
    top.plot(range(len(mean)), mean, "-o", ms=3)
    top.set_xticks(xs)
    top.set_xticklabels([])
    top.set_ylabel("modularity Q")
    top.set_title(f"modularity curve (seed {seed}) and the blocks each criterion removes at {budget}")
    grid = [[1 if b in removed else 0 for b in blocks] for _, removed in chosen]
    bottom.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1.5, interpolation="nearest")
    bottom.set_yticks(range(len(chosen)))
    bottom.set_yticklabels([c for c, _ in chosen], fontsize=7)
    bottom.set_xticks(range(len(blocks)))
    bottom.set_xticklabels(blocks, rotation=90, fontsize=6)
    fig.tight_layout()
    save_png(fig, path)
    return True


def removals(trials: list[dict[str, Any]], blocks: list[str]) -> list[dict[str, Any]]:
    """Per criterion and budget: how often each block was removed over the seeds, and the mean
    depth of the removed blocks (0 = the first block, 1 = the last)."""
    position = {b: i / max(len(blocks) - 1, 1) for i, b in enumerate(blocks)}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in trials:
        if t["removed"]:
            groups.setdefault((t["criterion"], t["budget"]), []).append(t)
    rows = []
    for (criterion, budget), ts in groups.items():
        removed = [b for t in ts for b in t["removed"] if b in position]
        rows.append({"criterion": criterion, "budget": budget, "seeds": len(ts),
                     "share": {b: sum(b in t["removed"] for t in ts) / len(ts) for b in blocks},
                     "depth": statistics.fmean(position[b] for b in removed) if removed else float("nan")})
    return rows


def removals_markdown(rows: list[dict[str, Any]]) -> str:
    """Which blocks each criterion removed: those every seed removed, those only some did, and the
    mean depth of the removed blocks (0 = the first, 1 = the last)."""
    def short(names: list[str]) -> str:
        return ", ".join(n.rsplit(".", 1)[-1] if n.rsplit(".", 1)[-1].isdigit() else n for n in names)

    lines = ["| criterion | budget | mean depth removed | removed at every seed | removed at some seeds |",
             "|---|---|---:|---|---|"]
    for r in rows:
        always = [b for b, share in r["share"].items() if share == 1]
        some = [b for b, share in r["share"].items() if 0 < share < 1]
        lines.append(f"| {r['criterion']} | {r['budget']} | {r['depth']:.2f} | {short(always)} | {short(some)} |")
    return "\n".join(lines)


def plot_removals(rows: list[dict[str, Any]], blocks: list[str], path, title: str = "") -> None:
    """One panel per budget: for each criterion (a row) the share of seeds that removed each block."""
    plt = pyplot()
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    fig, axes = plt.subplots(1, len(budgets), figsize=(max(4.5, 0.32 * len(blocks) + 2.5) * len(budgets),
                                                       0.28 * len(criteria) + 1.8), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        by = {r["criterion"]: r for r in rows if r["budget"] == budget}
        grid = [[by[c]["share"][b] if c in by else float("nan") for b in blocks] for c in criteria]
        ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(criteria)))
        ax.set_yticklabels(criteria, fontsize=7)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([b.rsplit(".", 1)[-1] if len(blocks) > 12 else b for b in blocks], rotation=90,
                           fontsize=6)
        ax.set_title(f"{title}: blocks removed at {budget} (share of seeds)" if title else
                     f"blocks removed at {budget} (share of seeds)", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _csv(trials: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for t in trials:
        writer.writerow({**t, "removed": " ".join(t["removed"])})
    return buf.getvalue()


def write_setting_outputs(bench: "SettingBench", trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The setting's ``trials.json``, ``trials.csv``, plots and ``report.md``; returns its record."""
    r, cfg, run = bench.recipe, bench.cfg, bench.run
    base = run.read_json("base.json")
    rows, corr, cost = summary(trials), correlations(cfg, bench.scores), costs(cfg, bench.scores)
    diffs = paired(trials, cfg.reference)  # m(c) − m(reference): for perplexity, negative is better
    blocks = [b.name for b in bench.blocks if b.stage]  # the removable blocks, in the model's order
    removed = removals(trials, blocks)
    record = {"setting": bench.name, "model": r.model.label, "dataset": r.data.dataset, "base": base,
              "trials": trials, "correlations": corr, "costs": cost, "summary": rows, "paired": diffs,
              "removals": removed}
    write_json(run.file("trials.json"), record)
    write_text(run.file("trials.csv"), _csv(trials))
    name = Metric.of(base).name  # accuracy_vs_macs.png, perplexity_vs_macs.png
    plot_accuracy(rows, base, run.file(f"{name}_vs_macs.png"), title=bench.name)
    record["frontier"] = plot_frontier(rows, base, run.file(f"{name}_vs_latency.png"), title=bench.name)
    has_choices = plot_choices(cfg, bench.scores, trials, run.file("curve_choices.png"))
    if removed:
        plot_removals(removed, blocks, run.file("removals.png"), title=bench.name)
    write_text(run.file("report.md"), "\n".join(_setting_section(bench, record, "#", "") +
                                                (["## Blocks removed", "", removals_markdown(removed), "",
                                                  "![blocks removed](removals.png)", ""] if removed else []) +
                                                (["![modularity curve and choices](curve_choices.png)", ""]
                                                 if has_choices else [])))
    return record


def _setting_section(bench: "SettingBench", record: dict[str, Any], level: str, images: str) -> list[str]:
    r, cfg, base = bench.recipe, bench.cfg, record["base"]
    m = Metric.of(base)
    epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else r.finetune.epochs
    cal = r.data.calibration
    measured = (f"{100 * base['accuracy']:.2f}% {r.eval.split} accuracy" if m.name == "accuracy" else
                f"{r.eval.split} {m.name} {m.fmt(m.base(base))}")
    return [f"{level} {bench.name}: {r.model.label} on {r.data.dataset}", "",
            f"Base model: {measured}, {base['params']:,} params, "
            f"{base['macs'] / 1e6:.1f}M MACs, {base.get('blocks', '?')} blocks. Seeds {cfg.seeds} "
            f"(calibration: {cal.batches} × {cal.samples} {cal.split} samples per seed); finetune {epochs} "
            f"epoch{'s' * (epochs != 1)} per trial; rank correlation with `{cfg.oracle}`; Δ: paired difference "
            f"to `{cfg.reference}` over seeds († fewer than {FEW_SEEDS} seeds).", "",
            setting_markdown(record["summary"], record["correlations"], record["costs"], record["paired"],
                             cfg.reference, m), "",
            f"![{m.name} vs MACs: {bench.name}]({images}{m.name}_vs_macs.png)", ""] + (
        [f"![{m.name} vs measured latency: {bench.name}]({images}{m.name}_vs_latency.png)", ""]
        if record.get("frontier") else [])


# -- the suite --------------------------------------------------------------------------------
def leaderboard_markdown(rows: list[dict[str, Any]], reference: str, extra: dict[str, dict[str, float]],
                         metric: Metric = Metric()) -> str:
    pct, m = f"{int(100 * LEVEL)}%", metric
    lines = [f"| # | criterion | average rank ({pct} CI) | win rate vs {reference} ({pct} CI) "
             f"| Δ vs {reference}, {m.delta} ({pct} CI) | mean {m.name} {m.unit} | Spearman vs oracle | cost s | cells |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        e = extra.get(r["criterion"], {})
        win = "" if math.isnan(r["win_rate"]) else \
            f"{100 * r['win_rate']:.0f}% [{100 * r['win_rate_lo']:.0f}, {100 * r['win_rate_hi']:.0f}]"
        diff = "(reference)" if r["criterion"] == reference else m.diff(r["diff"], r["diff_lo"], r["diff_hi"])
        lines.append(f"| {i} | {r['criterion']} | {r['rank']:.2f} [{r['rank_lo']:.2f}, {r['rank_hi']:.2f}] | {win} "
                     f"| {diff} | {m.fmt(e.get('value', float('nan')))} | "
                     f"{'' if math.isnan(e.get('spearman', float('nan'))) else format(e['spearman'], '.2f')} | "
                     f"{'' if 'seconds' not in e else format(e['seconds'], '.1f')} | {r['cells']} |")
    return "\n".join(lines)


def plot_leaderboard(rows: list[dict[str, Any]], path, title: str, metric: Metric = Metric()) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    ranks = [r["rank"] for r in rows]
    err = [[r["rank"] - r["rank_lo"] for r in rows], [r["rank_hi"] - r["rank"] for r in rows]]
    ax.errorbar(ranks, ys, xerr=err, fmt="o", ms=5, capsize=3, color="tab:blue")
    ax.set_yticks(ys)
    ax.set_yticklabels([r["criterion"] for r in rows], fontsize=8)
    ax.set_xlabel(f"average rank (1 = {metric.best}), {int(100 * LEVEL)}% bootstrap interval")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def _extras(records: list[dict[str, Any]], trials: list[dict[str, Any]], metric: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    acc: dict[str, list[float]] = {}
    for t in trials:
        acc.setdefault(t["criterion"], []).append(t[metric])
    for c, v in acc.items():
        out.setdefault(c, {})["value"] = statistics.fmean(v)
    for key in ("spearman",):
        for c, v in _mean_over([row for rec in records for row in rec["correlations"]], key).items():
            out.setdefault(c, {})[key] = v
    seconds: dict[str, list[float]] = {}
    for rec in records:
        for row in rec["costs"]:
            seconds.setdefault(row["criterion"], []).append(row["seconds"])
    for c, v in seconds.items():
        out.setdefault(c, {})["seconds"] = statistics.fmean(v)
    return out


def time_rows(benches: list["SettingBench"], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the time went, per setting: pretraining (when this bench trained the base model, from
    its epoch times) and the trials (each trial's seconds include its criterion's scoring when it
    was the first budget of its seed to run)."""
    rows = []
    for b, rec in zip(benches, records):
        pretrain = b.run.file("pretrain.json")
        history = b.run.read_json("pretrain.json")["history"] if pretrain.is_file() else []
        seconds = [t["seconds"] for t in rec["trials"] if t.get("seconds") is not None]
        rows.append({"setting": b.name, "pretrain_seconds": sum(e["seconds"] for e in history) if history else None,
                     "trials": len(rec["trials"]), "trial_seconds": sum(seconds),
                     "per_trial": statistics.fmean(seconds) if seconds else float("nan")})
    return rows


def time_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | pretraining s | trials | s per trial (mean) | trials s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        pre = "cached" if r["pretrain_seconds"] is None else f"{r['pretrain_seconds']:.0f}"
        lines.append(f"| {r['setting']} | {pre} | {r['trials']} | {r['per_trial']:.1f} | {r['trial_seconds']:.0f} |")
    pre = sum(r["pretrain_seconds"] or 0 for r in rows)
    n, total = sum(r["trials"] for r in rows), sum(r["trial_seconds"] for r in rows)
    lines.append(f"| **all** | {pre:.0f} | {n} | {total / max(n, 1):.1f} | {total:.0f} |")
    return "\n".join(lines)


def write_suite_outputs(path: Path, suite: "Suite", benches: list["SettingBench"],
                        trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Every setting's outputs, then the suite's: ``trials.csv``, ``trials.json``, the
    leaderboards (``leaderboard.png``) and ``report.md``. Returns what ``trials.json`` holds."""
    from layerprune.bench.width import is_ranked

    records = [write_setting_outputs(b, [t for t in trials if t["setting"] == b.name]) for b in benches]
    reference = suite.reference
    criteria = list(dict.fromkeys(c for b in benches for c in b.cfg.criteria))
    depth = [t for t in trials if is_ranked(t["criterion"])]
    # One metric for the suite (load_suite refuses settings whose tasks measure different ones).
    m = Metric.of(records[0]["base"]) if records else Metric()
    boards = {metric: leaderboard(depth, reference, metric, criteria, lower_is_better=m.lower_is_better)
              for metric, _ in METRICS}
    times = time_rows(benches, records)
    report = {"suite": suite.name, "reference": reference, "metric": m.name, "lower_is_better": m.lower_is_better,
              "leaderboards": boards, "time": times,
              "settings": [{k: v for k, v in rec.items() if k != "trials"} for rec in records], "trials": trials}
    write_json(path / "trials.json", report)
    write_text(path / "trials.csv", _csv(trials))
    seeds = sorted({t["seed"] for t in trials})
    budgets = list(dict.fromkeys(t["budget"] for t in trials))
    plot_leaderboard(boards["after_finetune"], path / "leaderboard.png",
                     f"{suite.name}: {len(benches)} settings, budgets {', '.join(budgets)}, after finetune", m)
    lines = [f"# bench {suite.name}", "",
             f"{len(benches)} setting{'s' * (len(benches) > 1)}, {len(trials)} trials; budgets {', '.join(budgets)}; "
             f"seeds {seeds}. A cell is one setting, budget and seed; ranks are within a cell (1 = {m.best}); "
             f"intervals are {int(100 * LEVEL)}% bootstrap intervals over settings, then seeds. The width, "
             "depth+width and unpruned rows are not ranked (they are not block criteria).", ""]
    for metric, label in METRICS:
        lines += [f"## Leaderboard: {m.name} {label}", "",
                  leaderboard_markdown(boards[metric], reference, _extras(records, depth, metric), m), ""]
        if metric == "after_finetune":
            lines += ["![leaderboard](leaderboard.png)", ""]
    lines += ["## Time", "", "Pretraining and trial seconds as measured by this bench (a rerun that only merges "
              "keeps the first run's figures).", "", time_markdown(times), "", "## Settings", ""]
    for b, rec in zip(benches, records):
        lines += _setting_section(b, rec, "###", f"settings/{b.name}/")
    write_text(path / "report.md", "\n".join(lines))
    return report


# -- terminal ---------------------------------------------------------------------------------
def leaderboard_table(report: dict[str, Any]) -> Table:
    reference = report["reference"]
    m = Metric(report.get("metric", "accuracy"), report.get("lower_is_better", False))
    t = Table(title=f"bench {report['suite']}: leaderboard after finetune ({len(report['settings'])} settings)")
    for col in ("#", "criterion", "average rank", f"win rate vs {reference}", f"Δ vs {reference} {m.delta}", "cells"):
        t.add_column(col, justify="left" if col == "criterion" else "right")
    for i, r in enumerate(report["leaderboards"]["after_finetune"], 1):
        win = "" if math.isnan(r["win_rate"]) else \
            f"{100 * r['win_rate']:.0f}% [{100 * r['win_rate_lo']:.0f}, {100 * r['win_rate_hi']:.0f}]"
        t.add_row(str(i), r["criterion"], f"{r['rank']:.2f} [{r['rank_lo']:.2f}, {r['rank_hi']:.2f}]", win,
                  m.diff(r["diff"], r["diff_lo"], r["diff_hi"]), str(r["cells"]))
    return t


def setting_table(record: dict[str, Any]) -> Table:
    base = record["base"]
    rho = _mean_over(record["correlations"], "spearman")
    by_cost = {c["criterion"]: c for c in record["costs"]}
    m = Metric.of(base)
    t = Table(title=f"{record['setting']}: base accuracy {100 * base['accuracy']:.2f}%" if m.name == "accuracy" else
              f"{record['setting']}: base {m.name} {m.fmt(m.base(base))}")
    for col in ("criterion", "budget", "before finetune", "after finetune", "MACs −", "Spearman", "cost s"):
        t.add_column(col, justify="left" if col in ("criterion", "budget") else "right")
    for r in record["summary"]:
        c = by_cost.get(r["criterion"])
        t.add_row(r["criterion"], r["budget"], f"{m.fmt(r['before_finetune'])} ± {m.fmt(r['before_finetune_std'])}",
                  f"{m.fmt(r['after_finetune'])} ± {m.fmt(r['after_finetune_std'])}", f"{_pct(r['macs_reduction'], 1)}%",
                  f"{rho[r['criterion']]:.2f}" if r["criterion"] in rho else "", f"{c['seconds']:.1f}" if c else "")
    return t

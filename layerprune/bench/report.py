"""Bench outputs: rank correlation with the oracle, criterion cost, CSV/JSON of every trial,
plots, ``report.md`` and the terminal table."""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any, Callable

from rich.table import Table

from layerprune.io import write_json, write_text
from layerprune.plots import pyplot, save_png
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.schema import BenchSection, Recipe

# criterion, seed → its stored score record ({"scores", "seconds", "forward_passes", "diagnostics"})
ScoresOf = Callable[[str, int], dict[str, Any]]

CSV_FIELDS = ["criterion", "budget", "seed", "before_finetune", "after_finetune", "loss", "params", "macs",
              "params_reduction", "macs_reduction", "latency_ms", "removed"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


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
            row[key], row[key + "_std"] = _mean_std([t[key] for t in ts])
        rows.append(row)
    return rows


def _corr_by_criterion(corr: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    out = {}
    for criterion in dict.fromkeys(r["criterion"] for r in corr):
        rs = [r for r in corr if r["criterion"] == criterion]
        out[criterion] = (statistics.fmean(r["spearman"] for r in rs), statistics.fmean(r["kendall"] for r in rs))
    return out


def table(rows: list[dict[str, Any]], corr: list[dict[str, Any]], cost: list[dict[str, Any]], base: dict[str, Any]) -> Table:
    by_corr, by_cost = _corr_by_criterion(corr), {c["criterion"]: c for c in cost}
    t = Table(title=f"bench: base accuracy {100 * base['accuracy']:.2f}%")
    for col in ("criterion", "budget", "before finetune", "after finetune", "MACs −", "latency ms",
                "Spearman", "Kendall", "cost s"):
        t.add_column(col, justify="left" if col in ("criterion", "budget") else "right")
    for r in rows:
        rho, tau = by_corr.get(r["criterion"], (float("nan"), float("nan")))
        c = by_cost.get(r["criterion"])
        t.add_row(r["criterion"], r["budget"],
                  f"{100 * r['before_finetune']:.2f} ± {100 * r['before_finetune_std']:.2f}",
                  f"{100 * r['after_finetune']:.2f} ± {100 * r['after_finetune_std']:.2f}",
                  f"{100 * r['macs_reduction']:.1f}%", f"{r['latency_ms']:.2f}",
                  f"{rho:.2f}", f"{tau:.2f}", f"{c['seconds']:.1f}" if c else "")
    return t


def _markdown(rows, corr, cost, base) -> str:
    by_corr, by_cost = _corr_by_criterion(corr), {c["criterion"]: c for c in cost}
    lines = ["| criterion | budget | before finetune % | after finetune % | MACs − | params − | latency ms "
             "| Spearman | Kendall | cost s | cost (forward passes) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["criterion"], r["budget"],
                 f"{100 * r['before_finetune']:.2f} ± {100 * r['before_finetune_std']:.2f}",
                 f"{100 * r['after_finetune']:.2f} ± {100 * r['after_finetune_std']:.2f}",
                 f"{100 * r['macs_reduction']:.1f}%", f"{100 * r['params_reduction']:.1f}%", f"{r['latency_ms']:.2f}"]
        if r["criterion"] in by_corr:
            rho, tau = by_corr[r["criterion"]]
            c = by_cost[r["criterion"]]
            cells += [f"{rho:.2f}", f"{tau:.2f}", f"{c['seconds']:.1f}", f"{c['forward_passes']:.1f}"]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy(rows: list[dict[str, Any]], base: dict[str, Any], path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, title in ((axes[0], "before_finetune", "after repair, before finetune"),
                           (axes[1], "after_finetune", "after finetune")):
        colors = plt.get_cmap("tab20").colors
        for i, criterion in enumerate(dict.fromkeys(r["criterion"] for r in rows)):
            rs = [r for r in rows if r["criterion"] == criterion]
            ax.errorbar([100 * r["macs_reduction"] for r in rs], [100 * r[key] for r in rs],
                        yerr=[100 * r[key + "_std"] for r in rs], marker="osD^v<>ph*X"[i % 11], ms=5, capsize=3,
                        color=colors[(2 * i) % 20 + (i // 10) % 2], label=criterion,
                        ls="--" if criterion.startswith("width") else "-")
        ax.axhline(100 * base["accuracy"], color="black", lw=0.8, ls=":", label="base")
        ax.set_xlabel("MACs reduction %")
        ax.set_ylabel("test accuracy %")
        ax.set_title(title)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_png(fig, path)


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


def write_outputs(run: RunDir, recipe: Recipe, scores_of: ScoresOf, trials, corr, cost) -> None:
    cfg = recipe.bench
    base = run.read_json("base.json")
    rows = summary(trials)
    write_json(run.file("trials.json"), {"base": base, "trials": trials, "correlations": corr, "costs": cost,
                                         "summary": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for t in trials:
        writer.writerow({**t, "removed": " ".join(t["removed"])})
    write_text(run.file("trials.csv"), buf.getvalue())
    plot_accuracy(rows, base, run.file("accuracy_vs_macs.png"))
    has_choices = plot_choices(cfg, scores_of, trials, run.file("curve_choices.png"))
    r = recipe
    lines = [f"# bench {r.name}: {r.model.name} on {r.data.dataset}", "",
             f"Base model: {100 * base['accuracy']:.2f}% {r.eval.split} accuracy, {base['params']:,} params, "
             f"{base['macs'] / 1e6:.1f}M MACs. Seeds {cfg.seeds}; finetune "
             f"{cfg.finetune_epochs if cfg.finetune_epochs is not None else r.finetune.epochs} epochs per trial; "
             f"rank correlation with `{cfg.oracle}`.", "", _markdown(rows, corr, cost, base), "",
             "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    if has_choices:
        lines += ["![modularity curve and choices](curve_choices.png)", ""]
    write_text(run.file("report.md"), "\n".join(lines))

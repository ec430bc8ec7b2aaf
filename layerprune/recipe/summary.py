"""The end of a run: a summary table (base vs pruned) for the terminal and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from layerprune.io import write_text
from layerprune.recipe.rundir import RunDir
from layerprune.recipe.trainlog import METRICS_CSV, read_rows


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    base, pruned = metrics["base"], metrics["pruned"]
    steps = metrics.get("prune_steps") or []
    last = steps[-1] if steps else {}
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    # A language model's measurements carry a perplexity (lower is better); a classifier's, accuracy.
    metric, fmt = ("perplexity", lambda v: f"{v:.2f}") if "perplexity" in base else ("accuracy", pct)
    rows = [
        (f"{metric} ({metrics['split']})", fmt(base[metric]), fmt(pruned[metric]) + " after finetune"),
    ]
    if "after_surgery" in last:
        rows.append(("  right after surgery", "", fmt(last["after_surgery"][metric])))
    if "after_repair" in last:
        rows.append(("  after BatchNorm repair", "", fmt(last["after_repair"][metric])))
    if metric == "perplexity":
        rows.append((f"next-token accuracy ({metrics['split']})", pct(base["accuracy"]), pct(pruned["accuracy"])))
    rows += [
        ("loss", f"{base['loss']:.4f}", f"{pruned['loss']:.4f}"),
        ("params", f"{base['params']:,}", f"{pruned['params']:,} (−{pct(metrics['params_reduction'])})"),
        ("MACs", f"{base['macs'] / 1e6:,.1f}M", f"{pruned['macs'] / 1e6:,.1f}M (−{pct(metrics['macs_reduction'])})"),
    ]
    if "latency" in base:
        lb, lp = base["latency"], pruned["latency"]
        rows.append((f"latency (batch {lb['batch_size']}, {lb['device']})", f"{lb['median_ms']:.2f} ms",
                     f"{lp['median_ms']:.2f} ms ({lb['median_ms'] / lp['median_ms']:.2f}× faster)"))
    if budget := metrics.get("latency_budget"):
        verdict = "met" if budget["met"] else "missed"
        rows.append((f"latency budget (batch {budget['batch_size']}, {budget['device']}, {budget['precision']})",
                     f"{budget['base_ms']:.2f} ms",
                     f"{budget['pruned_ms']:.2f} ms: {budget['speedup']:.2f}× faster, target "
                     f"{budget['target_speedup']:.2f}× (−{100 * budget['latency']:g}%): {verdict}"))
    unit = "layers" if metrics.get("task") == "causal-lm" else "blocks"
    rows.append((f"{unit} removed", "", f"{len(metrics['removed'])}: {' '.join(metrics['removed'])}"))
    if width := metrics.get("width"):
        rows.append(("channels pruned", "", f"{width['channels_removed']} of {width['channels']} inside the blocks' "
                     f"branches (Torch-Pruning, {width['importance']} importance, ratio {width['ratio']:.3f})"))
    return rows


def summary_table(metrics: dict[str, Any], title: str = "summary") -> Table:
    table = Table(title=title)
    for col in ("", "base", "pruned"):
        table.add_column(col, overflow="fold")
    for row in _rows(metrics):
        table.add_row(*row)
    return table


def write_report(run: RunDir, metrics: dict[str, Any]) -> None:
    recipe = run.recipe
    lines = [f"# {recipe.name}: {recipe.model.label} on {recipe.data.dataset}", "",
             f"Criterion `{recipe.criterion.name}`, finetune {recipe.finetune.epochs} "
             f"epoch{'' if recipe.finetune.epochs == 1 else 's'}"
             + (" with distillation" if recipe.finetune.distill.enabled else "")
             + (f" (LoRA adapters, rank {recipe.finetune.lora.r}, alpha {recipe.finetune.lora.alpha:g}, merged)"
                if recipe.finetune.lora is not None else "") + ".", "",
             "| | base | pruned |", "|---|---|---|"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(metrics)]
    if plot_training(run.file(METRICS_CSV), run.file("training.png")):
        lines += ["", "![loss and accuracy per epoch](training.png)"]
    lines += ["", "Files: `recipe.yaml` (resolved recipe), `scores.json`, `plan.json`, `prune.json`,",
              "`metrics.json`, `metrics.csv` (one row per training epoch), "
              + ("`model/` (the transformers folder with its tokenizer: `AutoModelForCausalLM.from_pretrained`, "
                 "`AutoTokenizer.from_pretrained`)" if recipe.model.is_hf else
                 "`model/` (config.json, model.safetensors, README.md: `layerprune.load_pruned`)")
              + (", `model/export/` (`export.json`: checks and latency)" if recipe.export.formats else "") + ".", ""]
    write_text(run.file("report.md"), "\n".join(lines))


def plot_training(csv_path: Path, png: Path) -> bool:
    """Loss and accuracy per epoch of every training stage in ``metrics.csv``; False when empty."""
    from layerprune.plots import pyplot, save_png

    rows = read_rows(csv_path)
    if not rows:
        return False
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, stage in enumerate(dict.fromkeys(r["stage"] for r in rows)):
        rs = [r for r in rows if r["stage"] == stage]
        epochs = [int(r["epoch"]) for r in rs]
        color = f"C{i}"
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            scale = 100 if key == "acc" else 1
            ax.plot(epochs, [scale * float(r[f"train_{key}"]) for r in rs], "-o", ms=3, color=color,
                    label=f"{stage} train")
            if rs[0][f"val_{key}"] != "":
                ax.plot(epochs, [scale * float(r[f"val_{key}"]) for r in rs], "--s", ms=3, color=color,
                        label=f"{stage} val")
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy %")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, png)
    return True

"""The speed/accuracy frontier of a bench: at a given accuracy, which method gives the fastest
model, measured where the bench ran.

    python benchmarks/frontier.py runs/suite_full --suite recipes/suites/full.yaml [--within 1 3 5]

Reads the bench's trials.json (accuracy after finetune) and times every distinct pruned
architecture again, side by side with its unpruned model: the passes of all of a setting's models
interleaved (one pass of each in turn, 30 rounds after 5 warm-up rounds, batch 1), so that the
speed-ups are ratios measured under the same conditions (the latency a bench stores per trial was
measured trial by trial, minutes apart, and the same architecture varies by 20% between seeds on
a shared machine). Latency depends on the architecture only: models are rebuilt with random
weights from each trial's removed blocks and channel ratio.

Per setting, each method's trials are averaged over seeds at each budget. For every accuracy floor
(the base accuracy minus N points) it names the fastest configuration whose mean accuracy stays
above the floor, with its speed-up over the base model, and the fastest depth, width and
depth+width configurations beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def architecture(t: dict) -> tuple:
    return tuple(t["removed"]), t.get("channel_ratio")


def retime(recipe, trials: list[dict], rounds: int) -> tuple[float, dict[tuple, float]]:
    """The base model's median latency and each distinct architecture's speed-up over it."""
    from layerprune.recipe.runner import Runner
    from layerprune.surgery import compare_latency, remove_blocks
    from layerprune.surgery.width import prune_width

    runner = Runner(recipe)
    base, x = runner.new_model().eval(), runner.example_input()
    models = {}
    for t in trials:
        key = architecture(t)
        if key not in models:
            removed, ratio = key
            model = remove_blocks(base, list(removed), x) if removed else base
            models[key] = prune_width(model, x, ratio=ratio)[0] if ratio else model
    keys = list(models)
    timed = compare_latency([base, *(models[k] for k in keys)], tuple(x.shape[1:]), repeats=rounds)
    return timed[0].median_ms, {k: timed[0].median_ms / lat.median_ms for k, lat in zip(keys, timed[1:])}


def configurations(trials: list[dict], speedups: dict[tuple, float], base_ms: float) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in trials:
        groups.setdefault((t["criterion"], t["budget"]), []).append(t)
    return [{"criterion": c, "budget": b, "seeds": len(ts),
             "accuracy": statistics.fmean(t["after_finetune"] for t in ts),
             "speedup": statistics.fmean(speedups[architecture(t)] for t in ts),
             "latency_ms": base_ms / statistics.fmean(speedups[architecture(t)] for t in ts),
             "macs_reduction": statistics.fmean(t["macs_reduction"] for t in ts)} for (c, b), ts in groups.items()]


def fastest(configs: list[dict], floor: float, kind=None) -> dict | None:
    eligible = [c for c in configs if c["accuracy"] >= floor and (kind is None or kind(c["criterion"]))]
    return min(eligible, key=lambda c: c["latency_ms"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--suite", required=True, help="the suite file the bench ran (its settings build the models)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (each: one pass of every model)")
    parser.add_argument("--setting", action="append", default=[], help="only these settings (repeatable)")
    parser.add_argument("--rows", action="store_true", help="also list every channel-pruning configuration")
    parser.add_argument("--plots", type=Path, help="also draw accuracy vs the re-timed latency: DIR/frontier_SETTING.png")
    parser.add_argument("--within", type=float, nargs="+", default=[1.0, 3.0, 5.0],
                        help="accuracy floors: points below the base model's accuracy")
    args = parser.parse_args()
    report = json.loads((args.bench_dir / "trials.json").read_text())
    width = lambda c: c.startswith("width")  # noqa: E731
    both = lambda c: c.startswith("depth+width")  # noqa: E731
    depth = lambda c: not width(c) and not both(c)  # noqa: E731

    from layerprune.bench.suite import load_suite

    recipes = {r.name: r for r in load_suite(args.suite).recipes}

    def cell(c: dict | None) -> str:
        if c is None:
            return "—"
        return f"{c['criterion'].split(' (')[0]} {c['budget']}: {c['speedup']:.2f}×, {100 * c['accuracy']:.1f}%"

    print("| setting | base | accuracy floor | fastest of all | fastest depth | fastest width | fastest depth+width |")
    print("|---|---|---|---|---|---|---|")
    extra = []
    for setting in report["settings"]:
        if args.setting and setting["setting"] not in args.setting:
            continue
        base = setting["base"]
        trials = [t for t in report["trials"] if t["setting"] == setting["setting"]]
        base_ms, speedups = retime(recipes[setting["setting"]], trials, args.rounds)
        configs = configurations(trials, speedups, base_ms)
        if args.plots:
            from layerprune.bench.report import plot_frontier, summary

            rows = summary(trials)
            for row in rows:
                row["latency_ms"] = next(c["latency_ms"] for c in configs
                                         if (c["criterion"], c["budget"]) == (row["criterion"], row["budget"]))
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_frontier(rows, {**base, "latency_ms": base_ms}, args.plots / f"frontier_{setting['setting']}.png",
                          title=f"{setting['setting']} (re-timed side by side)")
        for within in args.within:
            floor = base["accuracy"] - within / 100
            print(f"| {setting['setting']} | {100 * base['accuracy']:.1f}%, {base_ms:.2f} ms "
                  f"| ≥ {100 * floor:.1f}% (−{within:g}) | {cell(fastest(configs, floor))} "
                  f"| {cell(fastest(configs, floor, depth))} | {cell(fastest(configs, floor, width))} "
                  f"| {cell(fastest(configs, floor, both))} |", flush=True)
        extra += [f"| {setting['setting']} | {c['criterion'].split(' (')[0]} | {c['budget']} | "
                  f"{100 * c['macs_reduction']:.1f}% | {c['speedup']:.2f}× | {100 * c['accuracy']:.1f}% |"
                  for c in configs if not depth(c["criterion"]) or c["criterion"] == "tail"]
    if args.rows:
        print("\n| setting | method | budget | MACs cut | speed-up | accuracy |\n|---|---|---|---|---|---|")
        print("\n".join(extra))


if __name__ == "__main__":
    main()

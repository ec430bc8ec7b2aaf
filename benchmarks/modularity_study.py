"""Where does ΔQ mislead, and which modularity variant fixes it? The measurements behind
``modularity_removal`` (docs/criteria.md, "A modularity variant of our own").

For each setting (model × data set, trained here from scratch), on the calibration split:

* per block: its stage and position, Q before and after it, ΔQ, the loss rise when it alone is
  removed (``ablation``, after BatchNorm repair) and what Q says when it is actually removed —
  Q of the model's output (logits) and of its penultimate features, and the mean Q drop over the
  block outputs after it;
* per candidate criterion: Spearman's ρ with ``ablation``, and the test accuracy after removing
  blocks to the setting's MACs budget and repairing BatchNorm (no finetuning: what the choice
  itself costs).

    python benchmarks/modularity_study.py                      # every setting, ~25 min on 2 cores
    python benchmarks/modularity_study.py --settings digits_resnet20 --out runs/study.json

Defaults of the variants are chosen on ``digits_resnet20`` (the quickstart's setting) and the
others only report them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import layerprune
from layerprune import Calibration, Pruner, Repair
from layerprune.criteria import ScoringContext, modularity
from layerprune.criteria.oracle import head_input, penultimate, removable, without
from layerprune.data import make_loader
from layerprune.evaluation import evaluate
from layerprune.hooks import eval_mode, forward_hooks
from layerprune.train import fit

SETTINGS = {
    # name: (model, data set, epochs, lr, batch size, calibration samples, MACs budget)
    "digits_resnet20": ("cifar_resnet20", "digits", 15, 0.1, 64, 500, 0.4),
    "mnist5k_resnet56": ("cifar_resnet56", "mnist5k", 12, 0.05, 128, 500, 0.5),
    "mnist5k_resnet20": ("cifar_resnet20", "mnist5k", 12, 0.05, 128, 500, 0.4),
    "digits_resnet56": ("cifar_resnet56", "digits", 15, 0.1, 64, 500, 0.5),
}
# Library criteria (name, parameters), scored on the same context.
LIBRARY = {
    "modularity": ("modularity", {}),
    "modularity_removal": ("modularity_removal", {}),
    "modularity_removal_penultimate": ("modularity_removal", {"features": "penultimate"}),
    "modularity_removal_allrepair": ("modularity_removal", {"repair_batches": None}),
    "modularity_removal_norepair": ("modularity_removal", {"repair": False}),
    "tail": ("tail", {}), "cka": ("cka", {}), "random": ("random", {}), "ablation": ("ablation", {}),
    "angular": ("angular", {}), "cka_removal": ("cka_removal", {}), "consensus": ("consensus", {}),
    "block_influence": ("block_influence", {}), "linear_probe": ("linear_probe", {}),
    "greedy": ("greedy", {}),
}
CANDIDATES = ["modularity_stage", "modularity_headroom", "modularity_auc", "modularity_each", *LIBRARY,
              "modularity_removal_each"]


def trained(model_name: str, data, epochs: int, lr: float, batch: int, cache: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = layerprune.create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        fit(model, make_loader(data.train, batch, shuffle=True, seed=0), epochs=epochs, lr=lr)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model.eval()


@torch.no_grad()
def block_outputs(model, names, x, micro=256):
    """Features (N, D) at the output of each block in ``names``."""
    out = {n: [] for n in names}
    hooks = {n: (lambda m, a, o, n=n: out[n].append(o.detach().flatten(1).float())) for n in names}
    with eval_mode(model), forward_hooks(model, after=hooks):
        for chunk in x.split(micro):
            model(chunk)
    return {n: torch.cat(v) for n, v in out.items()}


def study(name: str, cache_dir: Path) -> dict:
    model_name, dataset, epochs, lr, batch, samples, macs = SETTINGS[name]
    data = layerprune.build_dataset(dataset, seed=0)
    model = trained(model_name, data, epochs, lr, batch, cache_dir / f"{name}.pth")
    test = make_loader(data.test, 256)
    base_acc = evaluate(model, test).accuracy
    cal, repair = Calibration(samples=samples, batches=1), Repair()
    ctx = ScoringContext(model, data, calibration=cal, repair=repair)
    x, y = ctx.batch(0)
    curve = layerprune.get_criterion("modularity")(ctx).diagnostics["curve"]
    q = dict(zip(curve.probes, curve.mean.tolist()))
    blocks = ctx.scorable
    order = [b.name for b in blocks]
    head = head_input(model)

    # What Q says when a block is actually removed (and BatchNorm repaired).
    q_head_full = modularity(penultimate(model, [(x, y)], ctx.device, head), y)
    full_out = block_outputs(model, order, x)
    q_full = {n: modularity(f, y) for n, f in full_out.items()}
    auc = {}
    for b in removable(ctx):
        changed = ctx.repair(without(copy.deepcopy(model), b))
        later = order[order.index(b.name) + 1:]
        feats = block_outputs(changed, later, x)
        auc[b.name] = float(np.mean([q_full[n] - modularity(f, y) for n, f in feats.items()])) if later else 0.0
    deltas = curve.deltas()
    stage_of = {b.name: b.stage for b in blocks}
    stage_sum = {}
    for n, d in deltas.items():
        stage_sum[stage_of[n]] = stage_sum.get(stage_of[n], 0.0) + abs(d)
    before = {n: q[ctx.block_probes[n][0]] for n in deltas}
    scores = {
        "modularity_stage": {n: d / (stage_sum[stage_of[n]] or 1.0) for n, d in deltas.items()},
        "modularity_headroom": {n: d / max(1.0 - before[n], 1e-6) for n, d in deltas.items()},
        "modularity_auc": auc,
    }
    seconds = {}
    for label, (c, params) in LIBRARY.items():
        start = time.perf_counter()
        scores[label] = layerprune.get_criterion(c, **params)(ctx).scores
        seconds[label] = time.perf_counter() - start
    abl = layerprune.get_criterion("ablation")(ctx)
    removal = scores["modularity_removal_penultimate"]

    per_block = []
    for b in blocks:
        pos = [m.name for m in blocks if m.stage == b.stage].index(b.name)
        per_block.append({"block": b.name, "stage": b.stage, "position": pos, "downsampling": b.collapsible,
                          "q_before": before.get(b.name), "q_after": q[b.name], "delta_q": deltas.get(b.name),
                          "ablation_loss_rise": abl.scores.get(b.name), "removal_q_drop_logits": scores["modularity_removal"].get(b.name),
                          "removal_q_drop_penultimate": removal.get(b.name),
                          "removal_auc_drop": auc.get(b.name)})

    results = {}
    for c in CANDIDATES:
        if c.endswith("_each"):  # re-scored after every removal
            pruner = Pruner(c.removesuffix("_each"), rule="budget", rule_params={"macs": macs}, steps="each",
                            calibration=cal, repair=repair)
            result = pruner.prune(model, data, evaluate_with=lambda m: evaluate(m, test))
            removed, acc, rho = result.removed, result.steps[-1].after_repair.accuracy, None
        else:
            s = scores[c]
            pruner = Pruner("tail", rule="budget", rule_params={"macs": macs}, calibration=cal, repair=repair)
            removed = pruner.plan(s, ctx.blocks)
            pruned, step = pruner.remove(model, removed, data, blocks=ctx.blocks, example_input=ctx.example_input,
                                         evaluate_with=lambda m: evaluate(m, test))
            acc = step.after_repair.accuracy
            common = [n for n in abl.scores if n in s]
            rho = float(spearmanr([s[n] for n in common], [abl.scores[n] for n in common])[0])
        results[c] = {"removed": removed, "test_accuracy_after_repair": acc, "spearman_with_ablation": rho,
                      "scoring_seconds": seconds.get(c)}
        print(f"{name:18s} {c:20s} acc {acc:.3f}  rho {rho if rho is not None else float('nan'):+.2f}  "
              f"removed {len(removed)}", flush=True)
    return {"setting": name, "model": model_name, "data": dataset, "macs_budget": macs, "base_test_accuracy": base_acc,
            "q_stem": curve.mean[0].item(), "q_head": q_head_full, "blocks": per_block, "criteria": results}


def tables(done: dict) -> str:
    """Test accuracy after repair (and ρ with ablation) per criterion and setting, as markdown."""
    names = list(done)
    head = "| criterion | " + " | ".join(
        f"{n} (−{done[n]['macs_budget']:.0%} MACs, base {done[n]['base_test_accuracy']:.1%})" for n in names) + " |"
    rows = [head, "|---|" + "---:|" * len(names)]
    for c in CANDIDATES:
        cells = []
        for n in names:
            r = done[n]["criteria"].get(c)
            if r is None:
                cells.append("")
                continue
            rho = r["spearman_with_ablation"]
            cells.append(f"{r['test_accuracy_after_repair']:.1%}" + (f" (ρ {rho:+.2f})" if rho is not None else ""))
        if any(cells):
            rows.append(f"| `{c}` | " + " | ".join(cells) + " |")
    blocks = ["", "| setting | block | ΔQ | ablation loss rise | Q drop, logits | Q drop, penultimate |",
              "|---|---|---:|---:|---:|---:|"]
    for n in names:
        for b in done[n]["blocks"]:
            if b["position"] == 0 or b["block"] == done[n]["blocks"][-1]["block"]:
                f = lambda v: "" if v is None else f"{v:+.4f}"
                blocks.append(f"| {n} | {b['block']} | {f(b['delta_q'])} | {f(b['ablation_loss_rise'])} | "
                              f"{f(b['removal_q_drop_logits'])} | {f(b['removal_q_drop_penultimate'])} |")
    return "\n".join(rows + blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="runs/modularity_study.json")
    parser.add_argument("--cache", default="runs/modularity_study_models")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --out and stop")
    args = parser.parse_args()
    if args.table:
        print(tables(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(2)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.settings:
        done[name] = study(name, Path(args.cache))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main()

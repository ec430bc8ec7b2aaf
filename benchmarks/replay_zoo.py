"""Prefix replay across the timm zoo (not a test): for one model per family (the zoo's choices,
``benchmarks/zoo_models.json``), ``ablation`` with BatchNorm repair scores every removable block
twice, with ``reuse=False`` (every candidate runs the whole network) and ``reuse=True`` (the
network before the block is replayed from a recording), and the scores must be identical.

Each model is built at random init (10 classes, its zoo input size), scored on 2 random samples
in 2 passes of one (repaired on both at once), in its own child process under a time limit.
Reported per model: blocks scored, same or not, candidates replayed / run in full after a
mismatch, and the time ratio (tiny batches: overhead-dominated, not the speed-up on real data;
``benchmarks/criteria_cost.py --compare`` measures that).

    python benchmarks/replay_zoo.py --out replay_zoo.json
    python benchmarks/replay_zoo.py --only resnet vision_transformer --out r.json
    python benchmarks/replay_zoo.py --out replay_zoo.json --resume   # skip the models already there

Exit code 1 when any model's scores differ.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import zoo  # noqa: E402
from layerprune import get_criterion  # noqa: E402
from layerprune.criteria import ScoringContext  # noqa: E402
from layerprune.io import write_json  # noqa: E402


def check(name: str) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model, size = zoo.create(name)
    model.eval()
    x = torch.randn(2, *size)
    y = torch.tensor([0, 1])
    rec: dict[str, Any] = {"model": name, "input_size": size}
    ctx = ScoringContext(model, (x, y), samples=2, batches=1, micro_batch=1)  # the oracle keeps nothing in it
    scores, took = {}, {}
    for reuse in (False, True):
        t = time.perf_counter()
        result = get_criterion("ablation", reuse=reuse)(ctx)
        took[reuse], scores[reuse] = time.perf_counter() - t, result.scores
    rec["blocks"] = len(scores[False])
    rec["same"] = scores[False] == scores[True]
    if not rec["same"]:
        rec["differ"] = {k: [scores[False][k], scores[True][k]] for k in scores[False]
                         if scores[False][k] != scores[True][k]}
    rec.update(result.diagnostics.get("replay", {}))
    rec["ratio"] = took[False] / took[True] if took[True] else None
    return rec


def child(name: str, queue) -> None:
    try:
        queue.put(check(name))
    except Exception as exc:  # recorded, never fatal to the sweep
        queue.put({"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="families or timm model names")
    parser.add_argument("--time-limit", type=int, default=300, help="seconds per model")
    parser.add_argument("--resume", action="store_true", help="keep the records already in --out")
    args = parser.parse_args()
    zoo_args = argparse.Namespace(only=args.only, limit=None, choices=zoo.CHOICES, refresh_choices=False)
    runs = zoo.select(zoo_args)
    records = json.loads(args.out.read_text())["records"] if args.resume and args.out.is_file() else []
    done = {r["model"] for r in records}
    runs = [(family, name) for family, name in runs if name not in done]
    ctx = multiprocessing.get_context("fork")
    for i, (family, name) in enumerate(runs, 1):
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(name, queue))
        proc.start()
        proc.join(args.time_limit)
        if proc.is_alive():
            proc.kill()
            proc.join()
            rec = {"model": name, "error": f"timeout after {args.time_limit} s"}
        else:
            rec = queue.get() if not queue.empty() else {"model": name, "error": f"exit code {proc.exitcode}"}
        rec["family"] = family
        records.append(rec)
        status = rec.get("error") or (f"{rec['blocks']} blocks, {'same' if rec['same'] else 'DIFFERENT'}, "
                                      f"replayed {rec.get('replayed')}, full {rec.get('full_runs')}")
        print(f"[{i}/{len(runs)}] {family}: {name}: {status}", flush=True)
        write_json(args.out, {"records": records})
    scored = [r for r in records if "same" in r and r["blocks"]]
    differ = [r["model"] for r in scored if not r["same"]]
    errors = [r["model"] for r in records if "error" in r]
    replayed_all = sum(r.get("replayed") == r["blocks"] for r in scored)
    summary = {"models": len(records), "scored": len(scored), "different": differ, "errors": errors,
               "every_block_replayed": replayed_all,
               "some_full_runs": [r["model"] for r in scored if r.get("full_runs")]}
    write_json(args.out, {"summary": summary, "records": records})
    print(json.dumps(summary, indent=1))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()

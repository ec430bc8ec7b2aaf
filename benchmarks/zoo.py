"""Block surgery across the whole timm zoo: one model per family, every check that matters.

A *family* is the module that defines a model's timm entrypoint (``resnet``, ``vision_transformer``,
… about 100 of them, layerprune's own ``cifar_resnet`` and ``cifar_vgg`` included). Each family is
represented by its smallest model by parameter count, counted on the meta device (no weights are
allocated) and cached in ``benchmarks/zoo_models.json`` so that runs are reproducible. Each chosen
model is built at random init (``pretrained=False``, 10 classes, its own input size, batch 2), put
in train mode with one norm layer left in eval mode, and checked:

* ``find_blocks``: candidates (blocks in a stage), removable, collapsible, why the other
  candidates are not offered, and its time as a multiple of one eval forward;
* every other offered block of each stage (removable, or collapsible with ``collapse=True``)
  taken out at once: the output keeps its shape, and ``torch.jit.trace`` and ``torch.export`` of
  the pruned model match its eager output;
* every offered block taken out alone (checked on one sample): none may be refused;
* sub-layers (``find_blocks(..., level="sublayer")``): how many residual branches inside blocks are
  offered (attention and MLP of a transformer block), its time as a multiple of one forward pass,
  and every other one removed at once: output shape, ``torch.jit.trace`` and ``torch.export``;
* the original untouched afterwards: state_dict bitwise, every submodule's train/eval flag, and
  its eval output.

    python benchmarks/zoo.py --markdown docs/zoo_table.md
    python benchmarks/zoo.py --only resnet18 vision_transformer cifar_resnet --limit 2
    python benchmarks/zoo.py --refresh-choices          # after a timm upgrade
    python benchmarks/zoo.py --out zoo.json --resume    # go on after an interrupted sweep
    python benchmarks/zoo.py --out zoo.json --update --only efficientvim  # recheck families in a sweep

``--resume`` keeps the models already in ``--out`` only if they were checked by the same code
(a hash of layerprune's sources and this script) with the same timm, torch and thread count;
otherwise the sweep starts over. ``--update`` reruns the ``--only`` families and puts their
records in place of the earlier ones in ``--out`` (the table and summary then cover the whole
sweep; each record keeps the code fingerprint it was made with, and the summary says how many
were made by later code).

Exit code 1 when a block reported removable is refused alone or an original model was modified
(both are bugs); torch.export / jit.trace failures are reported, fatal only with
``--strict-export``. One model can never stop the run: every step's error is recorded, and each
model has a time limit (``--time-limit``, reported as "timeout").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import re
import signal
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn as nn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import layerprune  # registers the CIFAR models with timm
from layerprune import find_blocks, remove_blocks
from layerprune.hooks import eval_mode
from layerprune.io import write_json, write_text
from layerprune.surgery.blocks import StagePlan, stages
from layerprune.surgery.named import coverage, named_blocks

CHOICES = Path(__file__).resolve().parent / "zoo_models.json"
DEFAULT_INPUT = (3, 224, 224)
MAX_SIDE = 288  # larger inputs are tried at 224×224 (see create)
BATCH = 2


class Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no step's ``except Exception`` swallows it."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`Timeout` in the main thread once ``seconds`` have passed (0: no limit)."""

    def alarm(signum, frame):
        raise Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(0, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- families and the chosen models


def family_of(name: str) -> str:
    """The module that defines ``name``'s entrypoint: ``resnet``, ``cifar_resnet``, …"""
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def families() -> dict[str, list[str]]:
    """Every timm model name, grouped by family (both in timm's sorted order). timm's own
    ``test_*`` models (tiny configurations for its CI) are left out: they are not models anyone
    prunes, and several have one block per stage."""
    out: dict[str, list[str]] = defaultdict(list)
    for name in timm.list_models(exclude_filters=["test_*"]):
        out[family_of(name)].append(name)
    return dict(sorted(out.items()))


def meta_size(name: str) -> tuple[int, list[int]]:
    """(parameter count, pretrained_cfg input size) of ``name`` built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return sum(p.numel() for p in model.parameters()), list(cfg.get("input_size") or DEFAULT_INPUT)


def choose(names: list[str], on_each=None) -> dict[str, Any]:
    """The smallest of ``names`` by parameter count (ties: smaller input, then name); names that
    fail on the meta device are skipped, and if all fail the first name is taken."""
    sizes, failed = {}, {}
    for name in names:
        try:
            with time_limit(60):
                sizes[name] = meta_size(name)
        except (Exception, Timeout) as exc:
            failed[name] = "timeout" if isinstance(exc, Timeout) else error_text(exc, 200)
        if on_each:
            on_each()
    if sizes:
        best = min(sizes, key=lambda n: (sizes[n][0], sizes[n][1][-1] * sizes[n][1][-2], n))
        params, input_size = sizes[best]
    else:
        best, params, input_size = names[0], None, None
    return {"model": best, "params": params, "input_size": input_size, "models": len(names),
            "meta_failures": failed}


def choose_all(groups: dict[str, list[str]]) -> tuple[dict[str, Any], float]:
    """:func:`choose` for every family, with a progress bar; (choices, seconds taken)."""
    start = time.perf_counter()
    out = {}
    with Progress(TextColumn("meta pass {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=sum(len(v) for v in groups.values()))
        for family, names in groups.items():
            progress.update(task, description=family)
            out[family] = choose(names, on_each=lambda: progress.advance(task))
    return out, time.perf_counter() - start


def load_choices(path: Path, refresh: bool) -> dict[str, Any]:
    """The chosen model per family, from ``path`` or computed (and saved there). Families timm
    gained since the file was written are added; families it no longer has are dropped."""
    groups = families()
    cached = json.loads(path.read_text()) if path.exists() and not refresh else None
    if cached is None:
        chosen, seconds = choose_all(groups)
        print(f"meta pass: {sum(map(len, groups.values()))} models in {len(groups)} families, {seconds:.1f} s")
        cached = {"timm": timm.__version__, "torch": torch.__version__, "meta_pass_s": round(seconds, 1),
                  "families": chosen}
    else:
        if cached.get("timm") != timm.__version__:
            print(f"note: {path.name} was made with timm {cached.get('timm')}, this is {timm.__version__} "
                  "(--refresh-choices to recompute)")
        missing = {f: n for f, n in groups.items() if f not in cached["families"]}
        gone = [f for f in cached["families"] if f not in groups]
        if not missing and not gone:
            return cached
        print(f"{path.name}: adding {sorted(missing)}, dropping {gone}")
        for f in gone:
            del cached["families"][f]
        cached["families"].update(choose_all(missing)[0])
        cached["families"] = dict(sorted(cached["families"].items()))
    write_json(path, cached)
    return cached


def select(args) -> list[tuple[str, str]]:
    """``[(family, model)]`` to run: each family's chosen model, or those ``--only`` names (a
    family, or any timm model name), then the first ``--limit``."""
    groups = families()
    needs_choices = not args.only or any(item in groups for item in args.only)
    chosen = load_choices(args.choices, args.refresh_choices)["families"] if needs_choices else {}
    if not args.only:
        runs = [(f, c["model"]) for f, c in chosen.items()]
    else:
        runs = []
        for item in args.only:
            if item in groups:
                runs.append((item, chosen[item]["model"]))
            elif timm.is_model(item):
                runs.append((family_of(item), item))
            else:
                sys.exit(f"--only {item!r}: neither a family nor a timm model name")
    return runs[: args.limit] if args.limit else runs


# ------------------------------------------------------------------------------ checking one model


def first_output(out: Any) -> torch.Tensor:
    """The tensor a model returned (the first one, for tuples and dicts)."""
    while not isinstance(out, torch.Tensor):
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def run_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward in eval mode without gradients; the model's flags are restored after."""
    with eval_mode(model), torch.no_grad():
        return first_output(model(x))


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    """Allclose (rtol 1e-3, atol 1e-4 × output magnitude) and the largest difference."""
    out = first_output(out)
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    same = out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * scale, equal_nan=True)
    if out.shape != ref.shape:
        return {"ok": False, "max_abs_diff": None, "error": f"output shape {list(out.shape)} != {list(ref.shape)}"}
    diff = (out - ref).abs().max().item() if ref.numel() else 0.0
    return {"ok": bool(same), "max_abs_diff": diff, "error": None if same else f"outputs differ by up to {diff:.3g}"}


def mixed_flags(model: nn.Module) -> str:
    """Train mode, except one submodule (the first norm layer, else the first child) in eval mode."""
    model.train()
    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    name, module = next(((n, m) for n, m in model.named_modules() if isinstance(m, norms)),
                        next(model.named_children(), ("", model)))
    module.eval()
    return name


def snapshot(model: nn.Module) -> dict[str, Any]:
    """What must not change: every submodule's (name, type, flag) and a copy of the state_dict."""
    return {"flags": [(n, type(m).__name__, m.training) for n, m in model.named_modules()],
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so NaNs in uninitialised buffers compare equal to themselves)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_bytes = lambda t: t.detach().reshape(-1).contiguous().view(torch.uint8)  # noqa: E731
    return torch.equal(as_bytes(a), as_bytes(b))


def untouched(model: nn.Module, before: dict[str, Any], ref: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Whether ``model`` is as recorded: flags (and structure), state_dict bitwise, eval output."""
    flags = [(n, type(m).__name__, m.training) for n, m in model.named_modules()] == before["flags"]
    state = model.state_dict()
    same_state = state.keys() == before["state"].keys() and all(
        bitwise_equal(state[k], v) for k, v in before["state"].items())
    out = run_eval(model, x)
    same_out = torch.equal(out, ref) or torch.allclose(out, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    return {"ok": flags and same_state and same_out, "flags": flags, "state_dict": same_state, "output": same_out}


def short_reason(reason: str) -> str:
    """The gist of a refusal reason: the text before the first '(' or ':', quoted names elided."""
    return re.sub(r"'[^']*'", "'…'", re.split(r"[(:]", reason, maxsplit=1)[0]).strip()


def offered(b) -> bool:
    """Taken out alone, when asked: removable, or collapsible with ``collapse=True``."""
    return b.stage and b.can_remove(collapse=True)


def every_other(blocks) -> list[str]:
    """Offered blocks at positions 0, 2, 4, … of each stage's offered list, as the stage plan
    allows them (never the last block of a stage)."""
    plan, chosen = StagePlan(blocks), []
    for members in stages(blocks).values():
        chosen += [b.name for b in [b for b in members if offered(b)][::2] if plan.try_remove(b)]
    return chosen


def exported(pruned: nn.Module, x: torch.Tensor, ref: torch.Tensor, how: str) -> dict[str, Any]:
    """``torch.jit.trace`` or ``torch.export`` of ``pruned`` (eval), run and compared to ``ref``."""
    try:
        pruned.eval()
        if how == "jit":
            module = torch.jit.trace(pruned, x, check_trace=False)
        else:
            module = torch.export.export(pruned, (x,)).module()
        with torch.no_grad():
            return compare(ref, module(x))
    except Exception as exc:
        return {"ok": False, "max_abs_diff": None, "error": error_text(exc)}


def input_size(model: nn.Module) -> list[int]:
    """The size the model was built for: its ``img_size`` if it has one, else its config's."""
    cfg = list((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or DEFAULT_INPUT)
    side = getattr(getattr(model, "patch_embed", None), "img_size", None) or getattr(model, "img_size", None)
    if isinstance(side, int):
        side = (side, side)
    if isinstance(side, (tuple, list)) and len(side) == 2 and all(isinstance(v, int) for v in side):
        return [cfg[0], *side]
    return cfg


def create(name: str) -> tuple[nn.Module, list[int]]:
    """The model at random init with 10 classes, and the input size it is checked at. A model
    whose own input is larger than ``MAX_SIDE`` (a 412M-parameter ViT at 546×546 takes minutes per
    forward pass on 2 cores) is built for 224×224 when its constructor takes ``img_size``; else,
    when its forward accepts 224×224 as built (Gemma 4's vision tower reads any size), it is
    checked at 224×224; else at its own size."""
    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) or DEFAULT_INPUT
    if max(size[1:]) > MAX_SIDE:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=10, img_size=224)
            return model, [size[0], 224, 224]  # built for it (its config still names its own size)
        except Exception:  # no img_size argument, or fixed to its size
            pass
        model = timm.create_model(name, pretrained=False, num_classes=10)
        small = [input_size(model)[0], 224, 224]
        try:
            run_eval(model, torch.randn(1, *small))
            return model, small
        except Exception:  # fixed to its own size
            return model, input_size(model)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    return model, input_size(model)


def check_model(family: str, name: str, limit: int, report=lambda step: step) -> dict[str, Any]:
    """Every check on one model; never raises. See the module docstring for what is checked."""
    rec: dict[str, Any] = {"family": family, "model": name, "status": "ok", "error": None,
                           "timeout_in": None, "single": None, "every_other": None, "jit_trace": None,
                           "export": None, "untouched": None, "sublayer": None}
    start = time.perf_counter()
    model = x = before = ref = None
    step = report("create")
    try:
        with time_limit(limit):
            torch.manual_seed(0)
            t = time.perf_counter()
            model, size = create(name)
            rec["create_s"] = time.perf_counter() - t
            rec["params"] = sum(p.numel() for p in model.parameters())
            rec["input_size"] = size
            x = torch.randn(BATCH, *rec["input_size"])
            rec["eval_submodule"] = mixed_flags(model)
            before = snapshot(model)

            step = report("forward")
            times, outs = [], []
            for _ in range(3):
                t = time.perf_counter()
                outs.append(run_eval(model, x))
                times.append(time.perf_counter() - t)
            ref, rec["forward_s"] = outs[0], statistics.median(times)
            rec["output_shape"], rec["output_finite"] = list(ref.shape), bool(torch.isfinite(ref).all())

            step = report("find_blocks")
            t = time.perf_counter()
            blocks = find_blocks(model, x)
            rec["find_s"] = time.perf_counter() - t
            rec["find_over_forward"] = rec["find_s"] / rec["forward_s"]
            candidates = [b for b in blocks if b.stage]
            rec["candidates"] = len(candidates)
            rec["removable"] = sum(b.removable for b in candidates)
            rec["collapsible"] = sum(b.kind == "collapse" for b in candidates)
            rec["not_offered"] = dict(Counter(short_reason(b.reason) for b in candidates if not b.removable)
                                      .most_common())
            takeable = [b.name for b in candidates if offered(b)]
            # as find_blocks names them: modules with parameters (a parameter-free Flat is nothing to remove)
            named = named_blocks(model, [n for n, m in model.named_modules() if n and next(m.parameters(), None) is not None])
            cov = coverage(blocks, named, short_reason)
            rec["granularity"] = {"pattern": cov.pattern, "source": named.source, "named": cov.named,
                                  "listed": cov.listed, "offered": cov.removable, "expected": cov.expected,
                                  "complete": cov.complete, "short": cov.short}

            if takeable:
                step, t = report("every-other removal"), time.perf_counter()
                names = every_other(blocks)
                rec["every_other"] = {"removed": names, "ok": False, "error": None}
                try:
                    pruned = remove_blocks(model, names, x, blocks=blocks, collapse=True)
                    out = run_eval(pruned, x)
                    rec["every_other"]["ok"] = list(out.shape) == list(ref.shape)
                    if not rec["every_other"]["ok"]:
                        rec["every_other"]["error"] = f"output shape {list(out.shape)} != {list(ref.shape)}"
                    step = report("jit.trace")
                    rec["jit_trace"] = exported(pruned, x, out, "jit")
                    step = report("torch.export")
                    rec["export"] = exported(pruned, x, out, "export")
                    del pruned
                except Exception as exc:
                    rec["every_other"]["error"] = error_text(exc)
                rec["every_other_s"] = time.perf_counter() - t

            step, t = report("single removal"), time.perf_counter()
            rec["single"] = {"ok": 0, "total": len(takeable), "failures": []}
            for i, block in enumerate(takeable):
                step = report(f"single removal ({i}/{len(takeable)} done)")
                try:
                    remove_blocks(model, [block], x[:1], blocks=blocks, collapse=True)  # one sample checks the same
                    rec["single"]["ok"] += 1
                except Exception as exc:
                    rec["single"]["failures"].append({"block": block, "error": error_text(exc, 500)})
            rec["single_s"] = time.perf_counter() - t

            step = report("sub-layers")
            rec["sublayer"] = check_sublayers(model, x, blocks, rec["forward_s"], ref)
    except Timeout:
        rec["status"], rec["timeout_in"], rec["error"] = "timeout", step, f"timeout after {limit} s in {step}"
    except Exception as exc:
        rec["status"], rec["error"] = "error", f"{step}: {error_text(exc)}"

    if ref is not None:  # the original untouched: always checked, under its own time limit
        try:
            with time_limit(limit):
                rec["untouched"] = untouched(model, before, ref, x)
        except (Exception, Timeout) as exc:
            rec["untouched"] = {"ok": None, "error": "timeout" if isinstance(exc, Timeout) else error_text(exc)}
    rec["wall_s"] = time.perf_counter() - start
    return rec


def check_sublayers(model: nn.Module, x: torch.Tensor, blocks, forward_s: float, ref: torch.Tensor) -> dict[str, Any]:
    """``find_blocks(..., level="sublayer")``: the units it offers that the block level does not,
    its time, and every other such sub-layer removed at once (shape, jit.trace, torch.export)."""
    t = time.perf_counter()
    units = find_blocks(model, x, level="sublayer")
    found_s = time.perf_counter() - t
    whole = {b.name for b in blocks}
    new = [b for b in units if b.stage and b.name not in whole]
    rec = {"find_s": found_s, "find_over_forward": found_s / forward_s,
           "offered": sum(b.removable for b in new), "listed": len(new),
           "every_other": None, "jit_trace": None, "export": None}
    names = [n for n in every_other(units) if n not in whole]
    if names:
        rec["every_other"] = {"removed": names, "ok": False, "error": None}
        try:
            pruned = remove_blocks(model, names, x, blocks=units, collapse=True)
            out = run_eval(pruned, x)
            rec["every_other"]["ok"] = list(out.shape) == list(ref.shape)
            rec["jit_trace"] = exported(pruned, x, out, "jit")
            rec["export"] = exported(pruned, x, out, "export")
        except Exception as exc:
            rec["every_other"]["error"] = error_text(exc)
    return rec


def check_isolated(family: str, name: str, limit: int) -> dict[str, Any]:
    """:func:`check_model` in a forked child process, so that a model that exhausts memory (the
    kernel kills the process) is recorded as an error instead of ending the run."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        def report(step: str) -> str:  # the step reaches the parent before it starts
            send.send(step)
            return step

        send.send(check_model(family, name, limit, report))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    step, deadline = "start", time.monotonic() + 2 * limit + 60
    try:
        while receive.poll(max(0.0, deadline - time.monotonic())):
            message = receive.recv()
            if isinstance(message, dict):
                return message
            step = message
    except EOFError:  # the child died before sending its record
        pass
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    code = proc.exitcode
    why = "killed by the kernel (out of memory?)" if code == -9 else f"exited with code {code}"
    return {"family": family, "model": name, "status": "error", "error": f"process {why} in {step}", "timeout_in": step,
            "single": None, "every_other": None, "jit_trace": None, "export": None, "untouched": None}


# ------------------------------------------------------------------------------------ reporting


def mark(check: dict | None) -> str:
    """✓ / ✗ / — (not applicable) for one check record."""
    return "—" if check is None or check.get("ok") is None else "✓" if check["ok"] else "✗"


def line(rec: dict[str, Any]) -> str:
    """One line per model for the console."""
    head = f"{rec['family']:<26} {rec['model']:<34}"
    if "candidates" not in rec:
        return f"{head} {rec['status'].upper()}: {rec['error']}"
    single, size = rec["single"] or {}, "×".join(map(str, rec["input_size"]))
    text = (f"{head} {size:<11} cand {rec['candidates']:>3} rem {rec['removable']:>3} "
            f"col {rec['collapsible']:>2}  single {single.get('ok', 0)}/{single.get('total', 0)}  "
            f"every-other {mark(rec['every_other'])} jit {mark(rec['jit_trace'])} export {mark(rec['export'])} "
            f"untouched {mark(rec['untouched'])}  find {rec['find_over_forward']:.1f}× fwd  "
            f"{sublayer_text(rec.get('sublayer'))}  {rec['wall_s']:.1f} s")
    return text + (f"  {rec['status'].upper()}: {rec['error']}" if rec["error"] else "")


def sublayer_text(sub: dict[str, Any] | None) -> str:
    """``sub-layers N (every other ✓, jit ✓, export ✓), find K× fwd`` or ``sub-layers 0``."""
    if not sub:
        return "sub-layers –"
    checks = (f" (every other {mark(sub['every_other'])}, jit {mark(sub['jit_trace'])}, "
              f"export {mark(sub['export'])})" if sub["every_other"] else "")
    return f"sub-layers {sub['offered']}{checks}, find {sub['find_over_forward']:.1f}× fwd"


def markdown(records: list[dict[str, Any]]) -> str:
    """One table row per model, with the main reasons candidates are not offered."""
    rows = ["| family | model | input | timm's blocks | offered / listed / named | candidates | removable "
            "| collapsible | single removal | every other | jit.trace | torch.export | untouched | find / forward "
            "| sub-layers offered (checks) | not offered, mainly |",
            "|---|---|---|---|--:|--:|--:|--:|--:|:-:|:-:|:-:|:-:|--:|--:|---|"]
    for r in records:
        if "candidates" not in r:
            rows.append(f"| {r['family']} | {r['model']} | {'×'.join(map(str, r.get('input_size', [])))} "
                        f"| | | | | | | | | | {mark(r['untouched'])} | | | **{r['status']}**: {cell(r['error'])} |")
            continue
        reasons = "; ".join(f"{k} ×{v}" for k, v in list(r["not_offered"].items())[:3])
        if r["error"]:
            reasons = f"**{r['status']}**: {r['error']}" + (f"; {reasons}" if reasons else "")
        single = r["single"] or {"ok": 0, "total": 0}
        g = r["granularity"]
        if g["short"]:
            reasons = "timm's blocks not offered: " + "; ".join(f"{k} ×{v}" for k, v in g["short"].items()) \
                + (f"; {reasons}" if reasons else "")
        pattern = "none" if g["source"] == "none" else f"`{g['pattern']}`"
        counts = f"{g['offered']}/{g['listed']}/{g['named']}" if g["named"] else ""
        rows.append(f"| {r['family']} | {r['model']} | {'×'.join(map(str, r['input_size']))} | {cell(pattern)} "
                    f"| {counts} | {r['candidates']} "
                    f"| {r['removable']} | {r['collapsible']} | {single['ok']}/{single['total']} "
                    f"| {mark(r['every_other'])} | {mark(r['jit_trace'])} | {mark(r['export'])} "
                    f"| {mark(r['untouched'])} | {r['find_over_forward']:.1f}× | {sublayer_cell(r.get('sublayer'))} "
                    f"| {cell(reasons)} |")
    return "\n".join(rows) + "\n"


def sublayer_cell(sub: dict[str, Any] | None) -> str:
    """``24 (✓ ✓ ✓) 6.1×``: sub-layers offered, every-other / jit.trace / torch.export, find time."""
    if not sub:
        return ""
    checks = (f" ({mark(sub['every_other'])} {mark(sub['jit_trace'])} {mark(sub['export'])})"
              if sub["every_other"] else "")
    return f"{sub['offered']}{checks} {sub['find_over_forward']:.1f}×"


TABLE_START, TABLE_END = "<!-- zoo-table -->", "<!-- /zoo-table -->"


def write_markdown(path: Path, table: str) -> None:
    """Write the table to ``path``; in a file that holds the markers ``<!-- zoo-table -->`` and
    ``<!-- /zoo-table -->`` (docs/surgery.md), replace only what lies between them."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        table = head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, table)


def summary_lines(s: dict[str, Any], args) -> str:
    """The run's totals under the table, with the settings that produced them."""
    ratio = f"median {s['find_over_forward_median']:.1f}×, max {s['find_over_forward_max']:.1f}×" \
        if s["find_over_forward_median"] is not None else "n/a"
    sub_ratio = f"median {s['sublayer_find_median']:.1f}×, max {s['sublayer_find_max']:.1f}×" \
        if s["sublayer_find_median"] is not None else "n/a"
    return (f"{s['families']} families; {s['with_removable']} with at least one removable block; "
            f"{s['errors']} errors, {s['timeouts']} timeouts (limit {args.time_limit} s per model). "
            f"Refused single removals: {s['single_failures']}; failed every-other removals: "
            f"{s['every_other_failures']}; `torch.jit.trace` failures: {s['jit_failures']}; `torch.export` "
            f"failures: {s['export_failures']}; originals modified: {s['untouched_failures']}. "
            f"Families that name their blocks (timm's group_matcher or the stages.N.blocks.M layout): "
            f"{s['naming']}; of those, with a named block not offered beyond one per stage: "
            f"{len(s['naming_short'])}{' (' + ', '.join(s['naming_short']) + ')' if s['naming_short'] else ''}. "
            f"`find_blocks` / one forward pass: {ratio} (block level); {sub_ratio} (sub-layer level). "
            f"Sub-layers: {s['with_sublayers']} families offer them; failed every-other removals "
            f"{s['sublayer_failures']}, `torch.jit.trace` / `torch.export` failures {s['sublayer_export_failures']}. "
            f"{rechecked(s)}Wall time {s['wall_s'] / 60:.0f} min on "
            f"{torch.get_num_threads()} threads (timm {timm.__version__}, torch {torch.__version__}).\n")


def rechecked(s: dict[str, Any]) -> str:
    """A sentence when the records come from more than one version of the code (``--update``)."""
    codes = [(code, n) for code, n in s.get("codes", {}).items() if code]
    if len(codes) < 2:
        return ""
    first, *later = codes
    n = sum(count for _, count in later)
    return (f"{n} {'family was' if n == 1 else 'families were'} rechecked with later code (`--update`; code "
            f"{', '.join(c for c, _ in later)}), the other {first[1]} with code {first[0]}. ")


def cell(text: str | None) -> str:
    """Text safe inside a markdown table cell."""
    return (text or "").replace("|", "\\|").replace("\n", " ")


def summarize(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """The counts printed at the end (and stored in the JSON)."""
    ratios = [r["find_over_forward"] for r in records if "find_over_forward" in r]
    subs = [r["sublayer"] for r in records if r.get("sublayer")]
    sub_ratios = [sub["find_over_forward"] for sub in subs]
    return {
        "families": len(records),
        "with_removable": sum(r.get("removable", 0) > 0 for r in records),
        "errors": sum(r["status"] == "error" for r in records),
        "timeouts": sum(r["status"] == "timeout" for r in records),
        "single_failures": sum(len((r["single"] or {}).get("failures", [])) for r in records),
        "every_other_failures": sum(mark(r["every_other"]) == "✗" for r in records),
        "jit_failures": sum(mark(r["jit_trace"]) == "✗" for r in records),
        "export_failures": sum(mark(r["export"]) == "✗" for r in records),
        "untouched_failures": sum((r["untouched"] or {}).get("ok") is False for r in records),
        "naming": sum(bool(r.get("granularity", {}).get("named")) for r in records),
        "naming_short": sorted(r["family"] for r in records
                               if r.get("granularity", {}).get("named") and not r["granularity"]["complete"]),
        "find_over_forward_median": statistics.median(ratios) if ratios else None,
        "find_over_forward_max": max(ratios) if ratios else None,
        "codes": dict(Counter(r.get("code") for r in records).most_common()),
        "with_sublayers": sum(sub["offered"] > 0 for sub in subs),
        "sublayer_failures": sum(mark(sub["every_other"]) == "✗" for sub in subs),
        "sublayer_export_failures": sum(mark(sub["jit_trace"]) == "✗" or mark(sub["export"]) == "✗" for sub in subs),
        "sublayer_find_median": statistics.median(sub_ratios) if sub_ratios else None,
        "sublayer_find_max": max(sub_ratios) if sub_ratios else None,
        "wall_s": wall,
    }


def code_fingerprint() -> str:
    """A hash of every source file the results depend on: layerprune's package and this script."""
    digest = hashlib.sha256()
    root = Path(layerprune.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")) + [Path(__file__).resolve()]:
        digest.update(str(path.relative_to(root.parent)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resumed(out: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of an interrupted sweep in ``out`` made under the same ``meta`` (code, timm,
    torch, threads, time limit), else none."""
    if not out.exists():
        return []
    try:
        earlier = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"--resume: {out} is unreadable ({exc}); starting over")
        return []
    if earlier.get("meta") != meta:
        changed = sorted(k for k in meta if earlier.get("meta", {}).get(k) != meta[k])
        print(f"--resume: {out} was made under a different {', '.join(changed)}; starting over")
        return []
    return earlier.get("records", [])


def updated(earlier: dict[str, Any], meta: dict[str, Any], records: list[dict[str, Any]]) -> tuple[dict, list, float]:
    """The sweep ``earlier`` with ``records`` in place of its records of the same families (new
    families appended): its meta (the new code noted under ``updates``), records, and wall time
    (the sum of the records' own)."""
    base = earlier["meta"]
    fresh = {r["family"]: r for r in records}
    merged = [fresh.pop(r["family"], r) for r in earlier["records"]] + list(fresh.values())
    for r in merged:
        r.setdefault("code", base.get("code"))
    base = {**base, "updates": [*base.get("updates", []), {"code": meta["code"],
                                                            "families": sorted(r["family"] for r in records)}]}
    return base, merged, sum(r.get("wall_s", 0.0) for r in merged)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME_OR_FAMILY", help="families or model names to run")
    parser.add_argument("--limit", type=int, help="run only the first N")
    parser.add_argument("--out", type=Path, default=Path("zoo.json"), help="JSON results (default ./zoo.json)")
    parser.add_argument("--markdown", type=Path, help="also write a markdown table here")
    parser.add_argument("--choices", type=Path, default=CHOICES, help="cached model per family")
    parser.add_argument("--refresh-choices", action="store_true", help="recompute the cached choices")
    parser.add_argument("--time-limit", type=int, default=300, help="seconds per model (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--strict-export", action="store_true", help="exit 1 on jit.trace / export failures too")
    parser.add_argument("--resume", action="store_true",
                        help="keep the models --out already holds when the code and versions are the same")
    parser.add_argument("--update", action="store_true",
                        help="rerun the --only families and replace their records in --out, keeping the others")
    args = parser.parse_args()
    if args.update and (not args.only or not args.out.exists()):
        parser.error("--update needs --only and an existing --out")

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    print(f"layerprune {layerprune.__version__}, timm {timm.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    runs = select(args)

    start, records = time.perf_counter(), []
    meta = {"timm": timm.__version__, "torch": torch.__version__, "layerprune": layerprune.__version__,
            "threads": torch.get_num_threads(), "batch": BATCH, "time_limit_s": args.time_limit,
            "code": code_fingerprint()}
    done = {rec["model"]: rec for rec in resumed(args.out, meta)} if args.resume else {}
    earlier = json.loads(args.out.read_text()) if args.update else None

    def save(records: list[dict[str, Any]]) -> None:
        head, kept = updated(earlier, meta, records)[:2] if earlier else (meta, records)
        write_json(args.out, {"meta": head, "records": kept})

    if done:
        print(f"--resume: {len(done)} models already checked in {args.out}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=len(runs))
        for family, name in runs:
            progress.update(task, description=name)
            rec = done.get(name)
            if rec is None or rec.get("family") != family:
                rec = {**check_isolated(family, name, args.time_limit), "code": meta["code"],
                       "time_limit_s": args.time_limit}
            records.append(rec)
            progress.console.print(line(records[-1]), markup=False, highlight=False, soft_wrap=True)
            save(records)  # partial results survive a crash
            progress.advance(task)

    wall, head = time.perf_counter() - start, meta
    if earlier:
        head, records, wall = updated(earlier, meta, records)
    summary = summarize(records, wall)
    write_json(args.out, {"meta": head, "summary": summary, "records": records})
    if args.markdown:
        write_markdown(args.markdown, markdown(records) + "\n" + summary_lines(summary, args))
    s = summary
    ratio = (f"median {s['find_over_forward_median']:.1f}×, max {s['find_over_forward_max']:.1f}×"
             if s["find_over_forward_median"] is not None else "n/a")
    print(f"\n{s['families']} families run, {s['with_removable']} with ≥1 removable block, "
          f"{s['errors']} errors, {s['timeouts']} timeouts\n"
          f"single-removal failures {s['single_failures']}, every-other failures {s['every_other_failures']}, "
          f"jit.trace failures {s['jit_failures']}, export failures {s['export_failures']}, "
          f"untouched failures {s['untouched_failures']}\n"
          f"find_blocks / forward: {ratio}; wall {s['wall_s']:.0f} s → {args.out}")
    bugs = s["single_failures"] + s["untouched_failures"] + s["sublayer_failures"]
    if args.strict_export:
        bugs += s["jit_failures"] + s["export_failures"]
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())

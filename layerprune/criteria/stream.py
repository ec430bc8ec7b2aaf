"""The feature stream: every probe point's features, computed once per calibration batch and handed
to every statistic asked for, within a memory budget.

Probe points are the tensors between blocks: the input of the first block (the stem's output, or
the image itself), every block's output, and a block's input when something (a pooling layer,
a stage transition) sits between it and the previous block. Each block has a probe before and a
probe after it; neighbouring blocks share one.

Memory: a calibration batch's features at one probe are ``samples × features`` floats (ResNet-56,
500 CIFAR samples, first stage: 33 MB). The stream holds at most ``memory_budget`` bytes of them:
probes are cut into groups that fit, and each group gets its own forward pass, stopped early after
the group's last probe. Statistics reduce features to something small (a number, an ``N × N``
Gram matrix at most) before the next group runs.

Resuming: a group's pass does not start again from the image. It resumes from the previous group's
last probe, whose features are still held: every module that ran before that point is skipped
(it returns zeros of its traced shape at no cost) and the held tensor is put back where it was
read. So a curve cut into many groups costs about one forward pass, not one per group. Each resume
point is first checked, for the probes its group reads, on the traced example against a plain
forward pass; where the model's forward does not allow skipping (a module called twice,
non-tensor outputs, a mismatch), that group starts from the image as before.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from layerprune.lazy import lazy_import, no_grad
from layerprune.calibration import MICRO_BATCH
from layerprune.errors import LayerpruneError
from layerprune.evaluation import model_device
from layerprune.hooks import eval_mode, forward_hooks, main_tensor, trace_calls
from layerprune.surgery.blocks import Block

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

ProbeStat = Callable[["torch.Tensor", "torch.Tensor"], Any]
BlockStat = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], Any]
Pair = tuple["torch.Tensor", "torch.Tensor"]


@dataclass(frozen=True)
class Probe:
    """A tensor in the forward pass, read at ``site``'s input (``where="in"``) or output."""

    name: str
    site: str
    where: str
    shape: tuple[int, ...]  # per sample

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class ProbeGroup:
    """Probes read in one forward pass, and the blocks whose statistics that pass completes."""

    probes: list[Probe]
    blocks: list[str]
    resumes_from: Probe | None = None  # the previous group's last probe: where this pass resumes
    spans: list[tuple[str, str]] = field(default_factory=list)  # (before, after) probe pairs it completes


@dataclass(frozen=True)
class StreamPass:
    """One forward pass of the stream: the probes it read and the probe it resumed from (or
    ``None`` when it started from the image)."""

    probes: tuple[str, ...]
    resumed_from: str | None


@dataclass
class _Call:
    start: int
    end: int = -1
    calls: int = 0
    output: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised by a hook once a pass's last probe is read: the rest of the forward is not needed."""


def trace_probes(
    model: nn.Module, blocks: list[Block], example: torch.Tensor, sites: Sequence[str] | None = None,
) -> tuple[list[Probe], dict[str, tuple[str, str]]]:
    """The probe points of ``model`` (or the outputs of the modules ``sites``) and, per block, the
    names of its probes before and after."""
    if sites is not None:
        return _trace_sites(model, example, list(sites)), {}
    stage_blocks = [b for b in blocks if b.stage and b.in_shape and b.out_shape]
    rows = len(example)
    # Where each block's stream is read: at its own input and output, or — a sub-layer written
    # inline in its block — at the two sites recorded in Block.stream ("blocks.3.norm2:in").
    sites = {b.name: tuple(_site(s) for s in b.stream) or ((b.name, "in"), (b.name, "out")) for b in stage_blocks}
    # Holding every traced tensor keeps them alive, so their ids stay unique.
    read: dict[tuple[str, str], torch.Tensor] = {}

    def keep(site: tuple[str, str], value: Any) -> None:
        # a block returning (x, feat_size) passes x on; the stream has a row per sample
        value = main_tensor(value, rows)
        if isinstance(value, torch.Tensor) and site not in read:
            read[site] = value

    every = {site for pair in sites.values() for site in pair}
    after = {m: (lambda mod, args, out, m=m: keep((m, "out"), out)) for m, w in every if w == "out"}
    before = {m: (lambda mod, args, m=m: keep((m, "in"), args)) for m, w in every if w == "in"}
    with forward_hooks(model, after=after, before=before), eval_mode(model), torch.no_grad():
        model(example)
    probes: list[Probe] = []
    block_probes: dict[str, tuple[str, str]] = {}
    seen: dict[int, str] = {}
    for b in stage_blocks:
        (in_site, in_where), (out_site, out_where) = sites[b.name]
        x, y = read.get((in_site, in_where)), read.get((out_site, out_where))
        if x is None or y is None:
            continue
        if id(x) not in seen:
            name = "input" if x is example else "stem" if not probes else f"{b.name}:in"
            seen[id(x)] = name
            probes.append(Probe(name, in_site, in_where, tuple(x.shape[1:])))
        seen[id(y)] = b.name
        probes.append(Probe(b.name, out_site, out_where, tuple(y.shape[1:])))
        block_probes[b.name] = (seen[id(x)], b.name)
    return probes, block_probes


def _site(text: str) -> tuple[str, str]:
    """``"blocks.3.norm2:in"`` → ``("blocks.3.norm2", "in")``."""
    module, _, where = text.rpartition(":")
    return module, where


def _trace_sites(model: nn.Module, example: torch.Tensor, sites: list[str]) -> list[Probe]:
    shapes: dict[str, tuple[int, ...]] = {}
    for site in sites:
        try:
            model.get_submodule(site)
        except AttributeError:
            raise LayerpruneError(f"probe {site!r}: no such module in {type(model).__name__}") from None

    def hook(site: str):
        def fn(m, args, out) -> None:  # returning a value would replace the output
            shapes.setdefault(site, tuple(out.shape[1:]))
        return fn

    with forward_hooks(model, after={s: hook(s) for s in sites}), eval_mode(model), torch.no_grad():
        model(example)
    for site in sites:
        if site not in shapes:
            raise LayerpruneError(f"probe {site!r}: not called in the forward pass")
    return [Probe(site, site, "out", shapes[site]) for site in sites]


class FeatureStream:
    """Features at ``probes`` for batches of samples, group by group within ``memory_budget``."""

    def __init__(
        self,
        model: nn.Module,
        probes: list[Probe],
        block_probes: dict[str, tuple[str, str]],
        example: torch.Tensor,
        *,
        micro_batch: int = MICRO_BATCH,
        memory_budget: int = 1 << 30,
        progress: bool = False,
        resume: bool = True,
    ) -> None:
        self.model, self.probes, self.block_probes = model, probes, block_probes
        self.example = example
        self.micro_batch, self.memory_budget, self.progress = micro_batch, memory_budget, progress
        self.resume = resume
        self.passes: list[StreamPass] = []
        self._calls: dict[str, _Call] | None = None
        self._resumable: dict[tuple[str, tuple[str, ...]], bool] = {}

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    # -- grouping -------------------------------------------------------------------------------
    def groups(self, samples: int, pairs: bool = True,
               spans: Sequence[tuple[str, str]] = ()) -> list[ProbeGroup]:
        """Probes cut into groups whose features for ``samples`` fit the budget. With ``pairs``,
        each block's probes before and after it land in one group (block statistics need both);
        so do the two probes of each of ``spans`` (a run of blocks: the probe before its first
        block and the one after its last). A group's probes are in forward order. Its budget
        includes the probe its pass resumes from (the previous group's last), which is held while
        the group is read, unless the group's first probe can take over its buffer."""
        by_name = {p.name: p for p in self.probes}
        order = {p.name: i for i, p in enumerate(self.probes)}
        units: list[tuple[str | None, tuple[str, str] | None, list[Probe]]] = (
            [(b, pair, [by_name[pair[0]], by_name[pair[1]]]) for b, pair in self.block_probes.items()]
            if pairs else [(None, None, [p]) for p in self.probes])
        known = {pair for _, pair, _ in units}
        for before, after in dict.fromkeys(spans):
            if (before, after) not in known:
                units.append((None, (before, after), [by_name[before], by_name[after]]))
        # A unit is complete once its later probe is read: group them by that, in forward order.
        units.sort(key=lambda u: (order[u[2][-1].name], order[u[2][0].name]))

        def held(group: ProbeGroup, extra: list[Probe]) -> int:
            probes = group.probes + extra
            at = group.resumes_from
            resumed = [at] if at is not None and at not in probes and _reuses(at, probes) is None else []
            return sum(p.numel for p in probes + resumed) * samples * 4

        def add(group: ProbeGroup, block: str | None, pair: tuple[str, str] | None, extra: list[Probe]) -> None:
            group.probes = sorted(group.probes + extra, key=lambda p: order[p.name])
            group.blocks.extend([block] if block else [])
            group.spans.extend([pair] if pair else [])
            at = group.resumes_from
            if at is not None and order[group.probes[0].name] < order[at.name]:
                group.resumes_from = None  # a probe before the resume point: this pass starts at the image

        groups: list[ProbeGroup] = []
        for block, pair, need in units:
            if groups:
                current = groups[-1]
                extra = [p for p in need if p not in current.probes]
                if held(current, extra) <= self.memory_budget:
                    add(current, block, pair, extra)
                    continue
            resumes_from = groups[-1].probes[-1] if groups and self.resume else None
            group = ProbeGroup([], [], resumes_from)
            add(group, block, pair, list(dict.fromkeys(need)))
            groups.append(group)
        largest = max((held(g, []) for g in groups), default=0)
        if largest > self.memory_budget:
            warnings.warn(f"memory_budget ({self.memory_budget / 2**30:.2f} GiB) is below what one "
                          f"{'block' if pairs or spans else 'probe'} needs at {samples} samples "
                          f"({largest / 2**30:.2f} GiB); using that", ResourceWarning, stacklevel=4)
        return groups

    # -- the stream -----------------------------------------------------------------------------
    def run(
        self,
        batches: Sequence[Pair],
        probe_fns: dict[str, ProbeStat],
        block_fns: dict[str, BlockStat],
        span_fns: dict[str, tuple[dict[str, tuple[str, str]], BlockStat]] | None = None,
    ) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
        """Per-probe and per-block statistics, one value per batch:
        ``({key: {probe: [value per batch]}}, {key: {block: [value per batch]}})``.

        ``span_fns`` maps a key to ``(spans, fn)``: ``spans`` names pairs of probes (``name →
        (before, after)``, e.g. a run of blocks) and ``fn(features_before, features_after, labels)``
        is computed for each; its values are returned with the block statistics, under the key."""
        span_fns = span_fns or {}
        probe_out = {key: {p.name: [] for p in self.probes} for key in probe_fns}
        block_out = {key: {b: [] for b in self.block_probes} for key in block_fns}
        block_out.update({key: {name: [] for name in spans} for key, (spans, _) in span_fns.items()})
        if not batches:
            return probe_out, block_out
        by_pair: dict[tuple[str, str], list[tuple[str, str, BlockStat]]] = {}
        for key, (spans, fn) in span_fns.items():
            for name, pair in spans.items():
                by_pair.setdefault(tuple(pair), []).append((key, name, fn))
        groups = self.groups(len(batches[0][0]), pairs=bool(block_fns), spans=list(by_pair))
        with _progress(self.progress) as bar:
            task = bar.add_task("features", total=len(batches) * len(groups)) if bar else None
            for x, y in batches:
                labels = y.to(self.device)
                done: set[str] = set()
                read: dict[str, torch.Tensor] = {}  # the previous group's last probe, where the next resumes
                for group in groups:
                    # A probe that an earlier group already handed to the probe statistics is
                    # read again only when a block or span statistic needs it.
                    pairs_done = group.blocks or group.spans
                    wanted = group.probes if pairs_done else [p for p in group.probes if p.name not in done]
                    at = group.resumes_from
                    feats = self.collect(x, wanted, resume_from=(at, read[at.name]) if at and at.name in read else None)
                    for p in group.probes:
                        if p.name in done:
                            continue
                        done.add(p.name)
                        for key, fn in probe_fns.items():
                            probe_out[key][p.name].append(fn(feats[p.name], labels))
                    for name in group.blocks:
                        before, after = self.block_probes[name]
                        for key, fn in block_fns.items():
                            block_out[key][name].append(fn(feats[before], feats[after], labels))
                    for pair in group.spans:
                        for key, name, fn in by_pair.get(pair, ()):
                            block_out[key][name].append(fn(feats[pair[0]], feats[pair[1]], labels))
                    last = group.probes[-1].name
                    read = {last: feats[last]} if last in feats else {}
                    del feats
                    if bar:
                        bar.advance(task)
        return probe_out, block_out

    @no_grad
    def collect(self, x: torch.Tensor, probes: list[Probe],
                resume_from: tuple[Probe, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Features at ``probes`` for all of ``x``, ``micro_batch`` samples per forward. With
        ``resume_from=(probe, features of x at it)``, passes resume there instead of at the image
        (when this model allows it), and the held features may be overwritten by the new ones."""
        start = resume_from if resume_from is not None and self.resume and self._can_resume(resume_from[0], probes) else None
        self.passes.append(StreamPass(tuple(p.name for p in probes), start[0].name if start else None))
        return self._collect(x, probes, start)

    def _collect(self, x: torch.Tensor, probes: list[Probe],
                 start: tuple[Probe, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        n = len(x)
        reused = _reuses(start[0], probes) if start is not None else None
        buffers = {p.name: (start[1] if start is not None and p.name in (start[0].name, reused)
                            else torch.empty(n, p.numel, dtype=torch.float32, device=self.device))
                   for p in probes}
        offset = 0
        for chunk in x.split(self.micro_batch):
            rows = slice(offset, offset + len(chunk))
            held = None
            if start is not None:
                # A view: when the first new probe reuses this buffer, its rows are read by the
                # resumed forward before that probe's features are written over them.
                held = start[1][rows].reshape(len(chunk), *start[0].shape)
            self._forward(chunk, probes, {p.name: buffers[p.name][rows] for p in probes},
                          start[0] if start else None, held)
            offset += len(chunk)
        return buffers

    def _forward(self, chunk: torch.Tensor, probes: list[Probe], out: dict[str, torch.Tensor],
                 resume_at: Probe | None, held: torch.Tensor | None) -> None:
        remaining = {p.name for p in probes}

        def store(p: Probe, t: torch.Tensor) -> None:
            if p.name in remaining:
                out[p.name].copy_(t.detach().reshape(len(t), -1))
                remaining.discard(p.name)
                if not remaining:
                    raise _StopForward

        rows = len(chunk)
        after = {p.site: (lambda m, args, o, p=p: store(p, main_tensor(o, rows))) for p in probes if p.where == "out"}
        before = {p.site: (lambda m, args, p=p: store(p, main_tensor(args, rows))) for p in probes if p.where == "in"}
        skip = self._skipping(resume_at, held, len(chunk)) if resume_at is not None else nullcontext()
        with eval_mode(self.model), skip, forward_hooks(self.model, after=after, before=before):
            try:
                if remaining:
                    self.model(chunk.to(self.device))
            except _StopForward:
                pass

    # -- resuming ---------------------------------------------------------------------------------
    def _trace_calls(self) -> dict[str, _Call]:
        """Every module's place in the call order of one forward pass over the example: its first
        start, its last end, how often it was called and its last output (a tensor, else None)."""
        if self._calls is None:
            calls: dict[str, _Call] = {}
            for call in trace_calls(self.model, self.example.to(self.device), outputs=True):
                if not call.name:
                    continue  # the model itself
                seen = calls.setdefault(call.name, _Call(call.start))
                seen.calls += 1
                if call.end > seen.end:  # the call that ended last
                    seen.end = call.end
                    seen.output = call.output if isinstance(call.output, torch.Tensor) else None
            self._calls = calls
        return self._calls

    def _skipped(self, at: Probe) -> list[str] | None:
        """The outermost modules that finish before ``at`` is read (``at``'s own site included when
        it is read at the output), or ``None`` when they cannot be skipped safely."""
        calls = self._trace_calls()
        site = calls.get(at.site)
        if site is None or site.calls != 1:
            return None
        limit = site.end if at.where == "out" else site.start
        chosen: list[str] = []
        for name, call in sorted(calls.items(), key=lambda kv: kv[1].start):
            if call.start > limit:
                break
            if call.end > limit:
                continue  # an ancestor of the site: it runs, its children before the site do not
            if any(name.startswith(c + ".") for c in chosen):
                continue  # inside a module already skipped
            if call.calls != 1 or call.output is None or "forward" in vars(self.model.get_submodule(name)):
                return None
            chosen.append(name)
        return chosen

    @contextmanager
    def _skipping(self, at: Probe, held: torch.Tensor, rows: int) -> Iterator[None]:
        """Modules before ``at`` return zeros of their traced shape; ``held`` goes where ``at`` is."""
        calls = self._trace_calls()
        skipped = self._skipped(at) or []
        patched = []
        try:
            for name in skipped:
                module = self.model.get_submodule(name)
                if name == at.site:  # read at the output: the held features are that output
                    module.forward = lambda *a, **k: held
                else:
                    shape, traced = (rows, *calls[name].output.shape[1:]), calls[name].output
                    module.forward = lambda *a, _s=shape, _t=traced, **k: torch.zeros(_s, dtype=_t.dtype, device=_t.device)
                patched.append(module)
            if at.where == "in":
                with forward_hooks(self.model, before={at.site: lambda m, args: (held, *args[1:])}):
                    yield
            else:
                yield
        finally:
            for module in patched:
                del module.forward

    def _can_resume(self, at: Probe, probes: list[Probe]) -> bool:
        """Whether a pass reading ``probes`` may resume at ``at``: the modules before it can be
        skipped, and on the example the resumed pass reads the same features there as a plain one."""
        key = (at.name, tuple(p.name for p in probes))
        if key not in self._resumable:
            self._resumable[key] = self._skipped(at) is not None and self._same_when_resumed(at, probes)
        return self._resumable[key]

    def _same_when_resumed(self, at: Probe, probes: list[Probe]) -> bool:
        plain = self._collect(self.example, [at, *(p for p in probes if p.name != at.name)], None)
        try:  # the same path a stream pass takes, buffer reuse included
            resumed = self._collect(self.example, probes, (at, plain[at.name].clone()))
        except Exception:  # anything at all: this model's forward does not allow skipping there
            return False
        return all(torch.allclose(plain[k], resumed[k], rtol=1e-5, atol=1e-6) for k in resumed)


def _reuses(held: Probe, probes: list[Probe]) -> str | None:
    """The probe whose features may be written into the held probe's buffer: the first one read
    after it, when it has the same size (memory then stays at one buffer per probe)."""
    if any(p.name == held.name for p in probes) or not probes:
        return None
    first = probes[0]
    return first.name if first.numel == held.numel else None


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)

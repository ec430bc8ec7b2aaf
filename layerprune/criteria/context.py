"""What every criterion scores with: the model, its blocks, calibration samples, and a feature
stream that computes each probe point's features once and hands them to every statistic asked for.

Probe points are the tensors between blocks: the input of the first block (the stem's output, or
the image itself), every block's output, and a block's input when something (a pooling layer,
a stage transition) sits between it and the previous block. Each block has a probe before and a
probe after it; neighbouring blocks share one.

Memory: a calibration batch's features at one probe are ``samples × features`` floats (ResNet-56,
500 CIFAR samples, first stage: 33 MB). The stream holds at most ``memory_budget`` bytes of them:
blocks are grouped so that each group's probes fit, and each group gets its own (early-stopped)
forward pass. Statistics reduce features to something small (a number, an ``N × N`` Gram matrix
at most) before the next group runs, so no criterion ever holds every layer's features at once.

>>> ctx = ScoringContext(model, build_dataset("digits"), samples=100, batches=2)  # doctest: +SKIP
>>> q = ctx.feature_stats(probe={"q": lambda f, y: modularity(f, y)})  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset

from layerprune.data.base import DatasetBundle
from layerprune.errors import LayerpruneError
from layerprune.surgery.blocks import Block, find_blocks
from layerprune.train.loops import EvalResult, evaluate, repair_batchnorm

ProbeStat = Callable[[torch.Tensor, torch.Tensor], Any]
BlockStat = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]
Pair = tuple[torch.Tensor, torch.Tensor]

SPLITS = ("val", "test", "train")


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
class _Group:
    probes: list[Probe]
    blocks: list[str]


class _StopForward(Exception):
    """Raised by a hook once a group's last probe is read: the rest of the forward is not needed."""


def as_dataset(data: Any, split: str) -> Dataset:
    """A dataset from a :class:`DatasetBundle` (its ``split``), a ``Dataset`` or ``(images, labels)``."""
    if isinstance(data, DatasetBundle):
        return data.split(split)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(data[0], data[1])
    if isinstance(data, Dataset):
        return data
    raise LayerpruneError(
        f"calibration data must be a DatasetBundle, a Dataset or (images, labels), got {type(data).__name__}"
    )


def load_samples(ds: Dataset, idx: torch.Tensor) -> Pair:
    """Samples ``idx`` of ``ds`` as one batch, using the dataset's batched access when it has one."""
    if hasattr(ds, "batch"):
        return ds.batch(idx)
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx], ds.tensors[1][idx]
    items = [ds[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def draw_batches(n: int, samples: int, batches: int, seed: int) -> list[torch.Tensor]:
    """``batches`` index sets of ``samples``: disjoint when ``n`` allows, else independent draws;
    a single batch of everything when the split has no more than ``samples``."""
    if n < 2:
        raise LayerpruneError(f"calibration needs at least 2 samples, the split has {n}")
    g = torch.Generator().manual_seed(seed)
    if samples >= n:
        return [torch.arange(n)]
    size = samples
    if size * batches <= n:
        perm = torch.randperm(n, generator=g)
        return [perm[i * size:(i + 1) * size].sort().values for i in range(batches)]
    return [torch.randperm(n, generator=g)[:size].sort().values for _ in range(batches)]


class ScoringContext:
    """The model, its blocks and calibration data, shared by the criteria that score it.

    Calibration samples default to ``split="val"``, a held-out part of the training data: the
    blocks are then chosen without looking at the data the pruned model is finally tested on.
    The paper scored on the test set; ``split="test"`` replicates that.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        blocks: list[Block] | None = None,
        samples: int = 500,
        batches: int = 5,
        split: str = "val",
        seed: int = 0,
        micro_batch: int = 256,
        memory_budget: int = 1 << 30,
        repair_batches: int = 5,
        repair_batch_size: int = 128,
        probes: Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise LayerpruneError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        for key, value in (("samples", samples), ("batches", batches), ("micro_batch", micro_batch)):
            if int(value) < 1:
                raise LayerpruneError(f"{key}: must be ≥ 1, got {value}")
        self.model = model
        self.data = data
        self.split = split
        self.seed = seed
        self.micro_batch = micro_batch
        self.memory_budget = memory_budget
        self.repair_batch_count = repair_batches
        self.repair_batch_size = repair_batch_size
        self.progress = progress
        self.dataset = as_dataset(data, split)
        self.indices = draw_batches(len(self.dataset), samples, batches, seed)
        self._batches: list[Pair] | None = None
        self._repair: list[Pair] | None = None
        self._probe_cache: dict[str, dict[str, list[Any]]] = {}
        self._block_cache: dict[str, dict[str, list[Any]]] = {}
        example = self.batch(0)[0][:2].to(self.device)
        self.example_input = example[:1]
        self.blocks = blocks if blocks is not None else find_blocks(model, self.example_input)
        self._trace_probes(example, probes)

    # -- data ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def samples(self) -> int:
        return len(self.indices[0])

    @property
    def num_batches(self) -> int:
        return len(self.indices)

    def batch(self, i: int) -> Pair:
        """Calibration batch ``i`` as ``(images, labels)``."""
        if self._batches is None:
            self._batches = [load_samples(self.dataset, idx) for idx in self.indices]
        return self._batches[i]

    def batches(self) -> list[Pair]:
        return [self.batch(i) for i in range(self.num_batches)]

    def micro_batches(self) -> list[Pair]:
        """The calibration samples cut to ``micro_batch``-sized pieces (for evaluation loops)."""
        out = []
        for x, y in self.batches():
            out.extend(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        return out

    def repair_data(self) -> list[Pair]:
        """A few training batches (no augmentation needed) for re-estimating BatchNorm statistics;
        the calibration samples themselves when the data has no training split."""
        if self._repair is None:
            if isinstance(self.data, DatasetBundle):
                train = self.data.train
                idx = draw_batches(len(train), self.repair_batch_size, self.repair_batch_count, self.seed + 1)
                with torch.random.fork_rng(devices=[]):  # augmentation draws: the same every time
                    torch.manual_seed(self.seed + 1)
                    self._repair = [load_samples(train, i) for i in idx]
            else:
                self._repair = self.micro_batches()
        return self._repair

    def evaluate(self, model: nn.Module | None = None) -> EvalResult:
        """Loss and accuracy of ``model`` (default: the scored model) on the calibration samples."""
        return evaluate(self.model if model is None else model, self.micro_batches())

    def track(self, items: Sequence[Any], description: str) -> Any:
        """``items``, with a progress bar when the context was built with ``progress=True``."""
        if not self.progress:
            return iter(items)
        from rich.progress import track

        return track(items, description=description, transient=True)

    def repair(self, model: nn.Module) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics on :meth:`repair_data`, in place."""
        return repair_batchnorm(model, self.repair_data())

    # -- blocks and probes --------------------------------------------------------------------
    @property
    def scorable(self) -> list[Block]:
        """Blocks inside stages that run on one tensor: the ones criteria score."""
        names = set(self.block_probes)
        return [b for b in self.blocks if b.name in names]

    def _trace_probes(self, example: torch.Tensor, probe_sites: Sequence[str] | None) -> None:
        self.probes: list[Probe] = []
        self.block_probes: dict[str, tuple[str, str]] = {}
        if probe_sites is not None:
            self._trace_sites(example, list(probe_sites))
            return
        stage_blocks = [b for b in self.blocks if b.stage and b.in_shape and b.out_shape]
        seen: dict[int, str] = {}
        # Holding every traced tensor keeps them alive, so their ids stay unique.
        records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = []
        for b in stage_blocks:
            def hook(module, args, output, name=b.name):
                if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                    records[name] = (args[0], output)
            handles.append(self.model.get_submodule(b.name).register_forward_hook(hook))
        try:
            self._forward(example)
        finally:
            for h in handles:
                h.remove()
        for b in stage_blocks:
            if b.name not in records:
                continue
            x, y = records[b.name]
            if id(x) not in seen:
                name = "input" if x is example else "stem" if not self.probes else f"{b.name}:in"
                seen[id(x)] = name
                self.probes.append(Probe(name, b.name, "in", tuple(x.shape[1:])))
            seen[id(y)] = b.name
            self.probes.append(Probe(b.name, b.name, "out", tuple(y.shape[1:])))
            self.block_probes[b.name] = (seen[id(x)], b.name)

    def _trace_sites(self, example: torch.Tensor, sites: list[str]) -> None:
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []
        for site in sites:
            try:
                module = self.model.get_submodule(site)
            except AttributeError:
                raise LayerpruneError(f"probe {site!r}: no such module in {type(self.model).__name__}") from None
            def hook(m, args, out, site=site) -> None:  # returning a value would replace the output
                shapes.setdefault(site, tuple(out.shape[1:]))

            handles.append(module.register_forward_hook(hook))
        try:
            self._forward(example)
        finally:
            for h in handles:
                h.remove()
        for site in sites:
            if site not in shapes:
                raise LayerpruneError(f"probe {site!r}: not called in the forward pass")
            self.probes.append(Probe(site, site, "out", shapes[site]))

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> Any:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(x.to(self.device))
        finally:
            self.model.train(was_training)

    def _groups(self, pairs: bool = True) -> list[_Group]:
        """Probes cut into groups whose features fit the budget. With ``pairs``, each block's
        probes before and after it land in one group (block statistics need both)."""
        n = self.samples
        by_name = {p.name: p for p in self.probes}
        units = ([(b, [by_name[before], by_name[after]]) for b, (before, after) in self.block_probes.items()]
                 if pairs else [(None, [p]) for p in self.probes])
        groups: list[_Group] = []
        for block, need in units:
            if groups:
                current = groups[-1]
                extra = [p for p in need if p not in current.probes]
                if sum(p.numel for p in current.probes + extra) * n * 4 <= self.memory_budget:
                    current.probes.extend(extra)
                    current.blocks.extend([block] if block else [])
                    continue
            groups.append(_Group(list(need), [block] if block else []))
        largest = max((sum(p.numel for p in g.probes) * n * 4 for g in groups), default=0)
        if largest > self.memory_budget:
            warnings.warn(f"memory_budget ({self.memory_budget / 2**30:.2f} GiB) is below what one "
                          f"{'block' if pairs else 'probe'} needs at {n} samples "
                          f"({largest / 2**30:.2f} GiB); using that", ResourceWarning, stacklevel=3)
        return groups

    # -- the stream ---------------------------------------------------------------------------
    def feature_stats(
        self,
        probe: dict[str, ProbeStat] | None = None,
        block: dict[str, BlockStat] | None = None,
    ) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
        """Per-probe and per-block statistics, one value per calibration batch.

        ``probe`` maps a key to ``fn(features (N, D) float32, labels (N,))``; ``block`` maps a key
        to ``fn(features_in, features_out, labels)``. Results are cached by key, so criteria
        that share a statistic (and several criteria scored together) read the features once.
        Returns ``({key: {probe: [value per batch]}}, {key: {block: [value per batch]}})``.
        """
        probe = {k: fn for k, fn in (probe or {}).items() if k not in self._probe_cache}
        block = {k: fn for k, fn in (block or {}).items() if k not in self._block_cache}
        if block and not self.block_probes:
            raise LayerpruneError("block statistics need block probes (probes=None)")
        if probe or block:
            self._stream(probe, block)
        return self._probe_cache, self._block_cache

    def _stream(self, probe_fns: dict[str, ProbeStat], block_fns: dict[str, BlockStat]) -> None:
        for key in probe_fns:
            self._probe_cache[key] = {p.name: [] for p in self.probes}
        for key in block_fns:
            self._block_cache[key] = {b: [] for b in self.block_probes}
        groups = self._groups(pairs=bool(block_fns))
        progress = _progress(self.progress)
        with progress as bar:
            task = bar.add_task("features", total=self.num_batches * len(groups)) if bar else None
            for b in range(self.num_batches):
                x, y = self.batch(b)
                done: set[str] = set()
                for group in groups:
                    # A probe that an earlier group already handed to the probe statistics is
                    # read again only when a block statistic needs it.
                    wanted = group.probes if group.blocks else [p for p in group.probes if p.name not in done]
                    feats = self._collect(x, wanted)
                    labels = y.to(self.device)
                    for p in group.probes:
                        if p.name in done:
                            continue
                        done.add(p.name)
                        for key, fn in probe_fns.items():
                            self._probe_cache[key][p.name].append(fn(feats[p.name], labels))
                    for name in group.blocks:
                        before, after = self.block_probes[name]
                        for key, fn in block_fns.items():
                            self._block_cache[key][name].append(fn(feats[before], feats[after], labels))
                    del feats
                    if bar:
                        bar.advance(task)

    @torch.no_grad()
    def _collect(self, x: torch.Tensor, probes: list[Probe]) -> dict[str, torch.Tensor]:
        """Features at ``probes`` for all of ``x``, forwarding ``micro_batch`` samples at a time."""
        n = len(x)
        buffers = {p.name: torch.empty(n, p.numel, dtype=torch.float32, device=self.device) for p in probes}
        offset = [0]
        remaining: set[str] = set()

        def store(p: Probe, t: torch.Tensor) -> None:
            if p.name in remaining:
                rows = len(t)
                buffers[p.name][offset[0]:offset[0] + rows].copy_(t.detach().reshape(rows, -1))
                remaining.discard(p.name)
                if not remaining:
                    raise _StopForward

        handles = []
        for p in probes:
            module = self.model.get_submodule(p.site)
            if p.where == "in":
                handles.append(module.register_forward_pre_hook(lambda m, args, p=p: store(p, args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, p=p: store(p, out)))
        was_training = self.model.training
        self.model.eval()
        try:
            for chunk in x.split(self.micro_batch):
                remaining.update(buffers)
                try:
                    self.model(chunk.to(self.device))
                except _StopForward:
                    pass
                offset[0] += len(chunk)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        return buffers


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


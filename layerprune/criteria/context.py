"""What every criterion scores with: the model, its blocks, the calibration samples
(:class:`~layerprune.calibration.Calibration`), the BatchNorm repair
(:class:`~layerprune.calibration.Repair`) and a feature stream
(:class:`~layerprune.criteria.stream.FeatureStream`) that reads each probe point once for every
statistic asked for.

>>> ctx = ScoringContext(model, build_dataset("digits"), samples=100, batches=2)  # doctest: +SKIP
>>> q = ctx.feature_stats(probe={"q": lambda f, y: modularity(f, y)})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from layerprune.lazy import lazy_import
from layerprune.calibration import MICRO_BATCH, Calibration, Pack, Pair, Repair, draw_batches, micro_batches
from layerprune.errors import LayerpruneError
from layerprune.params import is_count
from layerprune.evaluation import EvalResult, model_device
from layerprune.tasks import IMAGE_CLASSIFICATION, Task, top_next_tokens
from layerprune.surgery.blocks import Block
from layerprune.criteria.replay import Prefix
from layerprune.criteria.stream import BlockStat, FeatureStream, Probe, ProbeStat, trace_probes

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

__all__ = ["BlockStat", "Probe", "ProbeStat", "ScoringContext", "draw_batches"]


class ScoringContext:
    """The model, its blocks, calibration data and repair batches, shared by the criteria that score it.

    ``calibration`` says which samples (default :class:`Calibration`: 5 × 500 from ``val``, a
    held-out part of the training data, so blocks are chosen without looking at the data the pruned
    model is finally tested on); ``samples``, ``batches``, ``split`` and ``seed`` override its fields.
    ``repair`` is what criteria that evaluate changed copies (``ablation``, ``sr_init``) re-estimate
    BatchNorm statistics with: the same batches the pruner repairs the pruned model with.
    ``protect`` and ``collapse`` are the selection's constraints, for criteria that plan removals
    themselves (``greedy``). ``replay_memory`` bounds, in bytes, the outputs the oracles keep to
    compute the network before a changed block once (:mod:`~layerprune.criteria.replay`; default
    ``None``: half the free memory of the model's device). ``pack`` is what a pruner drew from
    ``data`` already (:class:`~layerprune.calibration.Pack`, with this context's calibration and
    repair): its samples are used as they are; without it the task draws one.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        calibration: Calibration | None = None,
        repair: Repair | None = None,
        blocks: list[Block] | None = None,
        samples: int | None = None,
        batches: int | None = None,
        split: str | None = None,
        seed: int | None = None,
        micro_batch: int = MICRO_BATCH,
        memory_budget: int = 1 << 30,
        replay_memory: int | None = None,
        probes: Sequence[str] | None = None,
        progress: bool = False,
        protect: Sequence[str] = (),
        collapse: bool = False,
        level: str = "block",
        task: Task | None = None,
        pack: Pack | None = None,
    ) -> None:
        self.task = task or IMAGE_CLASSIFICATION
        overrides = {k: v for k, v in (("samples", samples), ("batches", batches), ("split", split),
                                       ("seed", seed)) if v is not None}
        self.calibration = dataclasses.replace(calibration or Calibration(), **overrides)
        self.repair_policy = repair or Repair()
        if not is_count(micro_batch):
            raise LayerpruneError(f"micro_batch: must be ≥ 1, got {micro_batch}")
        self.model = model
        self.data = data
        self.micro_batch = micro_batch
        self.replay_memory = None if replay_memory is None else int(replay_memory)
        self.progress = progress
        # The selection's constraints, for criteria that plan removals themselves (greedy).
        self.protect, self.collapse = tuple(protect), bool(collapse)
        self.pack = pack or Pack.of(self.task, data, self.calibration, self.repair_policy)
        self.dataset = self.pack.dataset
        self.indices = self.pack.indices
        self._probe_cache: dict[str, dict[str, list[Any]]] = {}
        self._block_cache: dict[str, dict[str, list[Any]]] = {}
        self._ranks: dict[int, torch.Tensor] = {}
        example = self.batch(0)[0][:2].to(self.device)
        self.example_input = example[:1]
        if blocks is None:
            from layerprune.surgery.find import find_blocks

            blocks = find_blocks(model, self.example_input, level=level)
        self.blocks = blocks
        self.probes, self.block_probes = trace_probes(model, self.blocks, example, probes)
        self.stream = FeatureStream(model, self.probes, self.block_probes, example, micro_batch=micro_batch,
                                    memory_budget=memory_budget, progress=progress)

    # -- data ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def split(self) -> str:
        return self.calibration.split

    @property
    def seed(self) -> int:
        return self.calibration.seed

    @property
    def samples(self) -> int:
        return len(self.indices[0])

    @property
    def num_batches(self) -> int:
        return len(self.indices)

    def batch(self, i: int) -> Pair:
        """Calibration batch ``i`` as ``(images, labels)``."""
        return self.pack.calibration[i]

    def batches(self) -> list[Pair]:
        return [self.batch(i) for i in range(self.num_batches)]

    def micro_batches(self) -> list[Pair]:
        """The calibration samples cut to ``micro_batch``-sized pieces (for evaluation loops)."""
        return micro_batches(self.batches(), self.micro_batch)

    @property
    def repairs(self) -> bool:
        """Whether changed copies are repaired: the repair is on and the task re-estimates BatchNorm."""
        return self.repair_policy.enabled and self.task.repairs

    def repair_data(self) -> list[Pair]:
        """The repair batches (:meth:`Repair.batches_for`); the calibration samples themselves
        when the data has no training split; none when the context does not :attr:`repair`."""
        return self.pack.repair

    def evaluate(self, model: nn.Module | None = None, until: Any = None) -> EvalResult | None:
        """Loss and accuracy of ``model`` (default: the scored model) on the calibration samples,
        as the context's task measures them (``until``: see :meth:`~layerprune.tasks.Task.evaluate`)."""
        return self.task.evaluate(self.model if model is None else model, self.micro_batches(), until=until)

    def prefix(self, blocks: Sequence[str]) -> Prefix:
        """What each of ``blocks`` may replay of the model before it (see
        :mod:`~layerprune.criteria.replay`), within ``replay_memory`` bytes."""
        return Prefix(self.model, self.example_input, blocks, self.replay_memory)

    def repair(self, model: nn.Module) -> nn.Module:
        """Re-estimate ``model``'s BatchNorm statistics on :meth:`repair_data`, in place (nothing
        when the repair is disabled)."""
        return self.repair_policy.apply(model, self.repair_data()) if self.repairs else model

    def track(self, items: Sequence[Any], description: str) -> Any:
        """``items``, with a progress bar when the context was built with ``progress=True``."""
        if not self.progress:
            return iter(items)
        from rich.progress import track

        return track(items, description=description, transient=True)

    # -- blocks and features ------------------------------------------------------------------
    @property
    def scorable(self) -> list[Block]:
        """Blocks inside stages that run on one tensor: the ones criteria score."""
        names = set(self.block_probes)
        return [b for b in self.blocks if b.name in names]

    def runs(self, n: int) -> dict[str, tuple[str, ...]]:
        """Every run of ``n`` consecutive scorable blocks inside one stage, by its first block:
        ``{"layer2.3": ("layer2.3", "layer2.4")}`` for ``n=2``. Consecutive means each block reads
        the tensor the one before it wrote (nothing sits between them)."""
        if not is_count(n):
            raise LayerpruneError(f"n: must be an integer ≥ 1, got {n!r}")
        stages: dict[str, list[str]] = {}
        for b in self.scorable:
            if b.stage:
                stages.setdefault(b.stage, []).append(b.name)
        out: dict[str, tuple[str, ...]] = {}
        for names in stages.values():
            for i in range(len(names) - n + 1):
                run = tuple(names[i:i + n])
                if all(self.block_probes[a][1] == self.block_probes[b][0] for a, b in zip(run, run[1:])):
                    out[run[0]] = run
        return out

    def run_probes(self, n: int) -> dict[str, tuple[str, str]]:
        """Per run of ``n`` blocks (by its first block): the probe before it and the probe after it."""
        return {first: (self.block_probes[run[0]][0], self.block_probes[run[-1]][1])
                for first, run in self.runs(n).items()}

    def _as_viewed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` given the rows of each batch its view asks for (:class:`~layerprune.tasks.View`;
        a classifier's samples whatever the view): the task decides what a row is."""
        view = getattr(fn, "view", None)
        if view is None or self.task.has_classes:
            return fn

        def on_rows(*args: Any) -> Any:
            features, labels = self.task.view(view, args[:-1], args[-1], self.next_token_ranks, self.seed)
            return fn(*features, labels)

        return on_rows

    def next_token_ranks(self, top: int) -> torch.Tensor:
        """Each token id's rank among the ``top`` most frequent next tokens of all calibration
        windows (0 = the most frequent), -1 for every other id."""
        if top not in self._ranks:
            self._ranks[top] = top_next_tokens(torch.cat([y for _, y in self.batches()]), top)
        return self._ranks[top]

    def feature_stats(
        self,
        probe: dict[str, ProbeStat] | None = None,
        block: dict[str, BlockStat] | None = None,
        runs: dict[str, tuple[int, BlockStat]] | None = None,
    ) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
        """Per-probe, per-block and per-run statistics, one value per calibration batch.

        ``probe`` maps a key to ``fn(features (N, D) float32, labels (N,))``; ``block`` maps a key
        to ``fn(features_in, features_out, labels)``; ``runs`` maps a key to ``(n, fn)``: ``fn`` of
        the features before and after each run of ``n`` blocks (:meth:`runs`). Results are cached
        by key, so criteria that share a statistic (and several criteria scored together) read the
        features once, in one pass. Returns ``({key: {probe: [value per batch]}}, {key: {block:
        [value per batch]}})``; a run's values are under its key, by the run's first block.
        """
        probe = {k: self._as_viewed(fn) for k, fn in (probe or {}).items() if k not in self._probe_cache}
        block = {k: self._as_viewed(fn) for k, fn in (block or {}).items() if k not in self._block_cache}
        spans = {k: (self.run_probes(n), self._as_viewed(fn)) for k, (n, fn) in (runs or {}).items()
                 if k not in self._block_cache}
        if (block or spans) and not self.block_probes:
            raise LayerpruneError("block statistics need block probes (probes=None)")
        if probe or block or spans:
            probe_out, block_out = self.stream.run(self.batches(), probe, block, spans)
            self._probe_cache.update(probe_out)
            self._block_cache.update(block_out)
        return self._probe_cache, self._block_cache

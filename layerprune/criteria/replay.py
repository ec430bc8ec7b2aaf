"""Run only what a change can reach: the oracles (``ablation``, ``sr_init``, ``cka_removal``,
``modularity_removal``, ``greedy``) change one block at a time, and everything the network
computes before that block is the same for every candidate. :class:`Prefix` computes it once.

One forward pass on an example sample traces the module calls: for each candidate block, which
calls have finished before the block starts, at the outermost level (the stem, earlier stages,
the earlier blocks of its own stage: the completed children of the calls the block runs inside).
A recorded run of the reference model keeps those calls' outputs, pass by pass (every repair
batch, every calibration batch). A candidate's run then makes them return their recorded outputs
instead of computing: only the changed block and what follows it run.

The answer is the same as a full run's, number for number: a replayed call gets the same input
as in the reference, so it would compute the same output. That includes BatchNorm repair. The
layers before the block see the same batches in every candidate, so their re-estimated
statistics would be the reference's; replayed, they are not needed at all (the model a replayed
run leaves behind has reset statistics in its replayed part: callers discard it). Any model
whose calls do not follow the traced order in a pass (a call missing, repeated, or a module
called more than once per pass) raises :class:`Mismatch` inside, and the candidate runs in full.

Memory: the recording keeps the input of every candidate (and the stem's outputs) for every
pass. A recording that outgrows ``budget`` bytes (default: half the free memory of the model's
device when the oracle starts; divided among the recordings held at once) is given up as it
runs, and every candidate runs in full.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from layerprune.lazy import lazy_import
from layerprune.hooks import forward_hooks, trace_calls

torch = lazy_import("torch")
nn = lazy_import("torch.nn")

FALLBACK_MEMORY = 4 << 30  # bytes assumed free where the free memory cannot be read


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the machine's available memory
    (``MemAvailable`` of ``/proc/meminfo``); 4 GiB where neither can be read."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError):
        pass
    return FALLBACK_MEMORY

Outputs = dict[str, list[Any]]  # module name → its output in every pass, in order


class Mismatch(RuntimeError):
    """A run did not call the replayed modules once per pass, as the traced model did."""


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value) if not hasattr(value, "_fields") else type(value)(*map(_clone, value))
    if isinstance(value, dict):
        return type(value)((k, _clone(v)) for k, v in value.items())
    return value


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _new_bytes(value: Any, held: set[int]) -> int:
    """Bytes of the storages under ``value`` not yet in ``held`` (which then holds them too)."""
    size = 0
    for t in _tensors(value):
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            held.add(storage.data_ptr())
            size += storage.nbytes()
    return size


def nbytes(outputs: Outputs) -> int:
    """Bytes held by ``outputs`` (a tensor kept under two names counted once)."""
    held: set[int] = set()
    return sum(_new_bytes(value, held) for values in outputs.values() for value in values)


class Prefix:
    """What each of ``blocks`` may replay in ``model``, and the reference model's recording.

    >>> prefix = Prefix(model, example, ["layer1.0", "layer2.3"])          # doctest: +SKIP
    >>> base = prefix.record(reference, measure)                           # full run, recorded
    >>> result, _ = prefix.run(lambda: changed_copy("layer2.3"), measure, "layer2.3")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, blocks: Iterable[str],
                 budget: int | None = None) -> None:
        calls = trace_calls(model, example)
        count: dict[str, int] = {}
        for c in calls:
            count[c.name] = count.get(c.name, 0) + 1
        # Only modules called once per pass are replayed or recorded: a call is then its name.
        self.calls = {c.name: c for c in calls if count[c.name] == 1}
        self.budget = int(budget) if budget is not None else free_memory(example.device) // 2
        self.replays: dict[str, tuple[str, ...]] = {}
        for block in blocks:
            call = self.calls.get(block)
            if call is None:
                continue
            stack, parent = set(), call.parent
            while parent is not None:
                stack.add(parent)
                parent = calls[parent].parent
            self.replays[block] = tuple(c.name for c in calls if c.parent in stack and count[c.name] == 1
                                        and c.end < call.start)
        # Recorded: whatever some candidate replays (``greedy`` replays the model it pruned so
        # far, whose outputs after the block it removed come from that candidate's run).
        self.kept = frozenset(n for names in self.replays.values() for n in names)
        self.outputs: Outputs | None = None
        self.mutated: set[str] = set()  # outputs a later layer changes in place: always copied
        self.replayed = 0  # candidate runs that replayed something
        self.full_runs = 0  # candidate runs that did not match the trace and ran again in full
        self.largest = 0  # bytes of the largest recording used
        self.over_budget = 0  # bytes a recording had reached when it was given up
        self.limit = self.budget  # bytes one recording may hold

    def record(self, model: nn.Module, fn: Callable[[nn.Module], Any], factor: int = 1) -> Any:
        """``fn(model)``, recording the outputs candidates replay. ``factor`` recordings (this
        one, and those of candidates kept at once) must fit in the budget: a recording that
        outgrows its share is given up as it runs (every candidate then runs in full)."""
        self.limit = self.budget // factor
        result, outputs, _ = self._run(model, fn, (), self.kept, safe=True, block=None)
        self.use(outputs)
        return result

    def use(self, outputs: Outputs | None) -> None:
        """Replay ``outputs`` from now on (``None``: nothing, every candidate runs in full)."""
        self.outputs = outputs
        if outputs is not None:
            self.largest = max(self.largest, nbytes(outputs))

    def summary(self) -> dict[str, Any]:
        """How the candidates ran, for a criterion's diagnostics."""
        return {"replayed": self.replayed, "full_runs": self.full_runs, "recording_mib": round(self.largest / 2**20, 1),
                "over_budget_mib": round(self.over_budget / 2**20, 1) if self.over_budget else None}

    def run(self, make: Callable[[], nn.Module], fn: Callable[[nn.Module], Any], block: str,
            keep: bool = False) -> tuple[Any, Outputs | None]:
        """``fn`` of the candidate ``make()`` (``block`` changed), replaying what finished before
        ``block``; a run that does not match the trace runs again in full. With ``keep``, also
        the candidate's recording: what it computed, and what it replayed or ran inside a
        replayed module (which ran before the block, with the input it had in the reference):
        the recording a run of the candidate as the new reference would make (``None`` when it
        outgrew the budget)."""
        replay = tuple(n for n in self.replays.get(block, ()) if self.outputs and n in self.outputs)
        record = self.kept.difference(replay) if keep else frozenset()
        if replay or record:
            try:
                result, recorded, replayed = self._run(make(), fn, replay, record, safe=False, block=block)
                self.replayed += bool(replayed)
                if keep and recorded is not None:  # what ran inside a replayed module ran there in the reference too
                    inside = [n for n in self.kept if n not in recorded and self.outputs.get(n)
                              and any(n == r or n.startswith(r + ".") for r in replayed)]
                    recorded.update({n: self.outputs[n] for n in inside})
                return result, recorded
            except Mismatch:
                self.full_runs += 1
        result, recorded, _ = self._run(make(), fn, (), self.kept if keep else frozenset(), safe=True, block=block)
        return result, recorded

    def _run(self, model: nn.Module, fn: Callable[[nn.Module], Any], replay: tuple[str, ...],
             record: frozenset[str], safe: bool, block: str | None) -> tuple[Any, Outputs | None, tuple[str, ...]]:
        """``fn(model)`` with ``replay`` returning their recorded outputs and ``record``'s kept;
        returns its result, what it recorded (``None`` once it held more than ``self.limit``
        bytes: it stops recording then) and which modules it replayed.

        The trace is only a plan; what makes a replay right is checked in every pass: each
        replayed module is called once, before ``block`` starts (so with the input it had in the
        reference, which ran the same code up to there), and no replayed tensor is changed in
        place. Anything else is a :class:`Mismatch`. ``safe`` (the reference's run, a run after
        a mismatch) never raises: it copies every output it keeps, leaves out of its recording
        a module called more than once in a pass, and learns which outputs a later layer
        changes in place (an in-place activation after a BatchNorm). Otherwise only those are
        copied, the others kept as they are, and a pass that changes a kept tensor is a
        mismatch too (one that changes a replayed tensor also drops the recording).
        """
        present = {n for n, _ in model.named_modules()}
        replay = tuple(n for n in replay if n in present)
        record = frozenset(n for n in record if n in present)
        recorded: Outputs = {n: [] for n in record}
        passes = [-1]
        began = [False]  # whether ``block`` has started in this pass
        over = [False]  # whether the recording outgrew the limit (and was given up)
        broken: set[str] = set()  # safe: called more than once in a pass, not recorded
        called: set[str] = set()
        watched: list[tuple[str, torch.Tensor, int]] = []  # tensors of this pass, as they were
        copies: dict[int, tuple[torch.Tensor, int, Any]] = {}  # safe: this pass's copies, by original
        saved: dict[str, Any] = {}
        outputs = self.outputs or {}
        total = min((len(outputs[n]) for n in replay), default=0)

        def start(module, args):
            if called:
                raise Mismatch("a pass began inside another")
            passes[0] += 1
            if replay and passes[0] >= total:
                raise Mismatch(f"more passes than the {total} recorded")

        def end(module, args, out):
            if len(called) != len(replay):
                raise Mismatch(f"{len(replay) - len(called)} replayed modules not called in pass {passes[0]}")
            changed = {name for name, t, version in watched if t._version != version}
            watched.clear()
            called.clear()
            copies.clear()
            began[0] = False
            if safe:
                self.mutated |= changed
            elif changed & set(replay):
                self.outputs = None
                raise Mismatch(f"a replayed output was changed in place ({sorted(changed)[0]}): recording dropped")
            elif changed:
                raise Mismatch(f"{sorted(changed)[0]}'s output was changed in place")

        def replayed(name: str):
            def forward(*args: Any, **kwargs: Any) -> Any:
                if name in called:
                    raise Mismatch(f"{name} called twice in a pass")
                if began[0]:
                    raise Mismatch(f"{name} called after {block} started")
                called.add(name)
                out = outputs[name][passes[0]]
                watched.extend((name, t, t._version) for t in _tensors(out))
                return out
            return forward

        held: set[int] = set()  # the storages the recording holds, and their bytes in all
        size = [0]

        def hold(value: Any) -> None:
            size[0] += _new_bytes(value, held)
            if size[0] > self.limit:
                self.over_budget = max(self.over_budget, size[0])
                over[0] = True
                recorded.clear()

        def keep(name: str):
            def fn(module, args, out):
                if over[0]:
                    return
                values = recorded[name]
                if len(values) != passes[0] or name in broken:
                    if not safe:
                        raise Mismatch(f"{name} called twice in a pass")
                    broken.add(name)
                    return
                if not safe and name not in self.mutated:
                    watched.extend((name, t, t._version) for t in _tensors(out))
                    values.append(out)
                    hold(out)
                    return
                watched.extend((name, t, t._version) for t in _tensors(out))
                # A module that passes its input on (an identity, a container) shares the copy
                # of the tensor it returns, unless that was changed in place in between.
                seen = copies.get(id(out)) if isinstance(out, torch.Tensor) else None
                if seen is not None and seen[0] is out and seen[1] == out._version:
                    values.append(seen[2])
                    return
                copy = _clone(out)
                if isinstance(out, torch.Tensor):
                    copies[id(out)] = (out, out._version, copy)
                values.append(copy)
                hold(copy)
            return fn

        def begin(module, args):
            began[0] = True

        hooks_before = {"": start}
        if block is not None and block in present:
            hooks_before[block] = begin
        hooks_after = {n: keep(n) for n in record}  # the model itself is never recorded
        hooks_after[""] = end
        try:
            for name in replay:
                module = model.get_submodule(name)
                saved[name] = module.__dict__.get("forward")
                module.forward = replayed(name)
            with forward_hooks(model, before=hooks_before, after=hooks_after):
                result = fn(model)
        finally:
            for name, forward in saved.items():
                module = model.get_submodule(name)
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward
        if over[0]:
            return result, None, replay
        for name in broken.union(n for n, values in recorded.items() if not values):  # not called
            del recorded[name]
        return result, recorded, replay

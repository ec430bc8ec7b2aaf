"""torch.distributed as torchrun sets it up: join the group, know your rank, sum across ranks.

Nothing here starts processes: ``torchrun --nproc_per_node N -m layerprune run RECIPE`` does, and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Run alone
(no ``WORLD_SIZE`` or ``WORLD_SIZE=1``), every function is a no-op for one process.

Work that must happen once (scoring, surgery, writing files) runs through :func:`on_main`: rank 0
does it as if it were alone, the others wait, and an error on rank 0 stops every rank.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

from layerprune.errors import LayerpruneError
from layerprune.lazy import lazy_import

torch = lazy_import("torch")
dist = lazy_import("torch.distributed")  # the rank of a plain process is read without torch

T = TypeVar("T")

# Ranks wait at a collective while rank 0 scores and prunes alone, which can take long for big
# models and slow criteria; the default process-group timeout (10-30 min) would cut that short.
TIMEOUT_ENV = "LAYERPRUNE_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 180
# torch runs SyncBatchNorm on CUDA only: said by the training loop and by a recipe's preflight.
SYNC_BATCHNORM_ON_CPU = "SyncBatchNorm runs on CUDA devices only and this run trains on the CPU; set it to false"

_alone = 0  # > 0 inside `alone()`: this process acts as a single one


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; ``False`` when running as a single process.

    The backend is NCCL with CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return active()
    if launched_world_size() <= 1:
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    # torch._dynamo, imported once a group exists (timm imports it), keeps references to that group
    # for good, so destroy_process_group can no longer end it: its gloo threads then outlive the
    # interpreter, and one that frees a finished collective's tensors while Python shuts down takes
    # the GIL and aborts the rank (SIGABRT) after its work is done. Imported before the group, it
    # holds none. (Every run builds a timm model, so this costs no time.)
    importlib.import_module("torch._dynamo")
    try:
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=timedelta(minutes=minutes))
    except ValueError as exc:  # WORLD_SIZE set by hand, without the rest of torchrun's environment
        raise LayerpruneError(f"WORLD_SIZE={launched_world_size()} but {exc}; start several processes "
                              "with torchrun --nproc_per_node N -m layerprune ...") from None
    return True


def shutdown() -> None:
    """Leave the process group (when one exists) and end it, joining its backend's threads: a gloo
    worker still running when the interpreter exits can abort the process (see :func:`init_from_env`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True under torchrun with more than one process (and outside :func:`alone`)."""
    return _alone == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), even before
    the process group exists: for deciding who prints."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """How many processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process behaves as a single one: no DDP, no collectives (rank 0's solo work)."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone while the other ranks wait; every rank gets its result.

    The result must pickle. When ``fn`` raises on rank 0, rank 0 re-raises it and every other rank
    raises a :class:`LayerpruneError` with the same message and exit code, so the whole job stops
    instead of waiting for a rank that will never arrive.
    """
    if not active():
        return fn()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            with alone():
                payload[0] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - every failure must release the other ranks
            error = exc
            payload[0] = ("error", *_report(exc))
    dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    if payload[0][0] == "error":
        raise RankFailed(payload[0][1], payload[0][2])
    return payload[0][1]


def check_everywhere(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on every rank; if it raises on any rank, raise on all of them.

    For checks whose answer can differ between nodes (a data set present on one but not another).
    """
    if not active():
        fn()
        return
    error: BaseException | None = None
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        error = exc
    reports: list[Any] = [None] * dist.get_world_size()
    mine = None if error is None else _report(error)
    dist.all_gather_object(reports, mine)
    if error is not None:
        raise error
    failed = [(r, report) for r, report in enumerate(reports) if report is not None]
    if failed:
        r, (message, code) = failed[0]
        raise RankFailed(f"rank {r}: {message}", code)


def _report(exc: BaseException) -> tuple[str, int]:
    """What other ranks need of a failure: its message and exit code."""
    return str(exc) or type(exc).__name__, getattr(exc, "exit_code", 1)


class RankFailed(LayerpruneError):
    """Another rank failed; this one stops with the same message and exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_device(device: str | None = None) -> torch.device:
    """``device`` as a ``torch.device``, refusing ones this machine does not have.

    ``None`` or ``"auto"``: CUDA when available, else the CPU. Under torchrun each process takes
    the GPU of its ``LOCAL_RANK`` (for ``auto`` and plain ``cuda``).
    """
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LayerpruneError(f"device: {device!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LayerpruneError(f"device: {device!r} requested but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def sum_across(*values: float) -> list[float]:
    """Each value summed over all ranks (the values themselves when running alone)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def check_in_step(model: torch.nn.Module, what: str = "model") -> None:
    """Raise when the ranks hold different weights or buffers.

    DDP and :func:`broadcast_buffers` keep them equal; a layer that changes its state outside
    both (a plugin's custom buffer, say) would otherwise leave rank 0 saving a model the others
    never trained. Compares one checksum per tensor, to a relative 1e-5.
    """
    if not active():
        return
    state = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    names, mine = list(state), [float(t.detach().double().sum()) for t in state.values()]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for r, theirs in enumerate(everyone[1:], start=1):
        for name, a, b in zip(names, everyone[0], theirs):
            if abs(a - b) > 1e-5 * max(abs(a), abs(b), 1.0):
                raise LayerpruneError(f"{what}: rank {r} ended with a different {name} than rank 0 "
                                      f"(checksum {b:.6g} vs {a:.6g}); ranks fell out of step")


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP keeps parameters in step, but each rank updates its running statistics from its own last
    batch; after training, this makes the model the same everywhere (evaluation, checkpoints).
    """
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

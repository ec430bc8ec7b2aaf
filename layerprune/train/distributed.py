"""torch.distributed as torchrun sets it up: join the group, know your rank, sum across ranks.

Nothing here starts processes: ``torchrun --nproc_per_node N -m layerprune run RECIPE`` does, and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Run alone
(no ``WORLD_SIZE`` or ``WORLD_SIZE=1``), every function is a no-op for one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; ``False`` when running as a single process."""
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def sum_across(*values: float) -> list[float]:
    """Each value summed over all ranks (the values themselves when running alone)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP keeps parameters in step, but each rank updates its running statistics from its own last
    batch; after training, this makes the model the same everywhere (evaluation, checkpoints).
    """
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

"""Two processes on the gloo backend over loopback: the training loop under torch.distributed."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from layerprune import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_torchrun_would(rank: int, world: int, port: int) -> None:
    """This spawned process's environment, as torchrun sets it for rank ``rank`` of ``world``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    _as_torchrun_would(rank, world, port)
    torch.set_num_threads(1)
    from torch.utils.data.distributed import DistributedSampler

    import layerprune
    from layerprune.data import make_loader
    from layerprune.train import TrainSettings, train

    assert distributed.init_from_env()
    data = layerprune.build_dataset("digits").train.subset(range(256))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = make_loader(data, 32, sampler=sampler)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = layerprune.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    logs: list[str] = []
    history = train(model, loader, TrainSettings(epochs=2, lr=0.05), seed=0,
                    checkpoint_path=os.path.join(out, "ckpt.pt"), log=logs.append)
    sampler.set_epoch(1)
    torch.save({"state": model.state_dict(), "logs": logs, "seen": list(sampler),
                "history": [h.train_loss for h in history]}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_train_in_step_and_write_once(tmp_path):
    port = _free_port()
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # ranks end with identical weights
    assert set(r0["seen"]).isdisjoint(r1["seen"]) and len(r0["seen"]) == len(r1["seen"]) == 128
    assert len(r0["logs"]) == 2 and r1["logs"] == []  # only rank 0 reports
    assert r0["history"] == r1["history"]  # metrics are reduced across ranks
    assert (tmp_path / "ckpt.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "rank0.pt", "rank1.pt"]


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.sum_across(1.0, 2.0) == [1.0, 2.0]


def _coordination_worker(rank: int, world: int, port: int, out: str) -> None:
    _as_torchrun_would(rank, world, port)
    from layerprune.errors import LayerpruneError

    assert distributed.init_from_env()
    seen: dict[str, object] = {}
    ran_on = []
    seen["result"] = distributed.on_main(lambda: ran_on.append(rank) or {"from": distributed.rank()})
    seen["ran_on"] = ran_on
    with distributed.alone():
        seen["alone"] = (distributed.active(), distributed.world_size())
    seen["after"] = distributed.active()

    def fails_on_main():
        raise LayerpruneError("select.protect: unknown block 'nope'")

    try:
        distributed.on_main(fails_on_main)
    except LayerpruneError as exc:
        seen["main_error"] = (type(exc).__name__, str(exc), exc.exit_code)

    def fails_on_rank1():
        if distributed.rank() == 1:
            raise LayerpruneError("data: mnist5k: file missing on this node")

    try:
        distributed.check_everywhere(fails_on_rank1)
    except LayerpruneError as exc:
        seen["check_error"] = (type(exc).__name__, str(exc), exc.exit_code)

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(float(rank))  # ranks out of step on purpose
    try:
        distributed.check_in_step(model, "finetune")
    except LayerpruneError as exc:
        seen["step_error"] = str(exc)
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_rank0_work_errors_and_divergence_reach_every_rank(tmp_path):
    mp.start_processes(_coordination_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # on_main: rank 0 alone runs the work (as a single process), every rank gets its result
    assert r0["ran_on"] == [0] and r1["ran_on"] == []
    assert r0["result"] == r1["result"] == {"from": 0}
    assert r0["alone"] == r1["alone"] == (False, 1) and r0["after"] is r1["after"] is True
    # rank 0's error: its own exception there, the same message and exit code everywhere else
    assert r0["main_error"] == ("LayerpruneError", "select.protect: unknown block 'nope'", 2)
    assert r1["main_error"] == ("RankFailed", "select.protect: unknown block 'nope'", 2)
    # a check that fails on one rank only stops all of them, naming the rank
    assert r1["check_error"] == ("LayerpruneError", "data: mnist5k: file missing on this node", 2)
    assert r0["check_error"] == ("RankFailed", "rank 1: data: mnist5k: file missing on this node", 2)
    for r in (r0, r1):
        assert "rank 1 ended with a different weight" in r["step_error"]


def test_world_size_without_torchrun_environment_is_a_clear_error(monkeypatch):
    from layerprune.errors import LayerpruneError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(LayerpruneError, match=r"WORLD_SIZE=2 but .*MASTER_ADDR.*torchrun --nproc_per_node"):
        distributed.init_from_env()
    assert not distributed.active()


def _teardown_worker(rank: int, world: int, port: int, out: str) -> None:
    _as_torchrun_would(rank, world, port)
    torch.set_num_threads(1)
    import layerprune

    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731 - OS threads, the backend's included
    alone = threads()
    assert distributed.init_from_env()
    joined = threads()
    layerprune.create_model("cifar_resnet20", num_classes=10)  # imports timm, and with it torch._dynamo
    distributed.check_everywhere(lambda: None)
    distributed.shutdown()
    torch.save({"alone": alone, "joined": joined, "left": threads()}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_leaving_the_group_stops_its_threads(tmp_path):
    """A gloo group whose worker threads outlive the interpreter can abort the process at exit: a
    worker that frees a finished collective's tensors takes the GIL while Python shuts down, and
    the rank dies of SIGABRT after its work is done. ``shutdown`` must really end the group, even
    after timm (which imports torch._dynamo, which keeps references to a group that exists then)."""
    mp.start_processes(_teardown_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in (0, 1):
        seen = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert seen["joined"] > seen["alone"]  # the group's threads started ...
        assert seen["left"] == seen["alone"], seen  # ... and ended with it

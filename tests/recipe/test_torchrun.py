"""``torchrun --nproc_per_node 2 -m layerprune run``: two processes on gloo over loopback.

Score, select and prune run once on rank 0; both ranks finetune the pruned model under DDP; rank 0
alone prints and writes. (That the ranks end with identical weights is checked inside every run:
``train`` raises when they differ; tests/train/test_distributed.py shows the check firing.)
"""

import json
import os
import subprocess
import sys
import tempfile

from pathlib import Path

import pytest
import torch

from layerprune.lock import LOCK_FILE, holder

RECIPE = "recipes/quickstart.yaml"
TINY = ["--set", "pretrain.epochs=1", "--set", "finetune.epochs=2", "--set", "eval.latency=false",
        "--set", "data.calibration.batches=1"]


def torchrun(*args: str, cwd: str, watch=None) -> subprocess.CompletedProcess:
    """Two ranks of ``layerprune ARGS``; ``watch`` sees each line of their output as it comes."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "layerprune",
           *args]
    if watch is None:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                                stderr=err, text=True) as proc:
        stdout = []
        for line in proc.stdout:
            stdout.append(line)
            watch(line)
        proc.wait(timeout=300)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(stdout), err.read())


def test_two_ranks_run_a_recipe_and_write_once(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "runs" / "ddp"
    ranks = set()

    def watch(line: str) -> None:
        """While the job runs, its run directory's lock names rank 0's process (were every rank
        to lock it, rank 1 would be refused)."""
        if "▶ score" in line and (info := holder(out)):
            environ = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
            ranks.add(next(e for e in environ if e.startswith(b"RANK=")).decode())

    done = torchrun("run", RECIPE, *TINY, "--out", str(out), cwd=root, watch=watch)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ranks == {"RANK=0"} and not (out / LOCK_FILE).exists()  # one lock, released at the end
    # one job, one voice: every stage and epoch line and the summary appear once
    assert done.stdout.count("▶ finetune") == 1 and done.stdout.count("outputs in") == 1
    assert done.stdout.count("finetune epoch 2/2") == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # no second run directory
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["pretrain", "score", "select", "prune", "finetune", "eval", "export"]
    finetune = json.loads((out / "finetune.json").read_text())
    assert finetune["world_size"] == 2 and len(finetune["history"]) == 2
    # what rank 0 saved is what DDP trained: the final training checkpoint's weights
    ckpt = torch.load(out / "finetune.ckpt", map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    saved = load_file(out / "finetuned" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in ckpt["state_dict"].items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["removed"] == json.loads((out / "plan.json").read_text())["removed"]


def test_a_bad_recipe_stops_every_rank_with_one_message(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "run"
    done = torchrun("run", RECIPE, *TINY, "--set", "select.protect=[nope]", "--set", "finetune.sync_batchnorm=true",
                    "--out", str(out), cwd=root)
    assert done.returncode != 0
    assert done.stderr.count(f"error: {RECIPE}: 2 problems") == 1, done.stderr[-2000:]  # rank 0 speaks for the job
    assert done.stderr.count("select.protect: unknown block 'nope'") == 1
    assert done.stderr.count("finetune.sync_batchnorm: SyncBatchNorm runs on CUDA devices only") == 1
    assert "exitcode  : 2" in done.stderr  # both ranks exit 2 (torchrun itself then exits 1)
    assert not out.exists()


@pytest.mark.slow  # two ranks in fresh processes, each importing transformers (about 20 s on 2 cores)
def test_two_ranks_finetune_a_language_model(tmp_path):
    """A tiny Llama built from a configuration on the standard library's documentation: both ranks
    pretrain and finetune it under DDP on their shares of the windows (gloo), rank 0 scores, prunes
    and writes; the saved model/ is the 2-layer transformers folder."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    recipe = {
        "name": "ddp_lm", "seed": 0,
        "model": {"hf_config": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 32,
                                "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "max_position_embeddings": 64}},
        "data": {"dataset": "text", "options": {"corpus": "pydoc", "seq_len": 32, "vocab_size": 300},
                 "batch_size": 16, "calibration": {"samples": 8, "batches": 1}},
        "pretrain": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "batches_per_epoch": 6},
        "criterion": {"name": "block_influence"},
        "select": {"rule": "budget", "params": {"layers": 0.5}},
        "finetune": {"epochs": 2, "optimizer": "adamw", "lr": 0.001, "batches_per_epoch": 3},
        "eval": {"latency": False},
    }
    path = tmp_path / "ddp_lm.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    out = tmp_path / "runs" / "ddp_lm"
    done = torchrun("run", str(path), "--out", str(out), cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("▶ finetune") == 1 and done.stdout.count("finetune epoch 2/2") == 1
    finetune = json.loads((out / "finetune.json").read_text())
    assert finetune["world_size"] == 2 and len(finetune["history"]) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "causal-lm" and len(metrics["removed"]) == 2
    config = json.loads((out / "model/config.json").read_text())
    assert config["num_hidden_layers"] == 2 and (out / "model/tokenizer.json").is_file()

"""A bench killed while its base model trains into the cache, inside a trial, and while a trial's
file is half-written, rerun after every kill, ends with the trials of a bench never killed and
leaves nothing half-written. (Kill points: tests/killpoint.py; every run a fresh process.)"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from layerprune.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/bench_small.yaml"
# tail and modularity at k=2, then width at MACs −30%: three trials in one setting, one seed.
TINY = ["bench.criteria=[tail, modularity]", "bench.budgets=[{k: 2}, {macs: 0.3}]", "bench.seeds=[0]",
        "pretrain.epochs=2", "data.options={val_fraction: 0.2, test_fraction: 0.5}", "bench.width=true"]
TIMED = ("seconds", "latency_ms", "speedup")
# In the order a bench meets them (tail's two trials, modularity's two, then width); trials are
# counted from the start of each process.
POINTS = [
    "in:pretrain@700",                 # the base model training into the cache
    "trial:2@400",                     # inside tail's second trial
    "replace:modularity__k2__s0.json",  # a trial's file complete, not yet in place
    "trial:3@300",                     # inside the width trial (the rerun does modularity's two first)
]


def _bench(out: Path, cache: Path, point: str | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, str(ROOT / "tests/killpoint.py"), point] if point else [sys.executable, "-m", "layerprune"]
    args = ["bench", str(RECIPE), "--out", str(out), *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERPRUNE_CACHE": str(cache)}
    return subprocess.run([*head, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _trials(out: Path) -> list[dict]:
    trials = json.loads((out / "trials.json").read_text())["trials"]
    return [{k: v for k, v in t.items() if k not in TIMED} for t in trials]


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_kill")
    done = _bench(root / "reference", root / "cache")
    assert done.returncode == 0, done.stdout + done.stderr
    return _trials(root / "reference")


@pytest.mark.slow  # 4 killed benches and a last one, each a fresh process (about 2 minutes on 2 cores)
def test_a_bench_killed_anywhere_reruns_to_the_same_trials(never_killed, tmp_path):
    """Each rerun resumes where the last kill stopped it and is killed at the next point."""
    out, cache = tmp_path / "bench", tmp_path / "cache"  # a cache of its own: the base is trained here
    for point in POINTS:
        killed = _bench(out, cache, point)
        assert killed.returncode == -signal.SIGKILL, f"not killed at {point}:\n{killed.stdout}{killed.stderr}"
        assert (out / LOCK_FILE).is_file(), "the killed bench held no lock"
        if point.startswith("in:pretrain"):
            assert list(cache.glob(f"locks/*/{LOCK_FILE}")), "the base's training held no lock"
        if point.startswith("replace:"):
            assert list(out.rglob(f".{point.split(':')[1]}.*.tmp")), f"no half-done write at {point}"
    again = _bench(out, cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _trials(out) == never_killed
    leftovers = [p for p in [*out.rglob(".*"), *cache.rglob(".*")]]
    assert leftovers == [], f"partial files after the rerun: {leftovers}"

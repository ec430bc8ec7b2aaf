"""Kill at every stage: a real run SIGKILLed at each stage boundary and inside each stage, rerun
after every kill, ends with the same outputs as a run never killed, and leaves nothing
half-written.

The kill points come from tests/killpoint.py (a real ``kill -9`` of the process, from inside, at
a chosen place); each run is a fresh process, as a user's would be.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from layerprune.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
# Small enough for a run in ~20 s (540 training images); two epochs each, so that a killed training
# resumes from a checkpoint of its own.
TINY = ["pretrain.epochs=2", "finetune.epochs=2", "data.options={val_fraction: 0.1, test_fraction: 0.6}",
        "data.calibration.samples=64", "data.calibration.batches=2", "prune.repair_batches=4", "eval.latency=false"]
RESULTS = ("scores.json", "plan.json", "prune.json", "metrics.json", "pretrain.json", "finetune.json")

# In the order a run meets them: each rerun resumes where the last kill stopped it and is killed
# at the next point, so every point is met by a run that was itself resumed after a kill.
POINTS = [
    "in:pretrain@900",           # inside pretraining's second epoch: resumes from the first one's checkpoint
    "done:pretrain",
    "in:score@60",
    "replace:scores.json",       # scores computed and written, not yet in place
    "done:score",
    "done:select",
    "in:prune@200",              # during BatchNorm repair
    "replace:pruned",            # the pruned model's folder complete, not yet in place
    "done:prune",
    "replace:finetune.ckpt#2",   # the second epoch's checkpoint complete, not yet in place
    "done:finetune",
    "in:eval@100",
    "replace:metrics.json",
    "done:eval",
    "replace:report.md",         # inside the export stage
]


def _layerprune(out: Path, point: str | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, str(ROOT / "tests/killpoint.py"), point] if point else [sys.executable, "-m", "layerprune"]
    args = ["run", str(QUICKSTART), "--out", str(out), *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*head, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _outputs(out: Path) -> dict:
    """What a run computed (not how long it took): the result files, metrics.csv without its
    seconds column, and the list of files."""
    found = {name: json.loads((out / name).read_text()) for name in RESULTS}
    for record in (found["pretrain.json"], found["finetune.json"]):
        for epoch in record["history"]:
            epoch.pop("seconds", None)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    found["metrics.csv"] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    found["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    return found


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "reference"
    done = _layerprune(out)
    assert done.returncode == 0, done.stdout + done.stderr
    return _outputs(out)


@pytest.mark.slow  # 15 killed runs and a last one, each a fresh process (about 3 minutes on 2 cores)
def test_a_run_killed_at_every_stage_reruns_to_the_same_outputs(never_killed, tmp_path):
    out = tmp_path / "run"
    for point in POINTS:
        killed = _layerprune(out, point)
        assert killed.returncode == -signal.SIGKILL, f"not killed at {point}:\n{killed.stdout}{killed.stderr}"
        assert (out / LOCK_FILE).is_file()  # left behind by the killed process, to be taken over
        if point.startswith("replace:"):  # killed mid-write: the complete temporary is there, not in place
            name = point.split(":")[1].split("#")[0]
            assert list(out.glob(f".{name}.*.tmp")), f"no half-done write of {name} at {point}"
        stages = json.loads((out / "state.json").read_text())["done"] if (out / "state.json").exists() else []
        if point.startswith("done:"):
            assert stages[-1] == point.split(":")[1]
    again = _layerprune(out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(done earlier)" in again.stdout
    assert _outputs(out) == never_killed
    leftovers = [p for p in out.rglob(".*")]
    assert leftovers == [], f"partial files after the rerun: {leftovers}"

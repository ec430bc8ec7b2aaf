"""One process per run directory: a second run on a directory in use exits 2 naming the directory
and the process that holds it; a lock left by a killed process is taken over. (Under torchrun the
job holds one lock, rank 0's: tests/recipe/test_torchrun.py.)"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.errors import DirectoryInUseError, LayerpruneError
from layerprune.lock import LOCK_FILE, DirectoryLock, holder
from layerprune.recipe import load_recipe
from layerprune.recipe.rundir import RunDir, unused_beside

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
runner = CliRunner()


@pytest.fixture
def held(tmp_path):
    """Start a process that locks a directory and waits; yield (directory, process)."""
    procs = []

    def start(directory: Path) -> subprocess.Popen:
        code = textwrap.dedent("""
            import sys, time
            from layerprune.lock import DirectoryLock
            lock = DirectoryLock.acquire(sys.argv[1])
            print("locked", flush=True)
            time.sleep(300)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_on_a_directory_in_use_exits_2_naming_it_and_the_holder(tmp_path, held):
    out = tmp_path / "quickstart"
    proc = held(out)
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), "--set", "pretrain.epochs=1"])
    assert result.exit_code == 2, result.output
    assert f"{out} is in use by process {proc.pid}" in result.output and "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written beside the holder's lock
    assert holder(out)["pid"] == proc.pid


def test_a_bench_on_a_directory_in_use_exits_2_naming_it_and_the_holder(tmp_path, held):
    out = tmp_path / "bench"
    proc = held(out)
    result = runner.invoke(app, ["bench", str(ROOT / "recipes/bench_small.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{out} is in use by process {proc.pid}" in result.output
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, held):
    out = tmp_path / "run"
    proc = held(out)
    with pytest.raises(DirectoryInUseError, match=f"in use by process {proc.pid}"):
        DirectoryLock.acquire(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder(out)["pid"] == proc.pid  # the dead process's lock file is still there
    with DirectoryLock.acquire(out) as lock:
        assert lock.taken_over["pid"] == proc.pid
        assert holder(out)["pid"] == os.getpid()
        with pytest.raises(DirectoryInUseError, match=f"in use by process {os.getpid()}"):
            DirectoryLock.acquire(out)  # a second open in the same process is refused too
    assert not (out / LOCK_FILE).exists()  # released: no trace left


def test_a_directory_holding_only_a_stale_lock_is_an_empty_run_directory(tmp_path, held):
    out = tmp_path / "run"
    proc = held(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recipe = load_recipe(QUICKSTART)
    assert unused_beside(out) == out
    run = RunDir.open(recipe, str(out))  # not "exists and is not a layerprune run directory"
    try:
        assert (out / "recipe.yaml").is_file() and holder(out)["pid"] == os.getpid()
    finally:
        run.close()
    assert not (out / LOCK_FILE).exists()


def test_a_refused_run_releases_its_lock(tmp_path):
    out = tmp_path / "run"
    first = RunDir.open(load_recipe(QUICKSTART), str(out))
    first.close()
    other = load_recipe(QUICKSTART, ["finetune.epochs=3"])
    with pytest.raises(LayerpruneError, match="holds a run of a different recipe"):
        RunDir.open(other, str(out))
    assert not (out / LOCK_FILE).exists()

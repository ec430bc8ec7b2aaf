"""Suites end to end, as users start them: the small suite through the CLI, the same trials from
one process and from two torchrun ranks, a killed bench resumed trial by trial, and base models
trained once per key."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerprune.recipe.cache import CACHE_ENV, BaseCache, cache_root
from layerprune.bench.stats import leaderboard
from layerprune.bench.suite import load_suite
from layerprune.bench.width import is_channel_row
from layerprune.cli import app

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "recipes/suites/small.yaml"
# Small enough for three runs in the tests: 2 settings × 3 criteria × 1 budget × 2 seeds.
TINY = ["bench.criteria=[tail, random, modularity]", "bench.budgets=[{k: 1}]", "bench.seeds=[0, 1]",
        "bench.width=false"]
# Fields that are measured, not computed: they differ between any two runs.
TIMED = ("seconds", "latency_ms", "speedup")
runner = CliRunner()


def _sets(overrides):
    return [a for s in overrides for a in ("--set", s)]


def _trials(path: Path) -> list[dict]:
    return json.loads((path / "trials.json").read_text())["trials"]


def _computed(trials: list[dict]) -> list[dict]:
    return [{k: v for k, v in t.items() if k not in TIMED} for t in trials]


def _bench(*args: str, torchrun: bool = False, wait: bool = True, **kwargs):
    """``layerprune bench`` in a new process (one thread per process, as torchrun gives each rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun
            else [sys.executable])
    cmd = [*head, "-m", "layerprune", "bench", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **kwargs)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, **kwargs)


# -- the small suite through the CLI ----------------------------------------------------------
# The shipped small suite with fewer criteria and one budget (16 trials instead of 48): every
# setting, both seeds and the width and depth+width rows stay.
SMALLER = ["bench.criteria=[modularity, random, tail]", "bench.budgets=[{macs: 0.3}]"]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "small"
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(out), *_sets(SMALLER)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow  # the small suite through the CLI: about 100 s of setup on 2 cores
def test_small_suite_runs_every_trial_of_every_setting(small_dir):
    suite = load_suite(SMALL, SMALLER)
    expected = set()
    for r in suite.recipes:
        b = r.bench
        expected |= {(r.name, c, f"{k}{v:g}" if k != "k" else f"k{int(v)}", s)
                     for c in b.criteria for budget in b.budgets for k, v in budget.items() for s in b.seeds}
        if b.width:
            expected |= {(r.name, row, f"{k}{v:g}", s)
                         for row in ("width (Torch-Pruning L1 channels)", "depth+width (tail blocks + L1 channels)")
                         for budget in b.budgets for k, v in budget.items() if k != "k" for s in b.seeds}
    got = [(t["setting"], t["criterion"], t["budget"], t["seed"]) for t in _trials(small_dir)]
    assert len(got) == len(set(got)) and set(got) == expected
    rows = list(csv.DictReader((small_dir / "trials.csv").open()))
    assert [(r["setting"], r["criterion"], r["budget"], int(r["seed"])) for r in rows] == got


@pytest.mark.slow  # the small suite through the CLI: about 100 s of setup on 2 cores
def test_small_suite_writes_the_leaderboard_and_every_setting(small_dir):
    report = (small_dir / "report.md").read_text()
    assert report.index("## Leaderboard: accuracy after finetune") < report.index("## Settings")
    for name in ("leaderboard.png", "suite.yaml"):
        assert (small_dir / name).is_file()
    for r in load_suite(SMALL, SMALLER).recipes:
        assert f"### {r.name}: {r.model.name} on {r.data.dataset}" in report
        assert (small_dir / "settings" / r.name / "accuracy_vs_macs.png").is_file()
        assert f"](settings/{r.name}/accuracy_vs_macs.png)" in report
        assert (small_dir / "settings" / r.name / "removals.png").is_file()


@pytest.mark.slow  # the small suite through the CLI: about 100 s of setup on 2 cores
def test_the_stored_leaderboard_is_the_one_the_trials_give(small_dir):
    stored = json.loads((small_dir / "trials.json").read_text())
    depth = [t for t in stored["trials"] if not is_channel_row(t["criterion"])]
    criteria = list(dict.fromkeys(c for r in load_suite(SMALL, SMALLER).recipes for c in r.bench.criteria))
    again = leaderboard(depth, "tail", "after_finetune", criteria)
    assert json.dumps(again, sort_keys=True) == json.dumps(stored["leaderboards"]["after_finetune"], sort_keys=True)
    ranked = [r["criterion"] for r in stored["leaderboards"]["after_finetune"]]
    assert sorted(ranked) == sorted(criteria)  # the channel rows are reported per setting, not ranked


@pytest.mark.slow  # the small suite through the CLI: about 100 s of setup on 2 cores
def test_seeds_score_different_calibration_samples(small_dir):
    name = load_suite(SMALL).recipes[0].name
    scores = small_dir / "settings" / name / "scores"
    drawn = {json.loads((scores / f"modularity_s{s}.json").read_text())["calibration"]["seed"] for s in (0, 1)}
    assert drawn == {0, 1}
    a, b = (json.loads((scores / f"modularity_s{s}.json").read_text())["scores"] for s in (0, 1))
    assert a != b  # other samples, other modularity


# -- one process, two ranks, a killed run ----------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "one"
    done = _bench(str(SMALL), "--out", str(out), *_sets(TINY))
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.slow  # two more benches in fresh processes (about 4 minutes on 2 cores)
def test_two_torchrun_ranks_give_the_trials_of_one_process(one_process, tmp_path):
    out = tmp_path / "two"
    done = _bench(str(SMALL), "--out", str(out), *_sets(TINY), torchrun=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 1:" in done.stdout  # rank 1 did trials of its own
    assert _computed(_trials(out)) == _computed(_trials(one_process))


@pytest.mark.slow  # a killed bench and its rerun, in fresh processes (about 2.5 minutes)
def test_a_killed_bench_reruns_only_the_missing_trials(one_process, tmp_path):
    out = tmp_path / "killed"
    proc = _bench(str(SMALL), "--out", str(out), *_sets(TINY), wait=False, start_new_session=True)
    trials = lambda: sorted(out.glob("settings/*/trials/*.json"))  # noqa: E731
    deadline = time.monotonic() + 600
    while len(trials()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p: p.stat().st_mtime_ns for p in trials()}
    total = len(_trials(one_process))
    assert 3 <= len(kept) < total, "the bench was not killed mid-way"
    done = _bench(str(SMALL), "--out", str(out), *_sets(TINY))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished trials are not redone
    assert _computed(_trials(out)) == _computed(_trials(one_process))


# -- base models: trained once per key -------------------------------------------------------
@pytest.mark.slow  # three base models trained (about 1 minute on 2 cores)
def test_a_changed_pretraining_key_retrains_the_cached_base(tmp_path):
    cache = tmp_path / "cache"
    quick = ["--setting", "digits_resnet20", *_sets(TINY + ["bench.seeds=[0]", "bench.criteria=[tail]",
                                                            f"cache_dir={cache}"])]

    def bench(out, *extra):
        result = runner.invoke(app, ["bench", str(SMALL), "--out", str(tmp_path / out), *quick, *_sets(extra)])
        assert result.exit_code == 0, result.output
        base = json.loads((tmp_path / out / "settings/digits_resnet20/base.json").read_text())
        return result.output, Path(base["cache"])

    log1, first = bench("a", "pretrain.epochs=1")
    assert "digits_resnet20: pretrain" in log1 and first.is_file() and first.is_relative_to(cache)
    stamp = first.stat().st_mtime_ns
    log2, second = bench("b", "pretrain.epochs=2")
    assert "digits_resnet20: pretrain" in log2 and second != first and second.is_file()
    log3, third = bench("c", "pretrain.epochs=1")
    assert "digits_resnet20: pretrain" not in log3 and third == first and first.stat().st_mtime_ns == stamp
    assert len(list((cache / "bases").iterdir())) == 2


def test_the_cache_folder_is_the_suite_key_else_the_environment_else_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root(str(tmp_path / "key")) == tmp_path / "key"
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "layerprune"


def test_the_cache_key_ignores_what_does_not_change_the_base(tmp_path):
    suite = load_suite(SMALL)
    base = suite.recipes[0]
    cache = BaseCache(tmp_path)
    same = base.model_copy(update={"finetune": base.finetune.model_copy(update={"epochs": 7}),
                                   "bench": base.bench.model_copy(update={"seeds": [5]})})
    other = base.model_copy(update={"seed": base.seed + 1})
    assert cache.entry(same) == cache.entry(base)
    assert cache.entry(other) != cache.entry(base)


@pytest.mark.slow  # two benches in fresh processes at once (about 1 minute on 2 cores)
def test_two_benches_sharing_a_cache_train_the_base_once(tmp_path):
    """Started together, one trains the shared base while the other waits, then finds it cached."""
    cache = tmp_path / "cache"
    quick = ["--setting", "digits_resnet20", *_sets(TINY + ["bench.seeds=[0]", "bench.criteria=[tail]",
                                                            "bench.finetune_epochs=0", "pretrain.epochs=2",
                                                            f"cache_dir={cache}"])]
    procs = [_bench(str(SMALL), "--out", str(tmp_path / name), *quick, wait=False) for name in ("a", "b")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("pretrain epoch 2/2" in out for out in outputs) == 1, outputs  # trained once
    assert len(list((cache / "bases").iterdir())) == 1
    bases = {json.loads((tmp_path / n / "settings/digits_resnet20/base.json").read_text())["cache"] for n in "ab"}
    assert len(bases) == 1


def test_a_bench_trains_into_its_own_cache_not_from_the_users(tmp_path, monkeypatch):
    """A suite's cache_dir is where its bases come from: a base for the same key in
    $LAYERPRUNE_CACHE (which layerprune run reads) is not taken instead of training."""
    overrides = TINY + ["bench.seeds=[0]", "bench.criteria=[tail]", "bench.finetune_epochs=0", "pretrain.epochs=1",
                        f"cache_dir={tmp_path / 'suite_cache'}"]
    suite = load_suite(SMALL, overrides, only=["digits_resnet20"])
    user = tmp_path / "user_cache"
    monkeypatch.setenv(CACHE_ENV, str(user))
    planted = BaseCache(user).weights(suite.recipes[0])
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a model: must never be read")
    result = runner.invoke(app, ["bench", str(SMALL), "--out", str(tmp_path / "out"), "--setting", "digits_resnet20",
                                 *_sets(overrides)])
    assert result.exit_code == 0, result.output
    assert "pretrain epoch 1/1" in result.output and "pretrain: skipped" not in result.output
    assert BaseCache(tmp_path / "suite_cache").has(suite.recipes[0])

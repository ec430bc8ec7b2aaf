"""Property-based checks of the command line: any broken recipe and any bad argument exits 2
with one message that names the key, flag or path, never a traceback, and never touches an
earlier run's outputs (hypothesis draws the mutations; a failing one is shrunk and reported)."""

import copy
import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes/quickstart.yaml"
TINY = ["pretrain.epochs=1", "finetune.epochs=1", "data.options={val_fraction: 0.1, test_fraction: 0.6}",
        "data.calibration.samples=64", "data.calibration.batches=1", "prune.repair_batches=2", "eval.latency=false"]
runner = CliRunner()
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Keys whose value is a name from a fixed set (a registry, an enum): any other word is wrong.
NAMES = ["model.name", "data.dataset", "criterion.name", "select.rule", "eval.split", "data.calibration.split",
         "device", "pretrain.optimizer", "finetune.optimizer", "pretrain.precision", "finetune.precision"]
# Keys that must be a positive number, and keys that may be 0 but not below.
NON_NEGATIVE = ["pretrain.epochs", "finetune.epochs"]
POSITIVE = ["finetune.lr", "pretrain.lr", "data.batch_size", "data.eval_batch_size",
            "data.calibration.samples", "data.calibration.batches", "prune.repair_batches", "prune.steps",
            "select.params.macs"]


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path, value


RESOLVED = load_recipe(QUICKSTART).model_dump(mode="json")
LEAVES = dict(_leaves(RESOLVED))
SECTIONS = sorted({p.rsplit(".", 1)[0] for p in LEAVES if "." in p} - {"criterion.params", "select.params", "data.options"})
TYPED = sorted(p for p, v in LEAVES.items() if isinstance(v, (bool, int, float)) and not p.startswith(("criterion.params",)))

word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12)
unknown = word.map(lambda w: f"zz{w}")  # never a known key or name


def _set(tree, path, value):
    *parents, last = path.split(".")
    node = tree
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


def _delete(tree, path):
    *parents, last = path.split(".")
    node = tree
    for p in parents:
        node = node[p]
    del node[last]


@st.composite
def broken_recipes(draw):
    """(recipe as written in YAML, the key its error must name)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    kind = draw(st.sampled_from(["unknown key", "wrong type", "unknown name", "not positive", "section not a mapping",
                                 "missing"]))
    if kind == "unknown key":
        section = draw(st.sampled_from(["", *SECTIONS]))
        key = f"{section}.{draw(unknown)}" if section else draw(unknown)
        _set(raw, key, draw(st.one_of(st.integers(), word)))
    elif kind == "wrong type":
        key = draw(st.sampled_from(TYPED))
        value = LEAVES[key]
        bad = draw(st.one_of(unknown, st.lists(st.integers(), min_size=1, max_size=3),
                             st.dictionaries(unknown, st.integers(), min_size=1, max_size=2)))
        if isinstance(value, int) and not isinstance(value, bool):
            bad = draw(st.one_of(st.just(bad), st.floats(0.1, 0.9).map(lambda f: value + 1 + f)))
        _set(raw, key, bad)
    elif kind == "unknown name":
        key = draw(st.sampled_from(NAMES))
        _set(raw, key, draw(unknown))
    elif kind == "not positive":
        key = draw(st.sampled_from(POSITIVE + NON_NEGATIVE))
        negative = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False))
        _set(raw, key, draw(negative if key in NON_NEGATIVE else st.one_of(st.just(0), negative)))
    elif kind == "section not a mapping":
        key = draw(st.sampled_from(["model", "data", "criterion", "select", "prune", "finetune", "pretrain", "eval"]))
        _set(raw, key, draw(st.one_of(st.integers(), word, st.lists(st.integers(), max_size=2))))
    else:
        key = draw(st.sampled_from(["model.name", "data.dataset", "model", "data"]))
        _delete(raw, key)
    return raw, key


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished run whose files no later command may damage."""
    out = tmp_path_factory.mktemp("earlier") / "quickstart"
    result = runner.invoke(app, ["run", str(QUICKSTART), "--out", str(out), *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    return out, _fingerprint(out)


def _refused(result, *named: str) -> None:
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an exception escaping
    assert "Traceback" not in output
    for name in named:
        assert name in output, (name, output)


@EXAMPLES
@given(broken=broken_recipes())
def test_a_broken_recipe_exits_2_naming_the_key_and_touches_no_run(earlier_run, tmp_path_factory, broken):
    raw, key = broken
    folder = tmp_path_factory.mktemp("broken")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    _refused(runner.invoke(app, ["validate", str(path)]), key)
    out, before = earlier_run
    _refused(runner.invoke(app, ["run", str(path), "--out", str(out)]), key)
    _refused(runner.invoke(app, ["run", str(path), "--out", str(folder / "new")]), key)
    assert _fingerprint(out) == before
    assert sorted(p.name for p in folder.iterdir()) == ["recipe.yaml"]  # no run directory begun


@st.composite
def bad_sets(draw):
    """A --set argument that cannot be right, and what its error must name."""
    kind = draw(st.sampled_from(["no equals", "unknown key", "bad yaml", "unknown name", "not positive"]))
    if kind == "no equals":
        text = draw(word)
        return text, f"--set '{text}'"
    if kind == "unknown key":
        key = f"{draw(st.sampled_from(['', *(s + '.' for s in SECTIONS)]))}{draw(unknown)}"
        return f"{key}={draw(st.integers())}", key
    if kind == "bad yaml":
        key = draw(st.sampled_from(TYPED))
        text = f"{key}={draw(st.sampled_from(['[', '{', '[1, 2', '{a: 1', ': :']))}"
        return text, f"--set '{text}'"
    if kind == "unknown name":
        key = draw(st.sampled_from(NAMES))
        return f"{key}={draw(unknown)}", key
    key = draw(st.sampled_from(POSITIVE + NON_NEGATIVE))
    return f"{key}={draw(st.integers(max_value=-1 if key in NON_NEGATIVE else 0))}", key


@EXAMPLES
@given(bad=bad_sets(), command=st.sampled_from(["validate", "run"]))
def test_a_bad_set_argument_exits_2_naming_it_and_touches_no_run(earlier_run, bad, command):
    text, named = bad
    out, before = earlier_run
    extra = ["--out", str(out)] if command == "run" else []
    _refused(runner.invoke(app, [command, str(QUICKSTART), "--set", text, *extra]), named)
    assert _fingerprint(out) == before


@EXAMPLES
@given(command=st.sampled_from(["validate", "run", "bench", "export"]), name=unknown)
def test_a_missing_path_exits_2_naming_it(tmp_path_factory, command, name):
    missing = tmp_path_factory.mktemp("nothing") / f"{name}.yaml"
    _refused(runner.invoke(app, [command, str(missing)]), str(missing))
    assert not missing.exists()


@EXAMPLES
@given(command=st.sampled_from(["validate", "run", "bench", "inspect", "score", "export", "criteria", "models"]),
       option=unknown)
def test_an_unknown_option_exits_2_naming_it(command, option):
    _refused(runner.invoke(app, [command, str(QUICKSTART), f"--{option}"]), f"--{option}")


@EXAMPLES
@given(model=unknown, data=unknown, criterion=unknown, which=st.sampled_from(["model", "data", "criterion"]))
def test_score_with_an_unknown_name_exits_2_naming_it(model, data, criterion, which):
    args = {"model": "cifar_resnet20", "data": "digits", "criterion": "tail", which: locals()[which]}
    result = runner.invoke(app, ["score", args["model"], "--data", args["data"], "--criterion", args["criterion"]])
    _refused(result, args[which])

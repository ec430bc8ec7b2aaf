"""Criterion plugins: the single-file example, the example package found through its entry point
(made discoverable by a dist-info directory on ``sys.path``, not by pip), and how broken plugins
are reported — from the library, from ``layerprune criteria`` and from a subprocess."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from layerprune import create_model
from layerprune.cli import app
from layerprune.criteria import (
    CRITERIA, PluginFailure, PluginWarning, ScoringContext, get_criterion, list_criteria, load_plugin,
    plugin_failures, register_criterion, score_blocks,
)
from layerprune.criteria.catalog import criterion_names
from layerprune.errors import LayerpruneError

ROOT = Path(__file__).resolve().parents[2]
SINGLE_FILE = ROOT / "plugins" / "single_file" / "entropy_gain.py"
PACKAGE_SRC = ROOT / "plugins" / "layerprune-example-criteria" / "src"
PACKAGE_MODULE = "layerprune_example_criteria"
PACKAGE_DIST = "layerprune-example-criteria"
BUILTINS = {"ablation", "block_influence", "cka", "linear_probe", "magnitude", "modularity", "random",
            "sr_init", "tail", "taylor", "angular", "consensus", "cka_removal", "greedy", "modularity_removal"}

runner = CliRunner()


@pytest.fixture
def unimported(monkeypatch):
    """Forget modules imported from plugins by earlier tests, so each test imports (and so
    registers) them afresh: ``load_plugin`` skips a file whose module is already imported."""
    for name in list(sys.modules):
        if name.startswith(("layerprune_plugin_", PACKAGE_MODULE, "lp_test_")):
            monkeypatch.delitem(sys.modules, name)


def write_dist_info(root: Path, name: str, entry_points: dict[str, str], version: str = "0.1.0") -> Path:
    """What ``pip install`` leaves for ``importlib.metadata``: a ``*.dist-info`` with METADATA and
    entry_points.txt. With ``root`` on ``sys.path`` the distribution counts as installed."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text("[layerprune.criteria]\n" + lines)
    return root


@pytest.fixture
def example_package(tmp_path, monkeypatch, unimported):
    """The example package as if pip-installed: its dist-info and its ``src/`` on ``sys.path``."""
    dist = write_dist_info(tmp_path / "site", PACKAGE_DIST,
                           {"feature_rank_gain": f"{PACKAGE_MODULE}:FeatureRankGain"})
    monkeypatch.syspath_prepend(str(PACKAGE_SRC))
    monkeypatch.syspath_prepend(str(dist))
    return dist


# -- the single-file plugin --------------------------------------------------------------------
def test_file_plugin_registers_with_file_origin_and_scores_every_removable_block(
        fresh_catalog, unimported, trained_resnet20, digits, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert "entropy_gain" not in CRITERIA
    assert load_plugin("plugins/single_file/entropy_gain.py") == ["entropy_gain"]
    assert CRITERIA.origin("entropy_gain") == f"file {SINGLE_FILE}"
    assert plugin_failures() == []

    criterion = get_criterion("entropy_gain", k=5)
    assert criterion.name == "entropy_gain" and criterion.params() == {"k": 5}
    ctx = ScoringContext(trained_resnet20, digits, samples=64, batches=1)
    result = criterion(ctx)
    removable = {b.name for b in ctx.scorable if b.removable}
    assert removable and removable <= set(result.scores)
    assert all(math.isfinite(v) for v in result.scores.values())
    # A trained network makes the label more predictable from its features overall.
    assert sum(result.scores.values()) > 0


def test_file_plugin_unknown_parameter_is_named(fresh_catalog, unimported):
    load_plugin(str(SINGLE_FILE))
    with pytest.raises(LayerpruneError, match=r"'entropy_gain': kk: unknown parameter \(parameters: k, smoothing\)"):
        get_criterion("entropy_gain", kk=3)


def test_identity_block_scores_zero_for_both_example_criteria(fresh_catalog, example_package, digits,
                                                               zero_residual_branch):
    load_plugin(str(SINGLE_FILE))
    torch.manual_seed(0)
    model = zero_residual_branch(create_model("cifar_resnet20", num_classes=10, in_chans=1).eval(), "layer2.1")
    results = score_blocks(model, digits, ["entropy_gain", "feature_rank_gain"], samples=64, batches=1)
    for name, result in results.items():
        assert result.scores["layer2.1"] == 0.0, name
        assert any(v != 0.0 for b, v in result.scores.items() if b != "layer2.1"), name
    erank = results["feature_rank_gain"].diagnostics["effective_rank"]
    assert all(1.0 <= v <= 63.0 for v in erank.values())  # 64 centred samples: rank ≤ 63


@pytest.mark.usefixtures("example_package")
def test_effective_rank_counts_equally_used_directions():
    from layerprune_example_criteria import effective_rank  # src is on sys.path here

    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    signs = torch.tensor([1.0, -1.0]).repeat(20).view(-1, 1)
    for k in (1, 3, 7):
        features = torch.cat([signs * q[:, i:i + 1].T for i in range(k)], dim=0)  # ±e_i, equal norms
        assert effective_rank(features) == pytest.approx(k, rel=1e-6)
    assert effective_rank(torch.ones(10, 5)) == 0.0


# -- the package, found through its entry point ------------------------------------------------
def test_entry_point_plugin_is_registered_lazily_with_package_origin(fresh_catalog, example_package):
    assert PACKAGE_MODULE not in sys.modules
    assert "feature_rank_gain" in criterion_names()  # reads the entry points, imports nothing
    assert CRITERIA.origin("feature_rank_gain") == f"package {PACKAGE_DIST}"
    assert PACKAGE_MODULE not in sys.modules

    criterion = get_criterion("feature_rank_gain", absolute=True)
    assert PACKAGE_MODULE in sys.modules
    assert type(criterion).__module__ == PACKAGE_MODULE
    assert criterion.name == "feature_rank_gain" and criterion.params() == {"absolute": True, "relative": False}
    with pytest.raises(LayerpruneError, match="absolute: must be true or false"):
        get_criterion("feature_rank_gain", absolute="yes")

    infos = {i.name: i for i in list_criteria()}
    assert BUILTINS <= set(infos)
    assert infos["feature_rank_gain"].origin == f"package {PACKAGE_DIST}"
    assert infos["feature_rank_gain"].description.startswith("Change in effective rank")
    assert plugin_failures() == []


def test_example_package_imports_nothing_beyond_layerprune_and_torch():
    code = ("import sys, layerprune.criteria.base, torch; before = set(sys.modules); "
            f"import {PACKAGE_MODULE}; print(' '.join(sorted(set(sys.modules) - before)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_SRC), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [PACKAGE_MODULE]


# -- broken plugins are reported, not fatal ----------------------------------------------------
def test_file_that_raises_on_import_is_reported_and_skipped(fresh_catalog, tmp_path):
    broken = tmp_path / "lp_test_broken.py"
    broken.write_text("import layerprune\nraise RuntimeError('boom at import')\n")
    with pytest.warns(PluginWarning, match=r"lp_test_broken\.py.*RuntimeError: boom at import; skipped"):
        assert load_plugin(str(broken)) == []
    assert plugin_failures() == [PluginFailure(str(broken), f"file {broken.resolve()}", "RuntimeError: boom at import")]
    assert BUILTINS <= {i.name for i in list_criteria()}

    with pytest.raises(LayerpruneError, match=r"lp_test_broken\.py.*failed to load: RuntimeError: boom at import"):
        load_plugin(str(broken), strict=True)


def test_file_that_registers_nothing_is_reported(fresh_catalog, tmp_path):
    empty = tmp_path / "lp_test_empty.py"
    empty.write_text("def score(ctx):\n    return {}\n")  # forgot @layerprune.register_criterion
    with pytest.warns(PluginWarning, match="registered no criterion"):
        assert load_plugin(str(empty)) == []
    [failure] = plugin_failures()
    assert failure.origin == f"file {empty.resolve()}" and "register_criterion" in failure.error
    with pytest.raises(LayerpruneError, match="registered no criterion"):
        load_plugin(str(empty), strict=True)


def test_missing_file_and_missing_module_are_reported(fresh_catalog, tmp_path):
    with pytest.warns(PluginWarning, match="no such file"):
        assert load_plugin(str(tmp_path / "nope.py")) == []
    with pytest.warns(PluginWarning, match="ModuleNotFoundError: No module named 'lp_test_no_such_module'"):
        assert load_plugin("lp_test_no_such_module:Crit") == []
    assert [f.origin for f in plugin_failures()] == [f"file {tmp_path / 'nope.py'}", "module lp_test_no_such_module"]


def test_plugin_cannot_take_a_builtin_name(fresh_catalog, tmp_path):
    clash = tmp_path / "lp_test_clash.py"
    clash.write_text("import layerprune\n\n@layerprune.register_criterion('cka')\n"
                     "def cka(ctx):\n    return {}\n")
    with pytest.warns(PluginWarning, match="'cka' is already registered \\(origin: builtin\\)"):
        assert load_plugin(str(clash)) == []
    assert CRITERIA.origin("cka") == "builtin"


def test_broken_entry_point_is_reported_and_builtins_still_listed(fresh_catalog, tmp_path, monkeypatch, unimported):
    (tmp_path / "lp_test_needs_gpu.py").write_text("raise ImportError('needs cupy')\n")
    write_dist_info(tmp_path, "lp-test-broken", {"needs_gpu": "lp_test_needs_gpu:Crit"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="'needs_gpu' \\(package lp-test-broken\\) failed to load"):
        infos = list_criteria()
    assert {i.name for i in infos} == BUILTINS
    [failure] = plugin_failures()
    assert failure.name == "needs_gpu" and failure.origin == "package lp-test-broken"
    assert "needs cupy" in failure.error

    with pytest.raises(LayerpruneError, match="'needs_gpu' \\(package lp-test-broken\\) failed to load: (ImportError: )?needs cupy"):
        list_criteria(strict=True)
    with pytest.raises(LayerpruneError, match="needs cupy"):
        get_criterion("needs_gpu")


# -- the CLI -----------------------------------------------------------------------------------
def table_rows(text: str) -> dict[str, tuple[str, str]]:
    """``name → (description, origin)`` from the table ``layerprune criteria`` prints (cells
    wrapped over several lines are joined with spaces)."""
    rows: dict[str, list[list[str]]] = {}
    name = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 3:
            continue
        name = cells[0] or name
        rows.setdefault(name, [[], []])
        for part, cell in zip(rows[name], cells[1:]):
            part.extend([cell] if cell else [])
    return {n: (" ".join(d), " ".join(o)) for n, (d, o) in rows.items()}


def test_cli_criteria_lists_a_file_plugin_with_its_origin(fresh_catalog, unimported):
    table = runner.invoke(app, ["criteria", "--plugin", str(SINGLE_FILE)])
    assert table.exit_code == 0, table.output
    assert table.stderr == ""
    rows = table_rows(table.stdout)
    assert BUILTINS | {"entropy_gain"} == set(rows)
    description, origin = rows["entropy_gain"]
    assert description.startswith("Label entropy a block removes")
    assert origin.replace(" ", "") == f"file{SINGLE_FILE}"  # a long path is folded over lines
    listed = json.loads(runner.invoke(app, ["criteria", "--plugin", str(SINGLE_FILE), "--json"]).stdout)
    by_name = {c["name"]: c for c in listed}
    assert by_name["entropy_gain"]["origin"] == f"file {SINGLE_FILE}"
    assert by_name["cka"]["origin"] == "builtin"


def test_cli_broken_plugin_warns_and_strict_fails_in_one_line(fresh_catalog, tmp_path):
    broken = tmp_path / "lp_test_cli_broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(app, ["criteria", "--plugin", str(broken)])
    assert result.exit_code == 0
    assert "modularity" in result.stdout
    assert result.stderr.strip() == (f"warning: plugin '{broken}' (file {broken.resolve()}) failed to load: "
                                     "RuntimeError: boom; skipped")

    result = runner.invoke(app, ["criteria", "--plugin", str(broken), "--strict"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: plugin '{broken}' (file {broken.resolve()}) failed to load: "
                                     "RuntimeError: boom")
    assert "Traceback" not in result.output and result.stdout == ""


def test_cli_score_with_file_plugin_and_parameter(fresh_catalog, unimported):
    result = runner.invoke(app, ["score", "cifar_resnet20", "--data", "digits", "--plugin", str(SINGLE_FILE),
                                 "--criterion", "entropy_gain", "-p", "k=5", "--samples", "64", "--batches", "1",
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["criterion"] == "entropy_gain" and report["params"] == {"k": 5}
    assert report["calibration"]["samples"] == 64
    scored = {b["name"] for b in report["blocks"] if b["score"] is not None}
    assert {b["name"] for b in report["blocks"] if b["removable"]} <= scored
    assert 1 <= len(report["removed"]) <= 4  # count rule, fraction 0.5 of the 7 removable blocks


def test_subprocess_criteria_lists_the_installed_entry_point(tmp_path):
    dist = write_dist_info(tmp_path, PACKAGE_DIST, {"feature_rank_gain": f"{PACKAGE_MODULE}:FeatureRankGain"})
    path = os.pathsep.join(p for p in (str(dist), str(PACKAGE_SRC), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "layerprune", "criteria", "--json", "--strict"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    by_name = {c["name"]: c for c in json.loads(proc.stdout)}
    assert by_name["feature_rank_gain"]["origin"] == f"package {PACKAGE_DIST}"
    assert BUILTINS <= set(by_name)


# -- loading edge cases -------------------------------------------------------------------------
def test_loading_the_same_file_twice_is_not_a_failure(fresh_catalog, unimported):
    assert load_plugin(str(SINGLE_FILE)) == ["entropy_gain"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert load_plugin(str(SINGLE_FILE)) == ["entropy_gain"]
    assert plugin_failures() == []


def test_entry_point_module_may_also_use_the_decorator(fresh_catalog, tmp_path, monkeypatch, unimported):
    (tmp_path / "lp_test_decorated.py").write_text(
        "import layerprune\n\n@layerprune.register_criterion('decorated')\n"
        "def decorated(ctx):\n    '''Decorated and advertised.'''\n    return {}\n")
    write_dist_info(tmp_path, "lp-test-decorated", {"decorated": "lp_test_decorated:decorated"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_criterion("decorated").name == "decorated"
    assert CRITERIA.origin("decorated") == "package lp-test-decorated"


def test_failed_file_leaves_no_registration_behind(fresh_catalog, tmp_path):
    half = tmp_path / "lp_test_half.py"
    half.write_text("import layerprune\n\n@layerprune.register_criterion('half')\n"
                    "def half(ctx):\n    return {}\n\nraise RuntimeError('bug after registering')\n")
    with pytest.warns(PluginWarning, match="bug after registering"):
        assert load_plugin(str(half)) == []
    assert "half" not in CRITERIA


def test_function_criterion_can_declare_statistics_for_the_shared_pass(fresh_catalog, trained_resnet20, digits):
    def mean_gain(ctx, scale=1.0):
        """Mean activation gained across the block (toy)."""
        stats, _ = ctx.feature_stats(probe=mean_gain.probe_stats(scale))
        mean = {p: v[0] for p, v in stats[f"mean*{scale}"].items()}
        return {b: mean[after] - mean[before] for b, (before, after) in ctx.block_probes.items()}

    mean_gain.probe_stats = lambda scale=1.0: {f"mean*{scale}": lambda f, y: scale * float(f.mean())}
    register_criterion("mean_gain", mean_gain)
    criterion = get_criterion("mean_gain", scale=2.0)
    assert list(criterion.probe_stats()) == ["mean*2.0"]
    ctx = ScoringContext(trained_resnet20, digits, samples=32, batches=1)
    ctx.feature_stats(probe={**criterion.probe_stats(), **get_criterion("modularity").probe_stats()})
    passes = len(ctx.stream.passes)
    assert passes >= 1
    assert criterion(ctx).scores and len(ctx.stream.passes) == passes  # scoring reads the cached statistic

"""Reading benchmark suites: shipped suites, defaults deep-merged into settings, ``--set`` on
suite and recipe keys, plain bench recipes as one-setting suites, every problem reported with
its key path, and the ``layerprune bench`` preflight refusing bad input before writing anything."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from layerprune.bench.suite import deep_merge, load_suite
from layerprune.cli import app
from layerprune.errors import LayerpruneError
from layerprune.recipe import Recipe, RecipeError

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "recipes/suites").glob("*.yaml"))
runner = CliRunner()

# The structure of recipes/suites/small.yaml, cut down: cheap settings, one pretraining epoch.
DEFAULTS = {
    "seed": 0,
    "data": {"dataset": "digits", "options": {"val_fraction": 0.2}, "batch_size": 64,
             "calibration": {"split": "val", "samples": 50, "batches": 2}},
    "pretrain": {"epochs": 1, "lr": 0.1},
    "finetune": {"epochs": 1, "lr": 0.01},
    "eval": {"split": "test", "latency": False},
    "bench": {"criteria": ["modularity", "random", "tail"], "budgets": [{"k": 1}], "seeds": [0, 1],
              "width": False, "oracle": "tail", "reference": "tail"},
}
RESNET = {"name": "cifar_resnet20"}


def write(tmp_path, doc, name="suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def suite_doc(*settings, defaults=DEFAULTS, **top):
    return {"name": "s", **top, "defaults": defaults, "settings": list(settings)}


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_suite(path, overrides)
    return info.value.problems


# -- shipped suites ------------------------------------------------------------------------------

def test_there_are_small_and_full_suites():
    assert {p.stem for p in SUITES} >= {"small", "full"}


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_every_shipped_suite_loads_with_one_recipe_per_setting_named_after_it(path, skip_without_shared_data):
    skip_without_shared_data(path)
    raw = yaml.safe_load(path.read_text())
    suite = load_suite(path)
    assert suite.name == raw["name"]
    assert all(isinstance(r, Recipe) for r in suite.recipes)
    assert [r.name for r in suite.recipes] == [s["name"] for s in raw["settings"]]


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_shipped_settings_keep_the_default_keys_they_do_not_override(path, skip_without_shared_data):
    """Wherever a setting overrides part of a default section (``bench: {width: true}``), the
    section's other default keys still hold (a shallow merge would drop them)."""
    raw = yaml.safe_load(path.read_text())
    if not any(isinstance(s.get(k), dict) for s in raw["settings"] for k, v in raw["defaults"].items()
               if isinstance(v, dict)):
        pytest.skip(f"no setting of {path.name} overrides part of a default section")
    skip_without_shared_data(path)
    suite = load_suite(path)
    checked = 0
    for setting, recipe in zip(raw["settings"], suite.recipes):
        dumped = recipe.model_dump(mode="json")
        for section, values in raw["defaults"].items():
            own = setting.get(section)
            if not isinstance(values, dict) or not isinstance(own, dict):
                continue
            for key, value in values.items():
                if key not in own:
                    assert dumped[section][key] == value, (setting["name"], section, key)
                    checked += 1
    assert checked  # the shipped suites do override parts of default sections


def test_a_setting_overriding_a_nested_key_keeps_its_siblings(tmp_path):
    suite = load_suite(write(tmp_path, suite_doc(
        {"name": "a", "model": RESNET, "data": {"calibration": {"samples": 30}}, "bench": {"seeds": [3]}})))
    (r,) = suite.recipes
    assert (r.data.calibration.split, r.data.calibration.samples, r.data.calibration.batches) == ("val", 30, 2)
    assert (r.data.dataset, r.data.batch_size, r.data.options) == ("digits", 64, {"val_fraction": 0.2})
    assert (r.bench.seeds, r.bench.criteria, r.bench.reference) == ([3], ["modularity", "random", "tail"], "tail")


def test_a_setting_list_replaces_the_default_list():
    """Lists are values, not sections: a setting's criteria replace the defaults', never extend them."""
    merged = deep_merge(DEFAULTS, {"bench": {"criteria": ["tail", "random"]}})
    assert merged["bench"]["criteria"] == ["tail", "random"]
    assert merged["bench"]["budgets"] == DEFAULTS["bench"]["budgets"]


def test_deep_merge_leaves_its_inputs_alone():
    """Every setting starts from the same defaults: merging one must not change them for the next."""
    base = {"data": {"calibration": {"samples": 50}}, "bench": {"seeds": [0, 1]}}
    over = {"data": {"calibration": {"samples": 30}}}
    merged = deep_merge(base, over)
    merged["bench"]["seeds"].append(2)
    merged["data"]["calibration"]["batches"] = 3
    assert base == {"data": {"calibration": {"samples": 50}}, "bench": {"seeds": [0, 1]}}
    assert over == {"data": {"calibration": {"samples": 30}}}


# -- overrides -----------------------------------------------------------------------------------

def test_set_on_a_recipe_key_applies_to_every_setting_over_its_own_value():
    """small.yaml's settings pretrain 3 and 6 epochs in their own keys; --set wins over both (2, not
    1: the ViT setting warms up for one epoch, which needs more than one)."""
    suite = load_suite(ROOT / "recipes/suites/small.yaml", ["bench.seeds=[0]", "pretrain.epochs=2"])
    assert len(suite.recipes) == 2
    assert [r.bench.seeds for r in suite.recipes] == [[0], [0]]
    assert [r.pretrain.epochs for r in suite.recipes] == [2, 2]


def test_set_on_a_suite_key_renames_the_suite_not_the_settings():
    suite = load_suite(ROOT / "recipes/suites/small.yaml", ["name=other"])
    assert suite.name == "other"
    assert [r.name for r in suite.recipes] == ["digits_resnet20", "digits_vit4"]


def test_a_suite_without_a_name_is_named_after_its_file(tmp_path):
    doc = suite_doc({"name": "a", "model": RESNET})
    del doc["name"]
    assert load_suite(write(tmp_path, doc, "my_suite.yaml")).name == "my_suite"


def test_a_plain_bench_recipe_is_a_suite_of_one_setting_named_after_the_recipe():
    suite = load_suite(ROOT / "recipes/bench_small.yaml", ["bench.seeds=[0]"])
    (recipe,) = suite.recipes
    assert recipe.name == suite.name == "bench_small"
    assert recipe.bench.seeds == [0] and suite.reference == recipe.bench.reference


# -- problems ------------------------------------------------------------------------------------

def test_problems_of_every_setting_are_reported_at_once_with_the_setting_in_the_key_path(tmp_path):
    problems = problems_of(write(tmp_path, suite_doc(
        {"name": "a", "model": {"nme": "cifar_resnet20"}},
        {"name": "b", "model": {"name": "cifar_resnt20"}},
        {"name": "c", "model": RESNET, "bench": {"criteria": ["tail", "modularty"]}},
        {"name": "ok", "model": RESNET})))
    assert any(p.startswith("settings.a.model.nme: unknown key") for p in problems), problems
    assert any(p.startswith("settings.b.model.name: unknown model 'cifar_resnt20'") for p in problems), problems
    assert any(p.startswith("settings.c.bench.criteria.1: unknown criterion 'modularty'") for p in problems), problems
    assert not any(p.startswith("settings.ok.") for p in problems), problems


@pytest.mark.parametrize("settings,expected", [
    ([{"model": RESNET}], "settings.0.name: required"),
    ([{"name": "a/b", "model": RESNET}], "settings.0.name: "),
    ([{"name": "", "model": RESNET}], "settings.0.name: "),
    ([{"name": 3, "model": RESNET}], "settings.0.name: "),
    ([{"name": "a", "model": RESNET}, {"name": "a", "model": RESNET}], "settings.1.name: 'a' is used twice"),
], ids=["missing", "slash", "empty", "number", "twice"])
def test_each_setting_needs_a_unique_folder_name(tmp_path, settings, expected):
    problems = problems_of(write(tmp_path, suite_doc(*settings)))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_setting_without_a_bench_section_is_refused(tmp_path):
    defaults = {k: v for k, v in DEFAULTS.items() if k != "bench"}
    problems = problems_of(write(tmp_path, suite_doc({"name": "a", "model": RESNET}, defaults=defaults)))
    assert problems == ["settings.a.bench: required (in defaults or in the setting)"]


def test_a_reference_outside_the_criteria_is_refused(tmp_path):
    problems = problems_of(write(tmp_path, suite_doc({"name": "a", "model": RESNET, "bench": {"reference": "magnitude"}})))
    assert len(problems) == 1
    assert problems[0].startswith("settings.a.bench.reference: 'magnitude' is not among bench.criteria")


def test_settings_with_different_references_are_refused(tmp_path):
    """Each setting is valid alone; the suite's statistics need one reference across them."""
    problems = problems_of(write(tmp_path, suite_doc(
        {"name": "a", "model": RESNET}, {"name": "b", "model": RESNET, "bench": {"reference": "random"}})))
    assert len(problems) == 1
    assert problems[0].startswith("bench.reference: settings compare with different references (random, tail)")


def test_a_recipe_without_bench_section_is_neither_suite_nor_bench_recipe(tmp_path):
    recipe = {"model": RESNET, **{k: v for k, v in DEFAULTS.items() if k != "bench"}}
    with pytest.raises(LayerpruneError, match=r"neither a suite \(no settings:\) nor a bench recipe"):
        load_suite(write(tmp_path, recipe, "plain.yaml"))


# -- the bench command ---------------------------------------------------------------------------

@pytest.fixture
def bench(tmp_path, monkeypatch):
    """``bench(doc)``: ``layerprune bench`` on the suite ``doc`` from an empty working directory
    with an empty base-model cache; returns the result, the --out dir and both folders."""
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cache.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(cache))
    monkeypatch.chdir(cwd)

    def invoke(doc):
        out = tmp_path / "out"
        result = runner.invoke(app, ["bench", str(write(tmp_path, doc)), "--out", str(out)])
        return result, out, cache, cwd

    return invoke


def assert_refused_without_writing(result, out, cache, cwd, problem_count):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    noun = "problem" if problem_count == 1 else "problems"
    assert f": {problem_count} {noun}\n" in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 + problem_count, result.output  # a heading, then one line per problem
    assert not out.exists() and not any(cache.iterdir()) and not any(cwd.iterdir())


def test_conftest_keeps_the_base_model_cache_out_of_the_users(request, tmp_path_factory, test_cache):
    """Every test, not only those using ``bench``, trains base models into pytest's own folders:
    its cache folder, under a key of the code, or a temporary one."""
    import os

    from layerprune.recipe.cache import cache_root

    cache = Path(os.environ["LAYERPRUNE_CACHE"])
    assert cache == test_cache and cache_root() == cache
    pytest_cache = getattr(request.config, "cache", None)
    inside = Path(pytest_cache.mkdir("layerprune")) if pytest_cache else tmp_path_factory.getbasetemp()
    assert cache.is_relative_to(inside)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LAYERPRUNE_CACHE")
        assert not cache.is_relative_to(cache_root())


def test_bench_refuses_a_suite_with_setting_problems_before_writing(bench):
    result, out, cache, cwd = bench(suite_doc({"name": "a", "model": {"name": "cifar_resnt20"}}))
    assert_refused_without_writing(result, out, cache, cwd, 1)
    assert "settings.a.model.name: unknown model 'cifar_resnt20'" in result.output


def test_bench_refuses_a_calibration_draw_that_covers_the_whole_val_split(bench):
    """digits has 1797 images; a tenth held out for validation is about 180, so 180 calibration
    samples take all of them and two seeds would score the same samples."""
    defaults = deep_merge(DEFAULTS, {"data": {"options": {"val_fraction": 0.1},
                                              "calibration": {"samples": 180, "batches": 1}}})
    result, out, cache, cwd = bench(suite_doc({"name": "a", "model": RESNET}, defaults=defaults))
    assert_refused_without_writing(result, out, cache, cwd, 1)
    assert "\n  settings.a.data.calibration.samples: 1 × 180 samples cover the whole val split" in result.output


def test_bench_refuses_an_unreachable_budget(bench):
    """Removing every removable block of ResNet-20 saves far less than 95% of its MACs (the stems
    and downsampling blocks stay)."""
    defaults = deep_merge(DEFAULTS, {"bench": {"budgets": [{"macs": 0.95}, {"k": 1}]}})
    result, out, cache, cwd = bench(suite_doc({"name": "a", "model": RESNET}, defaults=defaults))
    assert_refused_without_writing(result, out, cache, cwd, 1)
    assert "\n  settings.a.bench.budgets.0: macs 0.95 is out of reach for cifar_resnet20" in result.output


def test_bench_reports_the_preflight_problems_of_every_setting_at_once(bench):
    defaults = deep_merge(DEFAULTS, {"bench": {"budgets": [{"macs": 0.95}]}})
    result, out, cache, cwd = bench(suite_doc({"name": "a", "model": RESNET}, {"name": "b", "model": RESNET},
                                              defaults=defaults))
    assert_refused_without_writing(result, out, cache, cwd, 2)
    assert "settings.a.bench.budgets.0:" in result.output and "settings.b.bench.budgets.0:" in result.output


def test_bench_refuses_a_recipe_without_bench_section(bench):
    recipe = {"model": RESNET, **{k: v for k, v in DEFAULTS.items() if k != "bench"}}
    result, out, cache, cwd = bench(recipe)
    assert result.exit_code == 2 and "neither a suite" in result.output and "Traceback" not in result.output
    assert not out.exists() and not any(cwd.iterdir())


def test_a_misspelt_suite_key_is_matched_against_the_suite_keys(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"default": DEFAULTS, "settings": [{"name": "a", "model": RESNET}]}))
    problems = problems_of(path)
    assert problems[0].startswith("default: unknown key; did you mean 'defaults'?"), problems
    assert "cache_dir" in problems[0] and "finetune" not in problems[0]  # the suite's keys, not a recipe's


# -- layerprune validate on suites ---------------------------------------------------------------

def test_validate_checks_every_setting_of_a_suite(tmp_path):
    path = write(tmp_path, suite_doc({"name": "a", "model": RESNET}, {"name": "b", "model": RESNET}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"ok: {path} (suite s, 2 settings: a, b)"
    shown = yaml.safe_load(runner.invoke(app, ["validate", str(path), "--show", "--setting", "b"]).output)
    assert list(shown) == ["b"] and shown["b"]["model"]["name"] == "cifar_resnet20"


def test_validate_names_the_setting_and_the_key_of_a_bad_key_exit_2(tmp_path):
    path = write(tmp_path, suite_doc({"name": "good", "model": RESNET},
                                     {"name": "bad", "model": RESNET, "finetune": {"epochz": 2}}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"error: {path}: 1 problem"
    assert lines[1].strip().startswith("settings.bad.finetune.epochz: unknown key; did you mean 'epochs'?")
    # --set reaches every setting, as on bench
    both = runner.invoke(app, ["validate", str(path), "--set", "pretrain.epochs=-1"])
    assert both.exit_code == 2
    assert "settings.good.pretrain.epochs" in both.output and "settings.bad.pretrain.epochs" in both.output


def test_validate_refuses_setting_on_a_plain_recipe(tmp_path):
    result = runner.invoke(app, ["validate", str(ROOT / "recipes/quickstart.yaml"), "--setting", "a"])
    assert result.exit_code == 2 and "is a recipe, not a suite" in result.output


def test_the_cifar10_suite_validates_with_its_data(shared_data, monkeypatch):
    monkeypatch.setenv("LAYERPRUNE_DATA", str(shared_data))
    result = runner.invoke(app, ["validate", str(ROOT / "recipes/suites/cifar10.yaml")])
    assert result.exit_code == 0, result.output
    assert "2 settings: cifar10_resnet20, cifar10_resnet56" in result.output

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from layerprune.cli import app
from layerprune.recipe import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
runner = CliRunner()


def test_there_are_shipped_recipes():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "resnet56_cifar", "resnet56_cifar_scratch", "resnet56_cifar_kd", "resnet110_cifar", "vgg19_cifar100",
            "resnet50_imagenet"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path, skip_without_shared_data):
    skip_without_shared_data(path)
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_paper_recipe_has_the_paper_settings():
    r = load_recipe(ROOT / "recipes/resnet56_cifar.yaml")
    assert (r.model.name, r.model.kwargs, r.data.dataset) == ("cifar_resnet56", {"shortcut": "A"}, "cifar10")
    assert (r.criterion.name, r.criterion.params) == ("modularity", {"k": 3})
    assert (r.data.calibration.samples, r.data.calibration.batches) == (500, 5)
    assert (r.select.rule, r.select.params) == ("threshold", {"threshold": 0.03})
    assert r.finetune.optimizer == "sgd"
    # from the published checkpoint, by URL, with the statistics it was trained with; no pretraining
    assert r.model.checkpoint == ("https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/"
                                  "pretrained_models/resnet56-4bfd9763.th")
    assert r.pretrain is None and r.data.download and r.prune.repair
    assert (r.data.options["mean"], r.data.options["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    kd = load_recipe(ROOT / "recipes/resnet56_cifar_kd.yaml")
    assert kd.finetune.distill.enabled and kd.model.checkpoint == r.model.checkpoint
    scratch = load_recipe(ROOT / "recipes/resnet56_cifar_scratch.yaml")
    assert scratch.pretrain.epochs == 182 and scratch.model.checkpoint is None
    assert "recipes/resnet56_cifar_scratch.yaml" in (ROOT / "recipes/resnet56_cifar.yaml").read_text()


def write(tmp_path, recipe: dict | str, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


MINIMAL = {"model": {"name": "cifar_resnet20"}, "data": {"dataset": "digits"}, "pretrain": {"epochs": 1}}


def test_defaults_fill_in(tmp_path):
    r = load_recipe(write(tmp_path, MINIMAL))
    assert r.criterion.name == "modularity" and r.select.rule is None and r.finetune.epochs == 10
    assert r.data.calibration.split == "val" and r.prune.repair is True and r.name == "r"


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(path, ["finetune.epochs=2", "finetune.distill.enabled=true", "select.params.k=3",
                           "select.rule=count"])
    assert r.finetune.epochs == 2 and r.finetune.distill.enabled is True and r.select.params == {"k": 3}
    with pytest.raises(RecipeError, match=r"finetune.epochs: Input should be a valid integer.*'two'"):
        load_recipe(path, ["finetune.epochs=two"])


def problems_of(tmp_path, recipe, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, recipe), overrides)
    return info.value.problems


@pytest.mark.parametrize("overrides,expected", [
    (["finetune.epochs=-1"], "finetune.epochs: Input should be greater than or equal to 0 (got -1)"),
    (["data.batch_sizes=3"], "data.batch_sizes: unknown key; did you mean 'batch_size'"),
    (["model.name=cifar_resnt20"], "model.name: unknown model 'cifar_resnt20'; did you mean 'cifar_resnet20'"),
    (["data.dataset=digitz"], "data.dataset: unknown dataset 'digitz'; did you mean 'digits'"),
    (["criterion.name=modularty"], "criterion.name: unknown criterion 'modularty'; did you mean 'modularity'"),
    (["criterion.params.kk=3"], "criterion.params.kk: unknown parameter (parameters: k, threshold, top, positions)"),
    (["criterion.params.k=x"], "criterion.params.k: Input should be a valid integer"),
    (["criterion.params.k=0"], "criterion.params.k: must be an integer ≥ 1, got 0"),
    (["select.rule=thresh"], "select.rule: unknown selection rule 'thresh'; did you mean 'threshold'"),
    (["select.rule=budget", "select.params.macs=1.5"], "select.params.macs: must be a fraction in (0, 1), got 1.5"),
    (["select.rule=count"], "select.params.k: give exactly one of k or fraction"),
    (["model.checkpoint=missing.pth"], "model.checkpoint: no such file: missing.pth"),
    (["data.root=/data"], "data.root: dataset 'digits' has no root option"),
    (["pretrain=null"], "pretrain: required when model.checkpoint is not given"),
    (["finetune.optimizer=adam"], "finetune.optimizer: Input should be 'sgd' or 'adamw' (got 'adam')"),
    (["prune.steps=0"], "prune.steps: must be an integer > 0 or 'each' (got 0)"),
    (["prune.steps=all"], "prune.steps: must be an integer > 0 or 'each' (got 'all')"),
    (["device=gpu9"], "device: must be auto, cpu, cuda or cuda:N (got 'gpu9')"),
    (["finetune.precision=16"], "finetune.precision: Input should be '32', 'bf16' or 'fp16' (got '16')"),
])
def test_each_problem_names_its_key_path(tmp_path, overrides, expected):
    assert any(p.startswith(expected) for p in problems_of(tmp_path, MINIMAL, overrides)), expected
    result = runner.invoke(app, ["run", str(write(tmp_path, MINIMAL)), "--out", str(tmp_path / "run"),
                                 *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_every_problem_is_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, MINIMAL, ["finetune.epochs=-1", "model.name=nope", "criterion.name=nope",
                                               "data.workers=-2"])
    assert [p.split(":")[0] for p in problems] == ["data.workers", "finetune.epochs", "model.name", "criterion.name"]


def test_missing_sections_are_required(tmp_path):
    problems = problems_of(tmp_path, {"pretrain": {"epochs": 1}})
    assert "model: required" in problems and "data: required" in problems


@pytest.mark.parametrize("text,expected", [
    ("model: [unclosed\n", "invalid YAML at line 2"),
    ("- just\n- a list\n", "the top level must be a mapping"),
])
def test_bad_yaml_is_one_clear_line(tmp_path, text, expected):
    result = runner.invoke(app, ["validate", str(write(tmp_path, text))])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_validate_cli_prints_all_problems_and_exits_2(tmp_path):
    path = write(tmp_path, MINIMAL)
    result = runner.invoke(app, ["validate", str(path), "--set", "finetune.epochs=-1", "--set", "model.name=nope"])
    assert result.exit_code == 2
    assert "2 problems" in result.output and "finetune.epochs" in result.output and "model.name" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    assert runner.invoke(app, ["validate", str(tmp_path / "none.yaml")]).exit_code == 2
    bad_set = runner.invoke(app, ["validate", str(path), "--set", "finetune.epochs"])
    assert bad_set.exit_code == 2 and "expected KEY.PATH=VALUE" in bad_set.output


def test_show_prints_the_resolved_recipe(tmp_path):
    result = runner.invoke(app, ["validate", str(write(tmp_path, MINIMAL)), "--show"])
    assert result.exit_code == 0
    resolved = yaml.safe_load(result.stdout)
    assert Recipe.model_validate(resolved).finetune.epochs == 10


def test_docs_reference_matches_the_schema():
    from layerprune.recipe.reference import embed

    doc = (ROOT / "docs/recipes.md").read_text(encoding="utf-8")
    assert doc == embed(doc), "run: python -m layerprune.recipe.reference --write docs/recipes.md"
    for key in ("finetune.distill.alpha", "data.calibration.split", "prune.repair", "select.protect"):
        assert f"`{key}`" in doc


@pytest.mark.parametrize("override,expected", [
    ("finetune.warmup_epochs=10", "finetune.warmup_epochs: must be < epochs (10), got 10"),
    ("pretrain.milestones=[0.5, 2]", "pretrain.milestones: each must be a fraction in (0, 1)"),
])
def test_section_checks_name_the_key(tmp_path, override, expected):
    assert any(p.startswith(expected) for p in problems_of(tmp_path, MINIMAL, [override]))


def test_bench_criteria_names_are_checked(tmp_path):
    problems = problems_of(tmp_path, {**MINIMAL, "bench": {"criteria": ["modularity", "tail", "cak"], "oracle": "ablaton"}})
    assert len(problems) == 2
    assert problems[0].startswith("bench.criteria.2: unknown criterion 'cak'; did you mean 'cka'")
    assert problems[1].startswith("bench.oracle: unknown criterion 'ablaton'; did you mean 'ablation'")


def test_pretrained_paper_recipe_adapts_the_checkpoint_then_scores_like_the_paper(skip_without_shared_data):
    path = ROOT / "recipes/resnet56_cifar10_pretrained.yaml"
    skip_without_shared_data(path)
    r = load_recipe(path)
    assert r.model.name == "cifar_resnet56" and Path(r.model.checkpoint).is_file()
    assert r.pretrain is not None and r.pretrain.epochs > 0  # trained from the checkpoint on these images
    assert (r.data.dataset, r.data.options["augment"], r.data.options["in_memory"]) == ("imagefolder", "crop_flip", True)
    assert (r.data.options["mean"], r.data.options["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert (r.criterion.name, r.criterion.params) == ("modularity", {"k": 3})
    assert (r.data.calibration.samples, r.data.calibration.batches) == (500, 5)
    assert (r.select.rule, r.select.params) == ("threshold", {"threshold": 0.03})

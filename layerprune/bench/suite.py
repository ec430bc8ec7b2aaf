"""Benchmark suites: criteria compared over many settings (model × data × pretraining × budgets ×
seeds), read from one YAML file.

A suite file names shared ``defaults`` (any recipe keys) and a list of ``settings``; each setting
is the defaults deep-merged with its own keys, validated as a full recipe with a ``bench:``
section. A plain bench recipe (no ``settings:``) is a suite of one setting.

.. code-block:: yaml

    name: suite_small
    defaults:                      # recipe keys every setting starts from
      data: {batch_size: 64, calibration: {split: val, samples: 120, batches: 1}}
      bench: {criteria: [modularity, tail, ablation], budgets: [{macs: 0.3}], seeds: [0, 1]}
    settings:
      - name: digits_resnet20      # a recipe: model, data, pretrain, ... (merged over defaults)
        model: {name: cifar_resnet20}
        data: {dataset: digits}
        pretrain: {epochs: 2, lr: 0.1}

``--set KEY=VALUE`` on a suite sets a suite key (``name``, ``cache_dir``, ...) or, for recipe
keys (``bench.seeds=[0]``, ``finetune.epochs=2``), that key in every setting.

>>> suite = load_suite("recipes/suites/small.yaml", ["bench.seeds=[0]"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from layerprune.errors import LayerpruneError
from layerprune.recipe.load import RecipeError, apply_overrides, pydantic_problems, read_yaml, validate_recipe
from layerprune.recipe.schema import Recipe, Suite
from layerprune.tasks import TASKS

SETTING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid onto a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def is_suite_file(raw: dict[str, Any]) -> bool:
    return "settings" in raw


def load_suite(path: str | Path, overrides: Sequence[str] = (), *, only: Sequence[str] = (),
               strict_plugins: bool = False) -> Suite:
    """The validated suite at ``path`` (a suite file, or a bench recipe as a one-setting suite);
    :class:`~layerprune.recipe.RecipeError` lists every problem, each with its key path
    (``settings.NAME.pretrain.epochs: ...``). ``only``: keep these settings (by name)."""
    from layerprune.recipe.load import load_recipe

    raw = read_yaml(path)
    if not is_suite_file(raw):
        recipe = load_recipe(path, overrides, strict_plugins=strict_plugins)
        if recipe.bench is None:
            raise LayerpruneError(f"{path}: neither a suite (no settings:) nor a bench recipe (no bench:); "
                                  "see docs/results.md")
        _check_only(only, [recipe.name])
        return Suite.of_recipe(recipe)

    suite_keys = set(Suite.model_fields)
    own = [o for o in overrides if o.partition("=")[0].split(".")[0].strip() in suite_keys]
    each = [o for o in overrides if o not in own]
    raw = apply_overrides(raw, own)
    raw.setdefault("name", Path(path).stem)
    problems: list[str] = []
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(str(path), pydantic_problems(exc, Suite)) from None
    recipes: list[Recipe] = []
    seen: set[str] = set()
    named = [s.get("name") for s in suite.settings]
    _check_only(only, [n for n in named if isinstance(n, str)])
    for i, setting in enumerate(suite.settings):
        name = setting.get("name")
        if not isinstance(name, str) or not SETTING_NAME.match(name):
            problems.append(f"settings.{i}.name: required, letters, digits, '_', '-' or '.' (it names a folder), "
                            f"got {name!r}")
            continue
        if name in seen:
            problems.append(f"settings.{i}.name: {name!r} is used twice")
            continue
        seen.add(name)
        if only and name not in only:
            continue  # not run: not checked either
        merged = apply_overrides(deep_merge(suite.defaults, setting), each)
        merged["plugins"] = list(dict.fromkeys(suite.plugins + list(merged.get("plugins") or [])))
        merged.pop("output_dir", None)  # a setting's directory is the suite's settings/NAME
        recipe, found = validate_recipe(merged, strict_plugins=strict_plugins)
        if recipe is not None and recipe.bench is None:
            found.append("bench: required (in defaults or in the setting)")
        problems.extend(f"settings.{name}.{p}" for p in found)
        if recipe is not None and not found:
            recipe._source = str(path)
            recipes.append(recipe)
    references = {r.bench.reference for r in recipes}
    if len(references) > 1:
        problems.append(f"bench.reference: settings compare with different references ({', '.join(sorted(references))}); "
                        "the suite's statistics need one")
    metrics = {r.name: TASKS[r.model.task_name].metric_name for r in recipes}
    if len(set(metrics.values())) > 1:
        problems.append("settings: their tasks measure different metrics (" + ", ".join(
            f"{name}: {metric}" for name, metric in metrics.items()) + "); a suite ranks its criteria on one "
            "metric: put language models and classifiers in suites of their own")
    if problems:
        raise RecipeError(str(path), problems)
    suite._recipes, suite._source = recipes, str(path)
    return suite


def _check_only(only: Sequence[str], names: list[str]) -> None:
    from layerprune.registry import did_you_mean

    for name in only:
        if name not in names:
            raise LayerpruneError(f"--setting: {did_you_mean(name, names, 'setting')}")


__all__ = ["Suite", "deep_merge", "is_suite_file", "load_suite"]

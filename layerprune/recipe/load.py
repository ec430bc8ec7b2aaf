"""Read a recipe: YAML → ``--set`` overrides → pydantic schema → names and parameters checked
against the registries. Every problem is collected and reported at once, as dotted key paths.

>>> recipe = load_recipe("recipes/quickstart.yaml", ["finetune.epochs=1"])  # doctest: +SKIP
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from layerprune.errors import LayerpruneError
from layerprune.params import check_parameters, short
from layerprune.recipe.schema import Recipe
from layerprune.registry import did_you_mean


class RecipeError(LayerpruneError):
    """A recipe with problems: one line per problem, each naming its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n" + "\n".join(f"  {p}" for p in problems))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LayerpruneError(f"recipe {str(path)!r}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LayerpruneError(f"recipe {str(path)!r}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LayerpruneError(f"recipe {str(path)!r}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["finetune.epochs=2", "data.options.seed=3"]``: set dotted keys (values parsed as YAML)."""
    for item in overrides:
        path, sep, value = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise LayerpruneError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. finetune.epochs=2")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LayerpruneError(f"--set {item!r}: cannot parse the value as YAML") from None
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise LayerpruneError(f"--set {item!r}: {'.'.join(keys[:i + 1])} is not a section")
            node = child
        node[keys[-1]] = parsed
    return raw


def _fields_at(loc: tuple[Any, ...], schema: type[BaseModel] = Recipe) -> list[str] | None:
    """The keys allowed where ``loc`` points (for "did you mean" on unknown keys)."""
    model: Any = schema
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type)] or [ann]
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return list(model.model_fields)


def pydantic_problems(error: ValidationError, schema: type[BaseModel] = Recipe) -> list[str]:
    """One line per error of ``schema``'s validation, each naming its dotted key path."""
    problems = []
    for e in error.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1], schema) or []
            message = did_you_mean(str(loc[-1]), known, "key").removeprefix(f"unknown key {str(loc[-1])!r}")
            problems.append(f"{path}: unknown key{message}")
            continue
        if e["type"] == "missing":
            problems.append(f"{path}: required")
            continue
        if not loc:  # a check across sections states its own key path
            problems.append(message)
            continue
        key, sep, rest = message.partition(": ")
        if sep and key in (_fields_at(loc, schema) or []):  # a section's own check names one of its keys
            problems.append(f"{path}.{key}: {rest}")
            continue
        got = "" if isinstance(e.get("input"), dict) else f" (got {short(e.get('input'))})"
        problems.append(f"{path}: {message}{got}")
    return problems


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Names and parameters checked against the model, dataset, criterion and rule registries.

    Works on the raw mapping (missing or mistyped values are skipped: the schema reports them),
    so that these problems are reported together with the schema's.
    """
    from layerprune.criteria.base import instantiate, task_problem
    from layerprune.criteria.catalog import CRITERIA, load_entry_points
    from layerprune.criteria.selection import RULES, rule_problems
    from layerprune.data import DATASETS, dataset_options
    from layerprune.models import CIFAR_MODELS, unknown_model_message

    problems: list[str] = []
    model = _section(raw, "model")
    name, checkpoint = model.get("name"), model.get("checkpoint")
    if isinstance(name, str) and name not in CIFAR_MODELS:  # the project's own are known without timm
        import timm

        if not timm.is_model(name):
            problems.append(f"model.name: {unknown_model_message(name)}")
    if isinstance(checkpoint, str) and "$" not in checkpoint:
        from layerprune.models.remote import is_url, url_problem

        if is_url(checkpoint):  # fetched (once, into torch hub's cache) when the run starts
            if problem := url_problem(checkpoint):
                problems.append(f"model.checkpoint: {problem}")
        elif not Path(checkpoint).is_file():
            problems.append(f"model.checkpoint: no such file: {checkpoint}")

    data = _section(raw, "data")
    dataset = data.get("dataset")
    problems += _language_model_problems(raw, model, dataset)
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            problems.append(f"data.dataset: {did_you_mean(dataset, DATASETS.names(), 'dataset')}")
        else:
            accepted = dataset_options(dataset)
            for key in ("root", "download"):
                if data.get(key) not in (None, False) and key not in accepted:
                    problems.append(f"data.{key}: dataset {dataset!r} has no {key} option")
            for key in _section(data, "options"):
                if key in ("root", "download"):
                    problems.append(f"data.options.{key}: set data.{key} instead")
                elif key not in accepted:
                    problems.append(f"data.options.{key}: unknown option of {dataset!r} "
                                    f"(options: {', '.join(k for k in accepted if k not in ('root', 'download'))})")

    load_entry_points()
    task = model.get("task") or ("causal-lm" if model.get("hf") is not None or model.get("hf_config") is not None
                                 else "image-classification")
    crit = _section(raw, "criterion")
    crit_name, crit_params = crit.get("name", "modularity"), _section(crit, "params")
    if isinstance(crit_name, str):
        if crit_name not in CRITERIA:
            problems.append(f"criterion.name: {did_you_mean(crit_name, CRITERIA.names(), 'criterion')}")
        else:
            try:
                target = CRITERIA.get(crit_name)
            except LayerpruneError as exc:
                problems.append(f"criterion.name: {exc}")
            else:
                if problem := task_problem(target, task):
                    problems.append(f"criterion.name: {problem.removeprefix('criterion ')}")
                fn = target.__init__ if isinstance(target, type) else target
                found = check_parameters(fn, crit_params, "criterion.params")
                problems.extend(found)
                if not found:
                    try:
                        instantiate(target, CRITERIA.canonical(crit_name), dict(crit_params))
                    except LayerpruneError as exc:
                        message = str(exc).removeprefix(f"criterion {crit_name!r}: ")
                        key, sep, rest = message.partition(": ")
                        where = f"criterion.params.{key}" if sep and key in crit_params else "criterion.params"
                        problems.append(f"{where}: {rest if where.endswith(key) and sep else message}")

    bench = _section(raw, "bench")
    named = [(f"bench.criteria.{i}", n) for i, n in enumerate(bench.get("criteria") or [])]
    named += [(f"bench.{key}", bench[key]) for key in ("oracle", "reference", "depth_width") if bench.get(key) is not None]
    for where, name in named:
        if isinstance(name, str) and name not in CRITERIA:
            problems.append(f"{where}: {did_you_mean(name, CRITERIA.names(), 'criterion')}")
        elif isinstance(name, str) and (problem := _task_problem_of(name, task)):
            problems.append(f"{where}: {problem.removeprefix('criterion ')}")

    sel = _section(raw, "select")
    rule, rule_params = sel.get("rule"), _section(sel, "params")
    if isinstance(rule, str):
        if rule not in RULES:
            problems.append(f"select.rule: {did_you_mean(rule, RULES.names(), 'selection rule')}")
        else:
            problems.extend(rule_problems(rule, rule_params, "select.params"))
    elif rule is None and rule_params:
        problems.append("select.params: set select.rule too (without a rule, the criterion's default rule is used)")
    return problems


def _task_problem_of(name: str, task: str) -> str | None:
    from layerprune.criteria.base import task_problem
    from layerprune.criteria.catalog import CRITERIA

    try:
        return task_problem(CRITERIA.get(name), task)
    except LayerpruneError:
        return None  # a criterion that cannot be loaded is reported where it is named


def _language_model_problems(raw: dict[str, Any], model: dict[str, Any], dataset: Any) -> list[str]:
    """A transformers model (``model.hf``, ``model.hf_config``): the extra installed, the folder or
    configuration valid, text data, and no stage that covers timm models only; text data for a
    timm model."""
    from layerprune.errors import MissingExtraError
    from layerprune.models.hf import config_problems, folder_problem, is_local, require_transformers

    hf, config = model.get("hf"), model.get("hf_config")
    if hf is None and config is None:
        if _section(raw, "finetune").get("lora") is not None and isinstance(model.get("name"), str):
            return ["finetune.lora: low-rank adapters cover transformers models (model.hf or model.hf_config), "
                    "not timm models"]
        if dataset == "text" and isinstance(model.get("name"), str):
            return ["data.dataset: text is for a language model; give model.hf (a transformers folder or hub id) "
                    "or model.hf_config (a new one) instead of model.name"]
        return []
    key = "model.hf" if hf is not None else "model.hf_config"
    try:
        require_transformers()
    except MissingExtraError as exc:
        return [f"{key}: {exc}"]
    problems = []
    if isinstance(config, dict) and hf is None:
        problems += config_problems(config, "model.hf_config")
    if isinstance(hf, str) and "$" not in hf and is_local(hf) and (problem := folder_problem(hf)):
        problems.append(f"model.hf: {problem}: {hf}")
    if isinstance(dataset, str) and dataset != "text":
        problems.append(f"data.dataset: a causal language model trains and is measured on text (dataset: text), "
                        f"not {dataset!r}")
    if _section(_section(raw, "prune"), "width"):
        problems.append("prune.width: channel pruning covers the conv blocks of timm models, not transformers models")
    if _section(raw, "export").get("formats"):
        problems.append("export.formats: exports cover timm models; a transformers model's model/ folder is "
                        "already its library's own format (from_pretrained)")
    return problems


def local_instead(key: str, what: str = "a local file", value: str = "PATH") -> str:
    """What to do when a download for recipe key ``key`` fails: give ``what`` with ``--set``."""
    return f"give {what} instead: --set {key}={value}"


# Keys that hold paths: ``$VAR`` and ``${VAR}`` in them are replaced by the environment's values, so
# one recipe serves every machine that sets, e.g., LAYERPRUNE_DATA to its own data folder. A key
# may hold one path, a list of them (``data.options.files``) or a mapping of lists (``splits``).
PATH_KEYS = (("model", "checkpoint"), ("model", "hf"), ("data", "root"), ("output_dir",),
             ("data", "options", "files"), ("data", "options", "splits"), ("data", "options", "tokenizer"))


def expand_paths(raw: dict[str, Any]) -> list[str]:
    """Expand environment variables in the path keys of ``raw`` (in place); one problem per
    variable that is not set, naming the key."""
    import os
    import re

    problems: list[str] = []

    def expand(value: Any, key: str) -> Any:
        if isinstance(value, list):
            return [expand(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: expand(v, f"{key}.{k}") for k, v in value.items()}
        if not isinstance(value, str) or "$" not in value:
            return value
        names = [a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", value)]
        unset = [name for name in names if name not in os.environ]
        problems.extend(f"{key}: environment variable {name} is not set (it is used in {value!r}); "
                        f"set it, or give the path with --set {key}=PATH" for name in unset)
        return value if unset else os.path.expandvars(value)

    for keys in PATH_KEYS:
        node = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = expand(node[keys[-1]], ".".join(keys))
    return problems


def validate_recipe(raw: dict[str, Any], *, strict_plugins: bool = False) -> tuple[Recipe | None, list[str]]:
    """``raw`` (a recipe's mapping, overrides applied) as a :class:`Recipe`, with every problem
    found: schema and registries. Plugins it names are loaded first (their criteria become valid
    names); environment variables in path keys are expanded (:data:`PATH_KEYS`). The recipe is
    ``None`` when the schema refused it."""
    from layerprune.criteria.catalog import load_plugins

    plugins = raw.get("plugins") or []
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        load_plugins(plugins, strict=strict_plugins)
    problems: list[str] = expand_paths(raw)
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc))
    problems.extend(semantic_problems(raw))
    return recipe, problems


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, strict_plugins: bool = False) -> Recipe:
    """The validated recipe at ``path`` with ``overrides`` applied; :class:`RecipeError` lists
    every problem. Plugins named in the recipe are loaded first (their criteria become valid
    names)."""
    raw = apply_overrides(read_yaml(path), overrides)
    raw.setdefault("name", Path(path).stem)
    recipe, problems = validate_recipe(raw, strict_plugins=strict_plugins)
    if problems or recipe is None:
        raise RecipeError(str(path), problems)
    recipe._source = str(path)
    return recipe

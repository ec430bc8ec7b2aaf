"""Recipes: a YAML file, validated by a pydantic schema, run as stages in a resumable run directory."""

from layerprune.recipe.load import RecipeError, apply_overrides, load_recipe, read_yaml
from layerprune.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "apply_overrides", "load_recipe", "read_yaml", "run_recipe"]


def run_recipe(*args, **kwargs):
    """See :func:`layerprune.recipe.runner.run_recipe` (imported lazily: it pulls in training)."""
    from layerprune.recipe.runner import run_recipe as _run

    return _run(*args, **kwargs)

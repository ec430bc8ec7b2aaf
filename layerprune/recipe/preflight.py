"""Before the run directory exists: build the data and the model and check that the plan can be
met, so that a recipe that cannot run fails in seconds and leaves nothing behind."""

from __future__ import annotations

from layerprune import distributed
from layerprune.criteria.selection import max_reduction
from layerprune.recipe.load import RecipeError
from layerprune.recipe.resources import Resources
from layerprune.surgery.find import find_blocks


def preflight(res: Resources) -> None:
    """Raise :class:`RecipeError` listing every problem the recipe would hit, before any training."""
    recipe = res.recipe
    res.device  # noqa: B018 - an unavailable device is the first thing to report
    res.build_data()
    model = res.new_model(recipe.model.checkpoint)
    blocks = find_blocks(model, res.example_input())
    names = {b.name for b in blocks}
    problems = [f"select.protect: unknown block {p!r} (see: layerprune inspect {recipe.model.name})"
                for p in recipe.select.protect if p not in names]
    sel = recipe.select
    if sel.rule == "budget":
        key = "params" if "params" in sel.params else "macs"
        target = float(sel.params[key])
        reachable = max_reduction(blocks, key, protect=sel.protect, collapse=sel.collapse)
        if target > reachable + 1e-12:
            problems.append(f"select.params.{key}: {target:g} is out of reach for {recipe.model.name}; "
                            f"removing every allowed block saves {reachable:.3f}")
    training = {name: section for name in ("pretrain", "finetune")
                if (section := getattr(recipe, name)) is not None}
    on_cpu = res.device.type == "cpu"
    if on_cpu and distributed.active():
        problems += [f"{name}.sync_batchnorm: {distributed.SYNC_BATCHNORM_ON_CPU}"
                     for name, section in training.items() if section.sync_batchnorm]
    if problems:
        raise RecipeError(recipe.source, problems)
    for name, section in training.items():
        if on_cpu and section.epochs and section.precision == "fp16":
            res.log(f"[yellow]warning:[/] {name}.precision: fp16 has no fast CPU kernels (about 75× "
                    "slower than 32 in docs/performance.md); bf16 is the CPU's mixed precision")

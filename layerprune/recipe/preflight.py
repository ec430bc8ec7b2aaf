"""Before the run directory exists: build the data and the model and check that the plan can be
met, so that a recipe that cannot run fails in seconds and leaves nothing behind."""

from __future__ import annotations

from layerprune import distributed
from layerprune.criteria.selection import budget_target, max_reduction
from layerprune.errors import LayerpruneError
from layerprune.recipe.load import RecipeError
from layerprune.recipe.resources import Resources
from layerprune.recipe.schema import SelectSection
from layerprune.surgery.find import Block, find_blocks


def unreachable(blocks: list[Block], key: str, target: float, select: SelectSection, model: str) -> str | None:
    """What is wrong with a ``key`` (params, macs, latency or layers) reduction ``target`` that removing every
    allowed block cannot reach (for the caller to prefix with the key and value); ``None`` when
    it can be reached."""
    reachable = max_reduction(blocks, key, protect=select.protect, collapse=select.collapse)
    if target <= reachable + 1e-12:
        return None
    return f"is out of reach for {model}; removing every allowed block saves {reachable:.3f}"


def _missing_extras(recipe) -> list[str]:
    """Optional extras the recipe needs but this environment lacks (found now, not at the end)."""
    from layerprune.errors import MissingExtraError
    from layerprune.export.formats import check_formats

    problems = []
    try:
        check_formats(recipe.export.formats)
    except MissingExtraError as exc:
        problems.append(f"export.formats: {exc}")
    if recipe.logging.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            problems.append("logging.tensorboard: needs tensorboard, in the optional extra [tensorboard]: "
                            "pip install 'layerprune[tensorboard]'")
    return problems


def _fetch(res: Resources) -> list[str]:
    problems = []
    for get in (res.build_data, res.fetch_checkpoint):
        try:
            get()
        except LayerpruneError as exc:
            problems.append(str(exc))
    return problems


def fetch_inputs(res: Resources) -> None:
    """The data set and the checkpoint, downloaded first where the recipe asks for that: both are
    tried, so that a machine without network hears of everything it could not fetch at once.
    Downloads hold one lock per user cache (torchrun's ranks, or runs started side by side, would
    otherwise write the same archive at once): the first process fetches, the others then find
    the files."""
    from layerprune.lock import DirectoryLock
    from layerprune.models.remote import is_url
    from layerprune.recipe.cache import cache_root

    if not (res.recipe.data.download or is_url(res.recipe.model.checkpoint)):
        problems = _fetch(res)
    else:
        with DirectoryLock.wait_for(cache_root() / "locks" / "downloads", log=res.log,
                                    doing="downloading the same files"):
            problems = _fetch(res)
    if len(problems) == 1:
        raise LayerpruneError(problems[0])
    if problems:
        raise RecipeError(res.recipe.source, problems)


def preflight(res: Resources) -> list[Block]:
    """Raise :class:`RecipeError` listing every problem the recipe would hit, before any training;
    return the model's blocks (found on the model the recipe starts from)."""
    recipe = res.recipe
    res.device  # noqa: B018 - an unavailable device is the first thing to report
    fetch_inputs(res)
    model = res.new_model(recipe.model.checkpoint)
    blocks = find_blocks(model, res.example_input(), level=recipe.select.level)
    names = {b.name for b in blocks}
    problems = [f"select.protect: unknown block {p!r} (see: layerprune inspect {recipe.model.name or 'hf:' + (recipe.model.hf or 'FOLDER')})"
                for p in recipe.select.protect if p not in names]
    sel = recipe.select
    if sel.rule == "budget":
        key, target = budget_target(sel.params)
        if key == "latency":  # each block's share, timed where the budget says (random weights time the same)
            blocks = res.pruner().blocks(model, res.example_input(), blocks)
        if problem := unreachable(blocks, key, float(target), sel, recipe.model.label):
            problems.append(f"select.params.{key}: {target:g} {problem}")
    if recipe.prune.width is not None:
        from layerprune.surgery.width import width_blocks

        if not width_blocks(model, res.example_input()):
            problems.append(f"prune.width: {recipe.model.name} has no block with a conv feeding another, so no "
                            "channel can be cut inside a branch (width pruning covers residual conv blocks)")
    training = {name: section for name in ("pretrain", "finetune")
                if (section := getattr(recipe, name)) is not None}
    on_cpu = res.device.type == "cpu"
    if on_cpu and distributed.active():
        problems += [f"{name}.sync_batchnorm: {distributed.SYNC_BATCHNORM_ON_CPU}"
                     for name, section in training.items() if section.sync_batchnorm]
    problems += _missing_extras(recipe)
    if problems:
        raise RecipeError(recipe.source, problems)
    for name, section in training.items():
        if on_cpu and section.epochs and section.precision == "fp16":
            res.log(f"[yellow]warning:[/] {name}.precision: fp16 has no fast CPU kernels (about 75× "
                    "slower than 32 in docs/performance.md); bf16 is the CPU's mixed precision")
    return blocks

"""``layerprune export``: a pruned-model folder or a run directory → checked exports. A run's
own evaluation samples are what the exports are checked on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerprune.errors import LayerpruneError
from layerprune.export import ExportResult, export_model
from layerprune.recipe.load import load_recipe
from layerprune.recipe.resources import Resources
from layerprune.recipe.rundir import RECIPE_FILE
from layerprune.surgery.spec import CONFIG_FILE, is_pruned_folder


def locate(source: str | Path) -> tuple[Path, Path | None]:
    """The pruned-model folder, and the run directory it belongs to (``None`` for a bare folder)."""
    source = Path(source)
    if not source.is_dir():
        raise LayerpruneError(f"{source}: no such folder (give a pruned-model folder or a run directory)")
    for folder in (source, source / "model"):
        if is_pruned_folder(folder):
            return folder, folder.parent if (folder.parent / RECIPE_FILE).is_file() else None
    raise LayerpruneError(f"{source}: neither a pruned-model folder ({CONFIG_FILE}) nor a run directory with one "
                          "in model/")


def export_path(source: str | Path, formats: list[str], *, count: int = 64, **kwargs: Any) -> ExportResult:
    """:func:`~layerprune.export.export_model` on ``source``, checked on ``count`` samples of the
    run's evaluation split when ``source`` belongs to a run (else random inputs)."""
    folder, run = locate(source)
    if run is None:
        return export_model(folder, formats, count=count, **kwargs)
    samples = Resources(load_recipe(run / RECIPE_FILE)).samples(count)
    return export_model(folder, formats, samples=samples, origin=f"{len(samples)} samples of the run's evaluation split",
                        **kwargs)

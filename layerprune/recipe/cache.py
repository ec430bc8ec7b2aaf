"""Trained base models, kept once per key of everything that determines them.

A recipe's (or a bench setting's) base model depends on the model (name, kwargs, checkpoint
content), the data (data set, options, batch size), the pretraining section and the recipe seed:
that is its key. Criteria, budgets, seeds, finetuning and the suite it runs in do not change it,
so every trial, rerun and suite that needs the same base reuses one file, and ``layerprune run``
takes the base ``layerprune bench`` trained for its key instead of pretraining again; a changed
key trains a new one beside it.

Where: the suite's ``cache_dir``, else ``$LAYERPRUNE_CACHE``, else the user's cache folder
(``$XDG_CACHE_HOME/layerprune``, ``~/.cache/layerprune``). An entry is complete once its folder
``bases/MODEL-DATA-HASH/`` exists: training happens in ``….partial/`` (a killed pretraining
resumes from its epoch checkpoint there) and is renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from layerprune.io import make_dir, write_json
from layerprune.recipe.schema import Recipe

CACHE_ENV = "LAYERPRUNE_CACHE"
WEIGHTS = "pretrained.pth"


def cache_root(configured: str | None = None) -> Path:
    """The cache folder: ``configured``, else ``$LAYERPRUNE_CACHE``, else the user's cache folder."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") or Path.home() / ".cache"
    return Path(base) / "layerprune"


def base_key(recipe: Recipe) -> dict[str, Any]:
    """Everything that determines a setting's trained base model: with ``model.checkpoint``, the
    checkpoint's content (its SHA-256), not its path."""
    d = recipe.data
    m = recipe.model
    key = {"model": m.label, "kwargs": m.kwargs,
           "data": {"dataset": d.dataset, "options": d.options, "batch_size": d.batch_size},
           "pretrain": recipe.pretrain.model_dump(mode="json") if recipe.pretrain else None,
           "seed": recipe.seed}
    if m.is_hf:  # the configuration a new model is built from, or the model loaded; and its task
        key.update(hf=m.hf, hf_config=m.hf_config, task=m.task_name)
    if d.root is not None:  # another folder may hold other images
        key["data"]["root"] = str(Path(d.root).expanduser().resolve())
    if recipe.model.checkpoint is not None:
        from layerprune.models.remote import local_checkpoint
        from layerprune.recipe.load import local_instead

        key["checkpoint"] = file_digest(local_checkpoint(recipe.model.checkpoint, how=local_instead("model.checkpoint")))
    return key


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BaseCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "bases"

    def entry(self, recipe: Recipe) -> Path:
        key = base_key(recipe)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", recipe.model.name or recipe.model.hf
                      or recipe.model.hf_config["model_type"]).strip("_.")
        return self.root / f"{name}-{recipe.data.dataset}-{digest}"

    def weights(self, recipe: Recipe) -> Path:
        return self.entry(recipe) / WEIGHTS

    def has(self, recipe: Recipe) -> bool:
        return self.weights(recipe).is_file()

    def lock_dir(self, recipe: Recipe) -> Path:
        """The folder whose lock a process holds while it trains this base (never moved)."""
        return self.root.parent / "locks" / self.entry(recipe).name

    def partial(self, recipe: Recipe) -> Path:
        """Where the base is trained; its ``key.json`` says what it is."""
        work = self.entry(recipe).with_name(self.entry(recipe).name + ".partial")
        make_dir(work)
        write_json(work / "key.json", base_key(recipe))
        return work

    def commit(self, recipe: Recipe) -> Path:
        """Move a finished ``partial`` folder into place (another process's copy, if it won, stays)."""
        work, final = self.partial(recipe), self.entry(recipe)
        for leftover in work.glob("*.ckpt"):
            leftover.unlink()
        try:
            os.replace(work, final)
        except OSError:  # the same base finished elsewhere first: keep that one
            shutil.rmtree(work, ignore_errors=True)
        return final


__all__ = ["BaseCache", "CACHE_ENV", "base_key", "cache_root"]

"""Run directories: one per run, never shared by two different recipes, resumable stage by stage.

A run directory holds the resolved recipe (``recipe.yaml``) and ``state.json`` (the finished
stages). Running the same resolved recipe again resumes; a different recipe aimed at the same
directory is refused; ``fresh=True`` starts over in a new directory beside it (``NAME-2``, ...)
and leaves the old run as it is. One process at a time: the directory is locked while it is open
(:mod:`layerprune.lock`), and what a killed run half-wrote is swept away before anything else.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from layerprune.errors import LayerpruneError
from layerprune.io import remove_partial, write_json, write_text
from layerprune.lock import LOCK_FILE, DirectoryLock
from layerprune.recipe.schema import Recipe

RECIPE_FILE, STATE_FILE = "recipe.yaml", "state.json"


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} → {b!r}"


def _without(tree: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def is_empty(path: Path) -> bool:
    """Missing, or holding nothing but a lock file (left by a run killed before it wrote anything)."""
    return not path.is_dir() or all(p.name == LOCK_FILE for p in path.iterdir())


def unused_beside(base: Path) -> Path:
    """``base`` when it is missing or empty, else the first free ``NAME-2``, ``NAME-3``, ... beside it."""
    path, n = base, 2
    while path.exists() and not is_empty(path):
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


@contextmanager
def claimed(path: Path, *, lock: bool = True) -> Iterator[DirectoryLock | None]:
    """``path`` locked for this process (created if missing), with what killed writes left there
    swept away. When the body fails, the lock is released and a folder this call created is
    removed again if it is still empty. ``lock=False``: a caller above holds the lock."""
    created = not path.exists()
    held = DirectoryLock.acquire(path) if lock else None
    try:
        if held is not None:
            remove_partial(path)
        yield held
    except BaseException:
        if held is not None:
            held.release()
        if created and is_empty(path):
            shutil.rmtree(path, ignore_errors=True)
        raise


class RunDir:
    def __init__(self, path: Path, recipe: Recipe, lock: DirectoryLock | None = None) -> None:
        self.path = path
        self.recipe = recipe
        self.lock = lock

    @classmethod
    def open(cls, recipe: Recipe, out: str | None = None, *, fresh: bool = False,
             ignore: tuple[str, ...] = (), lock: bool = True) -> "RunDir":
        """``ignore``: dotted keys that may change between runs in this directory (the bench's
        lists of criteria, budgets and seeds: each trial is a file of its own). ``lock=False``: the
        caller holds a lock above it (a bench's settings); call :meth:`close` when done."""
        base = Path(out or recipe.output_dir or f"runs/{recipe.name}")
        resolved = recipe.model_dump(mode="json")
        path = unused_beside(base) if fresh else base
        with claimed(path, lock=lock) as held:
            if not fresh and not is_empty(path):
                saved_file = path / RECIPE_FILE
                if not saved_file.is_file():
                    raise LayerpruneError(f"{path} exists and is not a layerprune run directory; choose another --out")
                saved = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
                try:  # keys added to the schema since that run was saved take their defaults
                    saved = Recipe.model_validate(saved).model_dump(mode="json")
                except ValueError:
                    pass  # compare as written; the first difference names the key
                diff = _first_difference(_without(saved, ignore), _without(resolved, ignore))
                if diff:
                    raise LayerpruneError(
                        f"{path} holds a run of a different recipe ({diff}); rerun with --fresh for a new "
                        "run directory, or --out DIR")
            path.mkdir(parents=True, exist_ok=True)
            if ignore or not (path / RECIPE_FILE).is_file():  # the lists that may change: as last run
                write_text(path / RECIPE_FILE, yaml.safe_dump(resolved, sort_keys=False))
        return cls(path, recipe, held)

    def close(self) -> None:
        """Release the directory's lock (if this object holds it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- state --------------------------------------------------------------------------------
    def done(self) -> list[str]:
        f = self.path / STATE_FILE
        return json.loads(f.read_text(encoding="utf-8"))["done"] if f.is_file() else []

    def is_done(self, stage: str) -> bool:
        return stage in self.done()

    def mark_done(self, stage: str) -> None:
        done = self.done()
        if stage not in done:
            write_json(self.path / STATE_FILE, {"done": done + [stage]})

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

"""One generic registry, used for datasets, criteria and selection rules.

Entries are objects registered with a decorator or directly, or lazy ``"module:attr"`` strings
imported on first use. Registering a taken name is an error unless it is the same object; an
unknown name raises :class:`UnknownNameError` with a "did you mean" hint and the known names.

>>> shapes = Registry("shape")
>>> @shapes.register("square", aliases=["sq"])
... def square(side): return side * side
>>> shapes.get("sq")(3)
9
"""

from __future__ import annotations

import contextlib

import difflib
import inspect
import importlib
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

from layerprune.errors import LayerpruneError, UnknownNameError

T = TypeVar("T")

_MISSING = object()


@dataclass
class _Entry:
    target: Any  # the object, or a "module:attr" string while still lazy
    origin: str
    lazy: bool


def _import_target(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _spec_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def did_you_mean(name: str, known: list[str], kind: str, *, listing: str | None = None) -> str:
    """The message for an unknown ``name``: close matches, then the known names (or ``listing``,
    a hint on how to list them when there are too many to print)."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if listing is None:
        listing = "known: " + (", ".join(sorted(known)) if known else "none")
    return f"unknown {kind} {name!r}{hint} ({listing})"


class Registry(Generic[T]):
    """Name → object mapping with aliases, lazy entries and helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        obj: Any = _MISSING,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        origin: str = "builtin",
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is _MISSING:

            def decorator(fn: T) -> T:
                self.register(name or getattr(fn, "__name__", None), fn, aliases=aliases, origin=origin)
                return fn

            return decorator
        if not name:
            raise LayerpruneError(f"{self.kind} registry: an entry needs a name")
        lazy = isinstance(obj, str) and ":" in obj
        self._add(name, _Entry(obj, origin, lazy))
        for alias in aliases:
            self._add_alias(alias, name)
        return obj

    def register_lazy(self, name: str, target: str, *, aliases=(), origin: str = "builtin") -> None:
        """Register ``"module:attr"``, imported the first time ``name`` is asked for."""
        if ":" not in target:
            raise LayerpruneError(f"{self.kind} {name!r}: lazy target {target!r} must be 'module:attr'")
        self._add(name, _Entry(target, origin, lazy=True))
        for alias in aliases:
            self._add_alias(alias, name)

    def _add(self, name: str, entry: _Entry) -> None:
        if name in self._aliases:
            raise LayerpruneError(f"{self.kind} {name!r} is already an alias of {self._aliases[name]!r}")
        old = self._entries.get(name)
        if old is not None and old.lazy and not entry.lazy and old.target == _spec_of(entry.target):
            # Importing a lazy entry's module registered the very object it points to (a plugin
            # module that also uses the decorator): keep the entry, and its origin, loaded.
            old.target, old.lazy = entry.target, False
            return
        if old is not None and old.target is not entry.target and old.target != entry.target:
            raise LayerpruneError(
                f"{self.kind} {name!r} is already registered (origin: {old.origin}); "
                "choose another name"
            )
        self._entries[name] = entry

    def _add_alias(self, alias: str, name: str) -> None:
        if alias in self._entries or self._aliases.get(alias, name) != name:
            raise LayerpruneError(f"{self.kind} alias {alias!r} is already taken")
        self._aliases[alias] = name

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (used to undo a plugin that failed half-way)."""
        self._entries.pop(name, None)
        for alias in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[alias]

    @contextlib.contextmanager
    def restored(self) -> Iterator["Registry[T]"]:
        """Inside, register freely; on leaving, the registry holds what it held before.

        >>> with CRITERIA.restored():  # doctest: +SKIP
        ...     load_plugin("my_criteria.py")
        """
        entries, aliases = dict(self._entries), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(entries)
            self._aliases.clear()
            self._aliases.update(aliases)

    # -- lookup -------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (resolving aliases); unknown names raise."""
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise UnknownNameError(did_you_mean(name, self.names(), self.kind))
        return name

    def get(self, name: str) -> T:
        name = self.canonical(name)
        entry = self._entries[name]
        if entry.lazy:
            try:
                entry.target = _import_target(entry.target)
            except Exception as exc:  # report which entry failed, not just the import error
                raise LayerpruneError(
                    f"{self.kind} {name!r} (origin: {entry.origin}) failed to load "
                    f"{entry.target!r}: {type(exc).__name__}: {exc}"
                ) from exc
            entry.lazy = False
        return entry.target

    def target(self, name: str) -> str:
        """Where ``name`` lives, as ``"module:attr"`` (loaded or not)."""
        entry = self._entries[self.canonical(name)]
        return entry.target if entry.lazy else _spec_of(entry.target)

    def describe(self, name: str) -> tuple[str, dict[str, Any]]:
        """The docstring and keyword parameters (with defaults) of the function registered as
        ``name``; an entry not yet imported is read from its source, so listing it imports
        nothing heavy (:func:`layerprune.lazy.source_signature`)."""
        entry = self._entries[self.canonical(name)]
        if entry.lazy:
            from layerprune.lazy import source_signature

            found = source_signature(entry.target)
            if found is not None:
                return found
        obj = self.get(name)
        return inspect.getdoc(obj) or "", {p.name: p.default for p in inspect.signature(obj).parameters.values()}

    def name_of(self, obj: Any) -> str | None:
        """The name ``obj`` is registered under (loaded entries only), or ``None``."""
        return next((n for n, e in self._entries.items() if not e.lazy and e.target is obj), None)

    def origin(self, name: str) -> str:
        return self._entries[self.canonical(name)].origin

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases(self, name: str) -> list[str]:
        name = self.canonical(name)
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


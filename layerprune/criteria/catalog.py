"""Which criteria exist: the built-ins, installed packages' entry points, and plugins loaded
from a file or module.

* Built-ins are lazy entries (naming one imports only its module).
* Installed packages advertise criteria in the entry-point group ``layerprune.criteria``
  (``name = "package.module:Attr"``); they are registered lazily the first time criteria are
  listed or looked up, and imported only when used.
* :func:`load_plugin` imports a ``.py`` file, a module or ``module:attr``; whatever it
  registers with :func:`register_criterion` gets that file or module as its origin.

A plugin that fails to import is reported (its name, origin and error) and skipped, unless
``strict=True``.

>>> load_plugin("plugins/single_file/entropy_gain.py")  # doctest: +SKIP
['entropy_gain']
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterator

from layerprune.criteria.base import Criterion, describe, instantiate
from layerprune.errors import LayerpruneError
from layerprune.registry import Registry

ENTRY_POINT_GROUP = "layerprune.criteria"

CRITERIA: Registry[Any] = Registry("criterion")
for _name, _target in (
    ("modularity", "layerprune.criteria.curve:ModularityCriterion"),
    ("modularity_removal", "layerprune.criteria.curve:ModularityRemovalCriterion"),
    ("random", "layerprune.criteria.simple:RandomCriterion"),
    ("tail", "layerprune.criteria.simple:TailCriterion"),
    ("magnitude", "layerprune.criteria.simple:MagnitudeCriterion"),
    ("block_influence", "layerprune.criteria.representation:BlockInfluenceCriterion"),
    ("cka", "layerprune.criteria.representation:CKACriterion"),
    ("angular", "layerprune.criteria.representation:AngularCriterion"),
    ("linear_probe", "layerprune.criteria.representation:LinearProbeCriterion"),
    ("ablation", "layerprune.criteria.oracle:AblationCriterion"),
    ("taylor", "layerprune.criteria.oracle:TaylorCriterion"),
    ("sr_init", "layerprune.criteria.oracle:SRInitCriterion"),
    ("cka_removal", "layerprune.criteria.oracle:CKARemovalCriterion"),
    ("greedy", "layerprune.criteria.oracle:GreedyCriterion"),
    ("consensus", "layerprune.criteria.consensus:ConsensusCriterion"),
):
    CRITERIA.register_lazy(_name, _target)

_current_origin: contextvars.ContextVar[str | None] = contextvars.ContextVar("layerprune_plugin_origin", default=None)


class PluginWarning(UserWarning):
    """A plugin failed to load and was skipped."""


@dataclass(frozen=True)
class PluginFailure:
    name: str
    origin: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.origin}) failed to load: {self.error}"


_failures: list[PluginFailure] = []
_loaded: dict[str, list[str]] = {}  # plugin (file origin or module spec) → the criteria it registered
_entry_points_loaded = False


def plugin_failures() -> list[PluginFailure]:
    """Every plugin that failed to load in this process, in order."""
    return list(_failures)


def _fail(name: str, origin: str, exc: BaseException | str, strict: bool) -> None:
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    failure = PluginFailure(name, origin, error)
    if strict:
        raise LayerpruneError(str(failure))
    if failure not in _failures:
        _failures.append(failure)
        warnings.warn(f"{failure}; skipped", PluginWarning, stacklevel=3)


def register_criterion(name: str | None = None, obj: Any = None, *, aliases=(), origin: str | None = None):
    """Register a :class:`Criterion` subclass or a function ``fn(ctx, **params) -> scores``.

    Used as a decorator (``@register_criterion("name")``) or directly. Inside a plugin being
    loaded, the origin is that plugin's file or module.
    """

    def add(target: Any) -> Any:
        entry_name = name or getattr(target, "__name__", None)
        if isinstance(target, type) and issubclass(target, Criterion):
            target.name = entry_name
        where = origin or _current_origin.get() or _module_origin(target)
        CRITERIA.register(entry_name, target, aliases=aliases, origin=where)
        return target

    return add if obj is None else add(obj)


def _module_origin(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    return "builtin" if module.startswith("layerprune.") else f"module {module}"


@contextmanager
def _origin(text: str) -> Iterator[None]:
    token = _current_origin.set(text)
    try:
        yield
    finally:
        _current_origin.reset(token)


def load_entry_points(*, strict: bool = False) -> None:
    """Register (lazily) every criterion advertised by installed packages; once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None) or "unknown package"
        origin = f"package {dist}"
        try:
            CRITERIA.register_lazy(ep.name, ep.value, origin=origin)
        except LayerpruneError as exc:
            _fail(ep.name, origin, str(exc), strict)


def load_plugin(spec: str, *, strict: bool = False) -> list[str]:
    """Import a plugin — ``path/to/file.py``, ``package.module`` or ``package.module:Attr`` — and
    return the criteria it registered. A plugin that fails is reported and skipped (``[]``), and
    whatever it registered before failing is taken back. Loading the same plugin again is a no-op."""
    is_file = spec.endswith(".py") or "/" in spec or "\\" in spec
    origin = f"file {Path(spec).resolve()}" if is_file else f"module {spec.partition(':')[0]}"
    key = origin if is_file else spec
    if key in _loaded and all(n in CRITERIA for n in _loaded[key]):
        return list(_loaded[key])
    before = set(CRITERIA.names())
    try:
        with _origin(origin):
            if is_file:
                _import_file(Path(spec))
            else:
                _import_module(spec)
    except Exception as exc:  # a plugin's own bug: report it, do not take the run down
        for name in set(CRITERIA.names()) - before:
            CRITERIA.unregister(name)
        _fail(spec, origin, str(exc) if isinstance(exc, LayerpruneError) else exc, strict)
        return []
    added = sorted(set(CRITERIA.names()) - before)
    if not added:
        _fail(spec, origin, "registered no criterion (use @layerprune.register_criterion)", strict)
    else:
        _loaded[key] = added
    return added


def _import_module(spec: str) -> None:
    """Import ``module`` (its decorators register) or ``module:attr`` (registered if it is not yet)."""
    module_name, _, attr = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        target = getattr(target, part)
    if attr and CRITERIA.name_of(target) is None:
        register_criterion(getattr(target, "name", "") or attr.rsplit(".", 1)[-1], target)


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise LayerpruneError(f"no such file: {path}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    module_name = f"layerprune_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LayerpruneError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def load_plugins(specs: list[str] | tuple[str, ...] = (), *, strict: bool = False) -> list[str]:
    """Every plugin there is: installed packages' entry points (once per process, registered
    lazily), then :func:`load_plugin` for each spec. The one loader the CLI and recipes call.
    Returns the criteria the specs registered."""
    load_entry_points(strict=strict)
    added: list[str] = []
    for spec in specs:
        added.extend(load_plugin(spec, strict=strict))
    return added


def get_criterion(name: str, **params: Any) -> Criterion:
    """The criterion ``name`` built with ``params``.

    >>> get_criterion("modularity", k=3)
    ModularityCriterion(k=3, threshold=0.03)
    """
    load_entry_points()
    canonical = CRITERIA.canonical(name)
    return instantiate(CRITERIA.get(canonical), canonical, params)


def criterion_parameters(name: str) -> list[str]:
    """The keyword parameters criterion ``name`` accepts (e.g. to tell which take a ``seed``)."""
    from layerprune.criteria.base import parameters_of

    load_entry_points()
    return parameters_of(CRITERIA.get(CRITERIA.canonical(name)))


def is_criterion(obj: Any) -> bool:
    """A ``Criterion`` subclass, or a plain function ``fn(ctx, **params)``."""
    if isinstance(obj, type):
        return issubclass(obj, Criterion)
    return inspect.isfunction(obj) or inspect.ismethod(obj)


@dataclass(frozen=True)
class CriterionInfo:
    name: str
    description: str
    origin: str
    aliases: tuple[str, ...] = ()


def list_criteria(*, strict: bool = False) -> list[CriterionInfo]:
    """Every criterion with its description and origin; ones that fail to load are reported and
    left out (or raise, with ``strict``)."""
    load_entry_points(strict=strict)
    infos = []
    for name in CRITERIA.names():
        origin = CRITERIA.origin(name)
        try:
            obj = CRITERIA.get(name)
        except LayerpruneError as exc:
            _fail(name, origin, exc.__cause__ or exc, strict)
            continue
        if not is_criterion(obj):
            _fail(name, origin, f"{obj!r} is neither a Criterion subclass nor a function", strict)
            continue
        infos.append(CriterionInfo(name, describe(obj), origin, tuple(CRITERIA.aliases(name))))
    return infos


def criterion_names() -> list[str]:
    load_entry_points()
    return CRITERIA.names()

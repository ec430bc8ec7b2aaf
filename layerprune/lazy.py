"""Modules imported on first use, so that the command line's cheap paths (``--help``,
``validate``, ``criteria``, ``datasets``) never import torch, timm, Torch-Pruning or igraph.

>>> torch = lazy_import("torch")   # nothing imported yet
>>> torch.zeros(2)                 # imported here  # doctest: +SKIP

Unlike :class:`importlib.util.LazyLoader`, nothing is put in ``sys.modules`` until the module is
really imported, so ``"torch" in sys.modules`` stays an honest test.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def _load(self) -> ModuleType:
        module = self._module
        if module is None:
            module = importlib.import_module(self._name)
            object.__setattr__(self, "_module", module)
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module is not None else ''}>"


def lazy_import(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return LazyModule(name)


def lazy_exports(package: str, exports: dict[str, list[str] | tuple[str, ...]]):
    """``__getattr__`` and ``__dir__`` (PEP 562) for a package whose public names live in its
    submodules: ``exports`` maps a submodule (``".find"`` or a full name) to the names it gives;
    each is imported the first time it is read (``from layerprune.surgery import find_blocks``).
    A submodule not imported yet is an attribute too (``layerprune.surgery.find``), as it was when
    the package imported them all."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(package + module if module.startswith(".") else module), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    return __getattr__, __dir__


def no_grad(fn):
    """``@torch.no_grad()`` for a function defined before torch is imported: torch is imported
    when the function is called."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


_NO_SOURCE = object()


def source_signature(target: str) -> tuple[str, dict[str, Any]] | None:
    """``(docstring, {parameter: default})`` of the function ``"module:name"``, read from its
    source without importing the module (whose imports may be heavy); ``None`` when it cannot be
    read that way (no source, not a plain function, a default that is not a literal)."""
    import ast

    module_name, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
        path = spec.origin if spec is not None else None
        if not path or not path.endswith(".py"):
            return None
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attr), None)
    if fn is None:
        return None
    args = fn.args
    if args.vararg or args.kwarg:
        return None
    constants = {}  # module-level NAME = literal, for defaults such as mean=IMAGENET_MEAN
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                try:
                    constants[targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    constants.pop(targets[0].id, None)
    positional = args.posonlyargs + args.args
    defaults: list[Any] = [_NO_SOURCE] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    params: dict[str, Any] = {}
    for arg, default in pairs:
        if default is _NO_SOURCE or default is None:  # a required parameter
            params[arg.arg] = inspect.Parameter.empty
            continue
        if isinstance(default, ast.Name) and default.id in constants:
            params[arg.arg] = constants[default.id]
            continue
        try:
            params[arg.arg] = ast.literal_eval(default)
        except ValueError:
            return None
    return ast.get_docstring(fn) or "", params

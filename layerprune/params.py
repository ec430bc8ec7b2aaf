"""Keyword parameters checked against a function's signature, its annotations as the schema:
how criterion and selection-rule parameters are validated before anything runs."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError


def is_count(value: Any) -> bool:
    """An integer ≥ 1 (``True`` is not one): the one check behind every count-like setting."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def short(value: Any) -> str:
    """``repr(value)``, cut to fit in one error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_parameters(fn: Any, params: dict[str, Any], where: str, *, skip: int = 1) -> list[str]:
    """Unknown, missing and mistyped keyword parameters of ``fn`` (annotations as the schema); a
    ``**kwargs`` parameter accepts any name. The one check behind criterion and rule parameters."""
    signature = inspect.signature(fn)
    accepted = [p for p in list(signature.parameters.values())[skip:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in accepted]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    problems = []
    for key in params:
        if key not in names and not takes_any:
            problems.append(f"{_at(where, key)}: unknown parameter (parameters: {', '.join(names) or 'none'})")
    for p in accepted:
        if p.name not in params:
            if p.default is p.empty:
                problems.append(f"{_at(where, p.name)}: required")
            continue
        hint = hints.get(p.name)
        if hint is None:
            continue
        try:
            TypeAdapter(hint).validate_python(params[p.name], strict=False)
        except ValidationError as exc:
            problems.append(f"{_at(where, p.name)}: {exc.errors()[0]['msg']} (got {short(params[p.name])})")
        except Exception:  # an annotation pydantic cannot check
            pass
    return problems

"""The criterion interface: score the blocks of a model, higher = keep.

A criterion is a class with keyword parameters (validated when it is built) and a
:meth:`Criterion.score` that reads a :class:`~layerprune.criteria.context.ScoringContext` and
returns block name → importance. Criteria that need features declare the statistics they want
(:meth:`Criterion.probe_stats`, :meth:`Criterion.block_stats`) so that several criteria scored
together share one pass over the features.

>>> @register_criterion("param_count")
... class ParamCount(Criterion):
...     '''Bigger blocks matter more (a toy).'''
...     def score(self, ctx):
...         return {b.name: float(b.params) for b in ctx.scorable}
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from layerprune.errors import LayerpruneError
from layerprune.params import check_parameters

if TYPE_CHECKING:
    from layerprune.criteria.context import BlockStat, ProbeStat, ScoringContext


@dataclass
class CriterionResult:
    """Scores (block → importance, higher = keep) and optional diagnostics (e.g. a curve)."""

    criterion: str
    scores: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, float]]:
        """``(block, score)`` from least to most important."""
        return sorted(self.scores.items(), key=lambda kv: kv[1])

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "params": self.params, "scores": self.scores,
                "diagnostics": {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in self.diagnostics.items()}}


class Criterion:
    """Base class of block-importance criteria.

    Subclasses take their parameters as keyword arguments in ``__init__`` and implement
    :meth:`score`. ``default_rule`` is the selection the ``score`` command shows when no rule
    is given.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_rule: ClassVar[dict[str, Any]] = {"rule": "count", "fraction": 0.5}
    #: The tasks (:mod:`layerprune.tasks` names) it can score a model for; ``None``: every task.
    #: A recipe naming it for another task is refused when it is validated.
    tasks: ClassVar[tuple[str, ...] | None] = None

    def probe_stats(self) -> dict[str, "ProbeStat"]:
        """Statistics wanted at every probe point: key → ``fn(features, labels)``."""
        return {}

    def block_stats(self) -> dict[str, "BlockStat"]:
        """Statistics wanted per block: key → ``fn(features_in, features_out, labels)``."""
        return {}

    def run_stats(self) -> dict[str, tuple[int, "BlockStat"]]:
        """Statistics wanted per run of ``n`` blocks: key → ``(n, fn(features_before,
        features_after, labels))`` (see :meth:`ScoringContext.runs`)."""
        return {}

    def score(self, ctx: "ScoringContext") -> dict[str, float] | CriterionResult:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The parameters this criterion was built with (from ``__init__``'s signature)."""
        names = [p for p in _parameters(type(self).__init__) if hasattr(self, p)]
        return {p: getattr(self, p) for p in names}

    def __call__(self, ctx: "ScoringContext") -> CriterionResult:
        if problem := task_problem(self, ctx.task.name):
            raise LayerpruneError(problem)
        out = self.score(ctx)
        result = out if isinstance(out, CriterionResult) else CriterionResult(self.name, dict(out))
        result.criterion = result.criterion or self.name
        result.params = result.params or self.params()
        known = {b.name for b in ctx.blocks}
        for block, value in result.scores.items():
            if block not in known:
                raise LayerpruneError(f"criterion {self.name!r} scored {block!r}, which is not a block of the model")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LayerpruneError(f"criterion {self.name!r} gave block {block!r} the score {value!r}")
            result.scores[block] = float(value)
        return result

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class FunctionCriterion(Criterion):
    """A criterion written as a function ``fn(ctx, **params) -> {block: score}``."""

    def __init__(self, fn: Callable[..., Any], name: str, **params: Any) -> None:
        self.fn = fn
        self.name = name  # type: ignore[misc]
        self._params = params

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def probe_stats(self) -> dict[str, "ProbeStat"]:
        """A function may declare statistics as ``fn.probe_stats(**params) -> {key: stat}``."""
        declare = getattr(self.fn, "probe_stats", None)
        return declare(**self._params) if callable(declare) else {}

    def block_stats(self) -> dict[str, "BlockStat"]:
        declare = getattr(self.fn, "block_stats", None)
        return declare(**self._params) if callable(declare) else {}

    def run_stats(self) -> dict[str, tuple[int, "BlockStat"]]:
        declare = getattr(self.fn, "run_stats", None)
        return declare(**self._params) if callable(declare) else {}

    def score(self, ctx: "ScoringContext") -> dict[str, float] | CriterionResult:
        return self.fn(ctx, **self._params)


def task_problem(criterion: Any, task: str) -> str | None:
    """Why ``criterion`` (a class, function or instance) cannot score a model for ``task``, or ``None``."""
    tasks = getattr(criterion, "tasks", None)
    if tasks is None or task in tasks:
        return None
    name = getattr(criterion, "name", "") or getattr(criterion, "__name__", "criterion")
    return f"criterion {name!r} scores models for {', '.join(tasks)}, not {task}"


def _parameters(fn: Callable[..., Any], skip: int = 1) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parameters_of(obj: Any) -> list[str]:
    """The keyword parameters of a criterion class (its ``__init__``) or function (after ``ctx``)."""
    return _parameters(obj.__init__ if isinstance(obj, type) else obj)


def describe(obj: Any) -> str:
    """The one-line description of a criterion class or function."""
    text = getattr(obj, "description", "") or (inspect.getdoc(obj) or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def instantiate(obj: Any, name: str, params: dict[str, Any]) -> Criterion:
    """Build the criterion registered as ``name`` with ``params``; unknown, missing or mistyped
    parameters are named (:func:`layerprune.params.check_parameters`)."""
    is_class = isinstance(obj, type)
    if is_class and not issubclass(obj, Criterion):
        raise LayerpruneError(f"criterion {name!r}: {obj.__qualname__} is not a Criterion subclass")
    if not is_class and not callable(obj):
        raise LayerpruneError(f"criterion {name!r}: {obj!r} is neither a Criterion class nor a function")
    problems = check_parameters(obj.__init__ if is_class else obj, dict(params), "")
    if problems:
        raise LayerpruneError(f"criterion {name!r}: {'; '.join(problems)}")
    if not is_class:
        return FunctionCriterion(obj, name, **params)
    try:
        criterion = obj(**params)
    except (TypeError, ValueError) as exc:
        raise LayerpruneError(f"criterion {name!r}: {exc}") from exc
    criterion.name = name  # type: ignore[misc]
    return criterion


def declared_stats(criteria: "list[Criterion]") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The probe, block and run statistics ``criteria`` declare together (for one shared pass)."""
    probe: dict[str, Any] = {}
    block: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for c in criteria:
        probe.update(c.probe_stats())
        block.update(c.block_stats())
        runs.update(c.run_stats())
    return probe, block, runs

"""What a model is asked to do, owned in one place: what a batch is, its loss, its metric and
whether lower is better.

* :class:`ImageClassification`: a batch is ``(images, class ids)``; loss the cross-entropy over
  classes, metric top-1 accuracy (higher is better). Every loop that measured a classifier before
  tasks existed computes exactly this.
* :class:`SequenceClassification`: a batch is ``(token ids, class ids)``, the ids right-padded with
  the tokenizer's pad id (the attention mask is where they are not the pad id); loss and metric as
  for images.
* :class:`CausalLM`: a batch is ``(token ids, labels)``, windows of ``seq_len`` tokens cut from one
  token stream, the labels the same ids (``-100`` where a position is not predicted). Each window
  predicts its next tokens (``seq_len − 1`` of them); the loss is the mean next-token negative
  log-likelihood over every predicted token of every window and the metric its exponential, the
  perplexity (lower is better): windows do not overlap (stride = window), so no token is scored
  twice and none is scored with less context than its position in its window.

Measuring is one loop for every task (:meth:`Task.evaluate`): the sum of the loss and of the hits
over the batches divided by the units the task counts (samples for a classifier, predicted tokens
for a language model), so the result does not depend on how the data is batched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Iterable

from layerprune.errors import LayerpruneError, UnknownNameError
from layerprune.hooks import eval_mode, model_device
from layerprune.lazy import lazy_import, no_grad

torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")

Batches = Iterable[tuple["torch.Tensor", "torch.Tensor"]]
IGNORE = -100  # a label position that is not predicted (the convention of PyTorch and transformers)


@dataclass(frozen=True)
class EvalResult:
    """A measurement: the mean loss and the share of hits over ``samples`` samples (and, for a
    language model, over ``tokens`` predicted tokens, the unit both are averaged over)."""

    loss: float
    accuracy: float
    samples: int
    tokens: int | None = None

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: for a language model, the perplexity of the data measured."""
        return math.exp(self.loss) if self.loss < 700 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """As written to a run's JSON files (``tokens`` and ``perplexity`` only where tokens were counted)."""
        found = asdict(self)
        if self.tokens is None:
            del found["tokens"]
        else:
            found["perplexity"] = self.perplexity
        return found


def logits_of(output: Any) -> torch.Tensor:
    """The tensor a forward pass answers with: itself, ``logits`` of a transformers output, the
    hidden states of a plain dict (SqueezeBERT's modules), else its first entry."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and not hasattr(output, "to_tuple"):
        return output.get("hidden_states", next(iter(output.values())))
    return output[0]


@dataclass(frozen=True)
class View:
    """Which rows of a calibration batch's features a statistic reads, and their labels.

    A classifier's samples are the rows whatever the view. A causal LM's sample is a window of
    ``seq_len`` positions, so a statistic says which rows it wants: ``sample`` (each window's
    features flattened), ``token`` (every position, labelled by its next token; the last position
    of a window by :data:`IGNORE`), ``last`` (each window's last position: what predicts the next
    window's first token) or ``next-token`` (the positions whose next token is one of the ``top``
    most frequent next tokens of all calibration windows, labelled by that token's rank; at most
    ``positions`` of them per batch, drawn with a fixed seed)."""

    kind: str = "sample"
    top: int = 32
    positions: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("sample", "token", "last", "next-token"):
            raise ValueError(f"view: unknown kind {self.kind!r}")


def check_top(top: Any) -> None:
    if not isinstance(top, int) or isinstance(top, bool) or top < 2:
        raise LayerpruneError(f"top: must be an integer >= 2 (classes to tell apart), got {top!r}")


def top_next_tokens(windows: torch.Tensor, top: int) -> torch.Tensor:
    """Each token id's rank among the ``top`` most frequent next tokens of ``windows`` (``[n,
    seq_len]`` token ids; 0 = the most frequent, ties to the smaller id), -1 for every other id."""
    check_top(top)
    following = windows[:, 1:].reshape(-1).cpu()
    counts = torch.bincount(following[following != IGNORE], minlength=int(windows.max()) + 1)
    order = torch.argsort(-counts, stable=True)[:top]
    order = order[counts[order] > 0]
    rank = torch.full((len(counts),), -1, dtype=torch.long)
    rank[order] = torch.arange(len(order))
    return rank


def viewed(view: View, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a feature statistic) marked with the rows it reads (:class:`View`)."""
    fn.view = view  # type: ignore[attr-defined]
    return fn


class Task:
    """A task: how a model is run on a batch, its loss, hits and the units they are averaged over."""

    name: ClassVar[str]
    metric_name: ClassVar[str]
    lower_is_better: ClassVar[bool]
    has_classes: ClassVar[bool]  #: whether batches carry a class for each sample (label-using criteria need it)
    repairs: ClassVar[bool] = False  #: whether a pruned model's BatchNorm statistics are re-estimated (and measured)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The logits of ``model`` on ``inputs``."""
        return model(inputs)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss summed over the units of the batch."""
        return F.cross_entropy(logits, targets, reduction="sum")

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many units the model got right (top-1)."""
        return (logits.argmax(1) == targets).sum()

    def units(self, targets: torch.Tensor) -> int:
        """What the loss and hits are averaged over: one per sample."""
        return len(targets)

    def measure(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """:meth:`loss_sum` and :meth:`hits` of one batch, as numbers."""
        return float(self.loss_sum(logits, targets)), int(self.hits(logits, targets))

    def rows(self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None):
        """``(logits, targets, teacher logits)`` as one row of class scores per unit, for a
        classification loss (training, distillation): as they are for a classifier."""
        return logits, targets, teacher

    def value(self, result: EvalResult) -> float:
        """The task's metric of a measurement."""
        return result.accuracy

    def format(self, value: float) -> str:
        """The metric as reports print it."""
        return f"{100 * value:.2f}%"

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` is better than ``b``."""
        return a < b if self.lower_is_better else a > b

    def view(self, view: View, features: tuple[torch.Tensor, ...], labels: torch.Tensor,
             classes: Callable[[int], torch.Tensor] | None = None, seed: int = 0):
        """``(features, labels)`` of a calibration batch as the rows ``view`` asks for (the same
        rows of every tensor in ``features``): a sample is a row, whatever the view."""
        return features, labels

    @no_grad
    def evaluate(self, model: nn.Module, batches: Batches, *, progress: bool = False, description: str = "eval",
                 until: Callable[[float, int, int], bool] | None = None) -> EvalResult | None:
        """Mean loss and share of hits over the units of ``batches``, in eval mode (the model's
        mode is restored). ``until(loss_sum, hits, units)``, asked after each batch, may stop early
        (the ``greedy`` oracle's candidates that can no longer win): the result is then ``None``."""
        device = model_device(model)
        loss_sum, correct, seen, samples = 0.0, 0, 0, 0
        if progress:
            from rich.progress import track

            total = len(batches) if hasattr(batches, "__len__") else None
            batches = track(batches, description=description, total=total, transient=True)
        with eval_mode(model):
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                loss, hits = self.measure(self.forward(model, x), y)
                loss_sum += loss
                correct += hits
                seen += self.units(y)
                samples += len(y)
                if until is not None and until(loss_sum, correct, seen):
                    return None
        if seen == 0:
            raise ValueError("evaluate: no samples")
        return self._result(loss_sum / seen, correct / seen, samples, seen)

    def _result(self, loss: float, accuracy: float, samples: int, units: int) -> EvalResult:
        return EvalResult(loss, accuracy, samples)


class ImageClassification(Task):
    """Images and one class each: cross-entropy, top-1 accuracy."""

    name = "image-classification"
    metric_name = "accuracy"
    lower_is_better = False
    has_classes = True
    repairs = True


class SequenceClassification(Task):
    """Token ids (right-padded with ``pad_token_id``) and one class each: cross-entropy, accuracy."""

    name = "sequence-classification"
    metric_name = "accuracy"
    lower_is_better = False
    has_classes = True

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = int(pad_token_id)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return logits_of(model(inputs, attention_mask=(inputs != self.pad_token_id).long()))


class CausalLM(Task):
    """Windows of a token stream, each predicting its next tokens: next-token cross-entropy over
    every predicted token, perplexity ``exp`` of its mean (lower is better)."""

    name = "causal-lm"
    metric_name = "perplexity"
    lower_is_better = True
    has_classes = False
    rows_per_loss = 8  # windows whose logits are turned to float32 at once (a vocabulary is wide)

    def __init__(self, seq_len: int | None = None) -> None:
        self.seq_len = seq_len

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return logits_of(model(inputs, use_cache=False))

    def _pairs(self, logits: torch.Tensor, targets: torch.Tensor):
        for start in range(0, len(targets), self.rows_per_loss):
            rows = slice(start, start + self.rows_per_loss)
            scores = logits[rows, :-1].float()
            yield scores.reshape(-1, scores.shape[-1]), targets[rows, 1:].reshape(-1)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return sum(F.cross_entropy(s, t, ignore_index=IGNORE, reduction="sum") for s, t in self._pairs(logits, targets))

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return sum(((s.argmax(-1) == t) & (t != IGNORE)).sum() for s, t in self._pairs(logits, targets))

    def measure(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Loss and hits in one pass over the rows (each row's scores turned to float32 once)."""
        loss, hits = 0.0, 0
        for s, t in self._pairs(logits, targets):
            loss += float(F.cross_entropy(s, t, ignore_index=IGNORE, reduction="sum"))
            hits += int(((s.argmax(-1) == t) & (t != IGNORE)).sum())
        return loss, hits

    def units(self, targets: torch.Tensor) -> int:  # noqa: D102
        return int((targets[:, 1:] != IGNORE).sum())

    def rows(self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None):
        """One row per predicted token: position ``i``'s scores against token ``i + 1``."""
        keep = targets[:, 1:].reshape(-1) != IGNORE
        flat = lambda t: t[:, :-1].reshape(-1, t.shape[-1])[keep]  # noqa: E731
        return flat(logits), targets[:, 1:].reshape(-1)[keep], None if teacher is None else flat(teacher)

    def value(self, result: EvalResult) -> float:  # noqa: D102
        return result.perplexity

    def format(self, value: float) -> str:  # noqa: D102
        return f"{value:.2f}"

    def _result(self, loss: float, accuracy: float, samples: int, units: int) -> EvalResult:
        return EvalResult(loss, accuracy, samples, units)

    def view(self, view: View, features: tuple[torch.Tensor, ...], labels: torch.Tensor,
             classes: Callable[[int], torch.Tensor] | None = None, seed: int = 0):
        """The rows of each window's positions that ``view`` asks for (see :class:`View`);
        ``classes(top)`` gives each token id's rank among the ``top`` most frequent next tokens of
        the calibration windows (-1 for the others)."""
        if view.kind == "sample":
            return features, labels
        n, length = labels.shape
        tokens = [f.reshape(n, length, -1) for f in features]
        following = torch.full_like(labels, IGNORE)
        following[:, :-1] = labels[:, 1:]
        if view.kind == "last":
            return tuple(t[:, -1] for t in tokens), following[:, -1]
        if view.kind == "token":
            return tuple(t.reshape(n * length, -1) for t in tokens), following.reshape(-1)
        ranks = classes(view.top).to(labels.device)
        cls = torch.where(following == IGNORE, -1, ranks[following.clamp(min=0)])
        rows, cols = (cls >= 0).nonzero(as_tuple=True)
        if len(rows) > view.positions:
            pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:view.positions]
            pick = pick.sort().values.to(rows.device)
            rows, cols = rows[pick], cols[pick]
        return tuple(t[rows, cols] for t in tokens), cls[rows, cols]

    @staticmethod
    def batches(windows: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(ids, labels)`` batches of ``batch_size`` windows (a ``[n, seq_len]`` tensor), labels the ids."""
        return [(w, w) for w in windows.split(batch_size)]


IMAGE_CLASSIFICATION = ImageClassification()
TASKS: dict[str, type[Task]] = {t.name: t for t in (ImageClassification, SequenceClassification, CausalLM)}


def get_task(name: str, **settings: Any) -> Task:
    """The task named ``name`` (``image-classification``, ``sequence-classification``,
    ``causal-lm``) with its settings; :class:`~layerprune.errors.UnknownNameError` naming it otherwise."""
    if name not in TASKS:
        raise UnknownNameError(f"task: unknown task {name!r} (one of {', '.join(TASKS)})")
    return TASKS[name](**settings)


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 8, progress: bool = False) -> float:
    """The perplexity of ``model`` on ``windows`` (``[n, seq_len]`` token ids, non-overlapping)."""
    return CausalLM(windows.shape[1]).evaluate(model, CausalLM.batches(windows, batch_size),
                                               progress=progress, description="perplexity").perplexity


__all__ = ["CausalLM", "EvalResult", "IMAGE_CLASSIFICATION", "ImageClassification", "SequenceClassification", "TASKS",
           "Task", "View", "check_top", "get_task", "logits_of", "perplexity", "top_next_tokens", "viewed"]

"""Score a named model on a named dataset with one criterion and a selection rule: what
``layerprune score`` prints.

>>> report = score_model("cifar_resnet20", "digits", "modularity", samples=200, batches=2)  # doctest: +SKIP
>>> report.removed  # doctest: +SKIP
['layer1.1', 'layer2.2']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from layerprune.calibration import Calibration
from layerprune.criteria.base import CriterionResult
from layerprune.criteria.plots import plot_result
from layerprune.criteria.selection import removed_share
from layerprune.data import build_dataset
from layerprune.distributed import resolve_device
from layerprune.models import create_model_for
from layerprune.pruner import Pruner
from layerprune.errors import LayerpruneError
from layerprune.surgery.blocks import Block
from layerprune.tasks import CausalLM


@dataclass
class ScoreReport:
    model: str
    data: str
    result: CriterionResult
    blocks: list[Block]
    rule: dict[str, Any]
    removed: list[str]
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def params_share(self) -> float:
        return removed_share(self.blocks, self.removed)[0]

    @property
    def macs_share(self) -> float:
        return removed_share(self.blocks, self.removed)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "calibration": self.calibration,
            **self.result.to_dict(), "rule": self.rule, "removed": self.removed,
            "params_reduction": self.params_share, "macs_reduction": self.macs_share,
            "blocks": [{"name": b.name, "stage": b.stage, "removable": b.removable,
                        "collapsible": b.collapsible, "params": b.params, "macs_share": b.macs_share,
                        "score": self.result.scores.get(b.name)} for b in self.blocks if b.stage],
        }

    def plot(self, path: str | Path) -> Path:
        """The modularity curve when the criterion has one, else a bar chart of the scores."""
        return plot_result(self.result, path, rule=self.rule, removed=self.removed,
                           title=f"{self.model} on {self.data}: {self.result.criterion}")


def score_model(
    model_name: str,
    data: str,
    criterion: str = "modularity",
    *,
    criterion_params: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    model_args: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    rule: str | None = None,
    rule_params: dict[str, Any] | None = None,
    protect: Sequence[str] = (),
    collapse: bool = False,
    level: str = "block",
    device: str | None = None,
    progress: bool = False,
    calibration: Calibration = Calibration(),
) -> ScoreReport:
    """Build the model (sized to the data set) and data, score the blocks, apply the rule.

    Without ``rule`` the criterion's default rule is used (modularity: ``threshold`` 0.03; the
    others: ``count`` with ``fraction`` 0.5). Scoring and planning are :class:`Pruner`'s.
    """
    from layerprune.models.hf import is_hf_name, load_hf_model

    task, data_args = None, dict(data_args or {})
    if is_hf_name(model_name):  # a transformers causal LM, scored on text its own tokenizer cuts
        if checkpoint or model_args:
            raise LayerpruneError(f"{model_name}: --checkpoint and --model-arg are for timm models")
        if data != "text":
            raise LayerpruneError(f"--data: a causal language model is scored on text (--data text), not {data!r}")
        data_args.setdefault("tokenizer", model_name.removeprefix("hf:"))
    bundle = build_dataset(data, **data_args)
    if is_hf_name(model_name):
        model, task = load_hf_model(model_name, "causal-lm"), CausalLM(bundle.seq_len)
    elif data == "text":
        raise LayerpruneError(f"--data: text is for a language model (MODEL hf:PATH_OR_ID), not {model_name}")
    else:
        model = create_model_for(model_name, bundle, checkpoint=checkpoint, seed=calibration.seed, **(model_args or {}))
    pruner = Pruner(criterion, criterion_params=criterion_params, rule=rule, rule_params=rule_params,
                    calibration=calibration, collapse=collapse, protect=protect, level=level, progress=progress,
                    task=task)
    model.to(resolve_device(device))
    scored = pruner.score(model, bundle)
    blocks = pruner.blocks(model, scored.example_input, scored.blocks)  # timed, under a latency budget
    removed = pruner.plan(scored.result, blocks)
    return ScoreReport(model_name, data, scored.result, blocks, dict(pruner.rule), removed, scored.calibration)

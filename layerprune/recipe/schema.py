"""The recipe schema: every key, its type, default and meaning (``docs/recipes.md`` is checked
against it).

Structure and types are checked by pydantic (``extra="forbid"``: a misspelt key is an error);
names and parameters that depend on registries (model, dataset, criterion, rule) are checked
afterwards by :func:`layerprune.recipe.load.semantic_errors`, so that every error is reported at once.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from layerprune.calibration import Calibration, Repair
from layerprune.export.formats import FILES as EXPORT_FILES, Tolerance
from layerprune.train.settings import TrainConfig
from layerprune.params import is_count


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
    """Which network to prune: a timm model (``name``), a transformers model (``hf``), or a new
    transformers model built from a configuration (``hf_config``, trained by the pretrain section)."""

    name: Optional[str] = Field(None, description="timm model name, e.g. cifar_resnet56 or resnet50")
    hf: Optional[str] = Field(None, description="a transformers model: a local folder or a Hugging Face hub id "
                              "(its tokenizer is the text data's unless data.options.tokenizer is given)")
    hf_config: Optional[dict[str, Any]] = Field(None, description="a new transformers model from a configuration: "
                                                "model_type and its keys (vocab_size defaults to the tokenizer's); "
                                                "needs a pretrain section")
    task: Optional[Literal["image-classification", "causal-lm"]] = Field(
        None, description="what the model is trained and measured on (default: image-classification for name, "
        "causal-lm for hf and hf_config)")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="keyword arguments for timm.create_model (num_classes and in_chans default "
                                   "to the data set's), or for from_pretrained (hf), e.g. dtype: float32")
    checkpoint: Optional[str] = Field(None, description="weights to start from, a file or an http(s) URL (downloaded "
                                      "once into torch hub's cache, verified); with a pretrain section, pretraining "
                                      "starts from them; without it, the pretrain stage trains the model first")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSection":
        given = [k for k in ("name", "hf", "hf_config") if getattr(self, k) is not None]
        if not given:
            raise ValueError("name: required (a timm model; or hf: a transformers folder or hub id, or hf_config: "
                             "a new transformers model)")
        if len(given) > 1:
            raise ValueError(f"{given[-1]}: give one of name (timm), hf (a transformers folder or hub id) or hf_config "
                             f"(a new transformers model), not {' and '.join(given)}")
        if self.name is not None and self.task not in (None, "image-classification"):
            raise ValueError(f"task: {self.task} needs a transformers model (hf or hf_config); a timm model "
                             "classifies images")
        if self.name is None and self.task == "image-classification":
            raise ValueError("task: image-classification needs a timm model (name); a transformers model here is a "
                             "causal LM")
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError("hf_config: needs model_type, e.g. llama or gpt2")
        return self

    @property
    def is_hf(self) -> bool:
        """A transformers model (``hf`` or ``hf_config``)."""
        return self.name is None

    @property
    def task_name(self) -> str:
        """The task: given, or the default of the kind of model."""
        return self.task or ("causal-lm" if self.is_hf else "image-classification")

    @property
    def label(self) -> str:
        """The model as titles name it: the timm name, the hf folder or id, or ``MODEL_TYPE (config)``."""
        if self.name is not None:
            return self.name
        if self.hf is not None:
            return self.hf
        return f"{self.hf_config['model_type']} (from config)"


class CalibrationSection(Section):
    """The samples criteria score blocks on."""

    split: Literal["val", "test", "train"] = Field(Calibration.split, description="val: held out of train (default); test replicates the paper")
    samples: int = Field(Calibration.samples, gt=0, description="samples per calibration batch")
    batches: int = Field(Calibration.batches, gt=0, description="calibration batches (mean and std over them)")


class DataSection(Section):
    """The data set and how it is loaded."""

    dataset: str = Field(description="data set name: cifar10, cifar100, imagefolder, digits, mnist5k, synthetic, text")
    root: Optional[str] = Field(None, description="where the files are (data sets that read files)")
    download: bool = Field(False, description="fetch the files when missing (needs network)")
    options: dict[str, Any] = Field(default_factory=dict, description="other options of the data set builder (see: layerprune datasets NAME)")
    batch_size: int = Field(128, gt=0, description="training batch size")
    eval_batch_size: int = Field(256, gt=0, description="evaluation batch size")
    workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process)")
    on_device: Optional[bool] = Field(None, description="keep in-memory data sets on the training device "
                                      "(default: on CUDA when they fit in 2 GiB)")
    calibration: CalibrationSection = Field(default_factory=CalibrationSection, description="calibration samples")


# The pretrain section: the training settings, defined once in layerprune.train (which also runs them).
TrainSection = TrainConfig


class DistillSection(Section):
    """Knowledge distillation from the unpruned model (Hinton et al., 2015)."""

    enabled: bool = Field(False, description="distil from the unpruned model while finetuning")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature")


class LoraSection(Section):
    """Low-rank adapters (LoRA, through peft) instead of full finetuning, merged into the weights
    before the model is saved (transformers models)."""

    r: int = Field(8, gt=0, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scale: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    targets: Optional[list[str]] = Field(None, description="module names or name suffixes the adapters go on "
                                         "(default: every linear layer of the kept layers: the attention and MLP "
                                         "projections)")


class FinetuneSection(TrainConfig):
    """Finetuning after pruning (a TrainSection, plus distillation or low-rank adapters)."""

    epochs: int = Field(10, ge=0, description="epochs (0 skips the stage)")
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    distill: DistillSection = Field(default_factory=DistillSection, description="knowledge distillation")
    lora: Optional[LoraSection] = Field(None, description="train low-rank adapters instead of every weight, e.g. "
                                        "{r: 8, alpha: 16}; merged before saving (transformers models)")


class CriterionSection(Section):
    """How blocks are scored (see: layerprune criteria)."""

    name: str = Field("modularity", description="criterion name, built-in or from a plugin")
    params: dict[str, Any] = Field(default_factory=dict, description="the criterion's parameters, checked against its signature")


class SelectSection(Section):
    """How scores become the blocks to remove."""

    rule: Optional[str] = Field(None, description="threshold, count, budget or run (default: the criterion's own rule)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="the rule's parameters: threshold; k or fraction; params, macs, latency or layers (fractions); n (run)")
    protect: list[str] = Field(default_factory=list, description="blocks never removed")
    collapse: bool = Field(False, description="allow collapsing blocks that change shape: to their shortcut, or to one without parameters where they have none")
    level: Literal["block", "sublayer"] = Field(
        "block", description="units to score and remove: block (the model's own blocks) or sublayer (the residual "
        "branches inside them: a transformer block's attn and mlp)")


class WidthSection(Section):
    """Channel pruning after the blocks are removed (Torch-Pruning, inside each block's branch)."""

    macs: Optional[float] = Field(None, gt=0, lt=1, description="cut channels until the MACs are this share below "
                                  "the unpruned model's (depth and width together)")
    params: Optional[float] = Field(None, gt=0, lt=1, description="the same for parameters")
    ratio: Optional[float] = Field(None, gt=0, lt=1, description="or: Torch-Pruning's pruning ratio, as is")
    importance: Literal["l1", "l2", "random"] = Field("l1", description="channel importance: l1 or l2 magnitude, or random")

    @model_validator(mode="after")
    def _one_target(self) -> "WidthSection":
        given = [k for k in ("macs", "params", "ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of macs, params or ratio (got {', '.join(given) or 'none'})")
        return self


class PruneSection(Section):
    """Surgery: one shot or in steps, then optionally channels."""

    steps: Union[int, str] = Field(
        1, description="1: one shot; N > 1: score, remove a share and finetune, N times; each: one block per step")
    epochs_between: int = Field(1, ge=0, description="finetune epochs after each step but the last (steps > 1 or each)")
    repair: bool = Field(Repair.enabled, description="re-estimate BatchNorm statistics right after surgery "
                         "(and, for ablation and sr_init, after each candidate removal: the same batches)")
    repair_batches: int = Field(Repair.batches, gt=0, description="training batches used for the repair (without augmentation)")
    repair_batch_size: int = Field(Repair.batch_size, gt=0, description="samples per repair batch")
    width: Optional[WidthSection] = Field(None, description="then prune channels (depth + width), e.g. {macs: 0.5}")

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if value == "each" or is_count(value):
            return value
        raise ValueError("must be an integer > 0 or 'each'")  # the loader adds the value


class EvalSection(Section):
    """The final measurements."""

    split: Literal["test", "val"] = Field("test", description="split the accuracies are reported on")
    latency: bool = Field(True, description="measure CPU/GPU latency of base and pruned models")
    latency_batch_size: int = Field(1, gt=0, description="batch size for the latency measurement")


class ExportSection(Section):
    """What is written at the end."""

    enabled: bool = Field(True, description="save the pruned model in model/ (config.json, model.safetensors, README.md model card)")
    formats: list[str] = Field(default_factory=list,
                               description="also export model/ to these formats, each checked against PyTorch: onnx, torchscript, exported (torch.export)")
    atol: float = Field(Tolerance.atol, ge=0, description="export check: |exported − PyTorch| ≤ atol + rtol·|PyTorch| on every output")
    rtol: float = Field(Tolerance.rtol, ge=0, description="export check: relative part of the tolerance")

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        known = tuple(EXPORT_FILES)
        for f in value:
            if f not in known:
                raise ValueError(f"unknown format {f!r} (known: {', '.join(known)})")
        if len(set(value)) != len(value):
            raise ValueError(f"each format once, got {value}")
        return value


class LoggingSection(Section):
    """Training logs beyond metrics.csv (one row per epoch of every training stage, always written)."""

    tensorboard: bool = Field(False, description="also write TensorBoard event files to tensorboard/ (needs the [tensorboard] extra)")


ALL_CRITERIA = ["modularity", "random", "tail", "magnitude", "block_influence", "cka", "linear_probe",
                "ablation", "taylor", "sr_init", "angular", "consensus", "cka_removal", "greedy",
                "modularity_removal"]


class BenchSection(Section):
    """Criteria compared side by side on this recipe's base model (``layerprune bench``; one setting of a suite)."""

    criteria: list[str] = Field(default_factory=lambda: list(ALL_CRITERIA), min_length=1,
                                description="criteria to compare (built-in or plugins)")
    budgets: list[dict[str, float]] = Field(default_factory=lambda: [{"macs": 0.5}], min_length=1,
                                            description="each one of {macs: f}, {params: f}, {layers: f} (reduction fractions) or {k: n} (blocks removed)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="seeds: calibration and repair draws, random criteria, finetuning order")
    reference: str = Field("tail", description="criterion every other is compared with, seed by seed (paired differences, win rate)")
    width: bool = Field(True, description="add Torch-Pruning channel pruning at the same MACs (macs/params budgets)")
    depth_width: Optional[str] = Field("tail", description="with width: also a depth+width row, blocks chosen by this "
                                       "criterion to half the budget, then channels to all of it (null: no such row)")
    oracle: str = Field("ablation", description="criterion whose scores the others are rank-correlated with")
    finetune_epochs: Optional[int] = Field(None, ge=0, description="finetune epochs per trial (default: finetune.epochs)")
    finetune_base: bool = Field(False, description="also finetune the unpruned base model as every trial is, once per "
                                "seed (the `unpruned` row): what the extra training alone gives")

    @model_validator(mode="after")
    def _budgets(self) -> "BenchSection":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {self.seeds}")
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError(f"criteria: each criterion once, got {self.criteria}")
        if self.reference not in self.criteria:
            raise ValueError(f"reference: {self.reference!r} is not among bench.criteria; add it there or "
                             "name another reference")
        for i, budget in enumerate(self.budgets):
            if len(budget) != 1 or next(iter(budget)) not in ("macs", "params", "layers", "k"):
                raise ValueError(f"budgets: entry {i} must be one of {{macs: f}}, {{params: f}}, {{layers: f}} or "
                                 f"{{k: n}}, got {budget}")
            key, value = next(iter(budget.items()))
            if key == "k" and (value != int(value) or value < 1):
                raise ValueError(f"budgets: entry {i}: k must be a whole number ≥ 1, got {value}")
            if key != "k" and not 0 < value < 1:
                raise ValueError(f"budgets: entry {i}: {key} must be a fraction in (0, 1), got {value}")
        return self


class Recipe(Section):
    """A prune-then-finetune run."""

    name: Optional[str] = Field(None, description="run name (default: the recipe file's name)")
    seed: int = Field(0, description="seed for weights, data order and calibration samples")
    device: str = Field("auto", description="auto (CUDA when available, cuda:LOCAL_RANK under torchrun), cpu, cuda or cuda:N")
    output_dir: Optional[str] = Field(None, description="run directory (default: runs/NAME)")
    plugins: list[str] = Field(default_factory=list, description="criterion plugins: .py files, modules or module:attr")
    model: ModelSection = Field(description="the network")
    data: DataSection = Field(description="the data set")
    pretrain: Optional[TrainSection] = Field(None, description="train the base model first: from scratch, or from "
                                             "model.checkpoint to adapt it to this data")
    criterion: CriterionSection = Field(default_factory=CriterionSection, description="block scoring")
    select: SelectSection = Field(default_factory=SelectSection, description="block selection")
    prune: PruneSection = Field(default_factory=PruneSection, description="surgery")
    finetune: FinetuneSection = Field(default_factory=FinetuneSection, description="finetuning")
    eval: EvalSection = Field(default_factory=EvalSection, description="measurements")
    export: ExportSection = Field(default_factory=ExportSection, description="outputs")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="training logs")
    bench: Optional[BenchSection] = Field(None, description="criteria comparison (used by layerprune bench)")
    _source: Optional[str] = PrivateAttr(None)  # the file it was loaded from, for error messages

    @property
    def source(self) -> str:
        """The recipe file's path, or ``"recipe"`` for one built in code."""
        return self._source or "recipe"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto":
            import torch

            try:
                torch.device(value)
            except RuntimeError:
                raise ValueError("must be auto, cpu, cuda or cuda:N") from None
        return value

    @model_validator(mode="after")
    def _needs_weights(self) -> "Recipe":
        pretrained = bool(self.model.kwargs.get("pretrained")) or self.model.hf is not None
        if self.model.checkpoint is None and self.pretrain is None and not pretrained:
            raise ValueError("pretrain: required when model.checkpoint is not given "
                             "(set model.checkpoint, or a pretrain section to train the model first)")
        return self


class Suite(Section):
    """Criteria compared over several settings (``layerprune bench SUITE.yaml``)."""

    name: Optional[str] = Field(None, description="suite name (default: the file's name)")
    output_dir: Optional[str] = Field(None, description="bench directory (default: runs/NAME)")
    cache_dir: Optional[str] = Field(None, description="where trained base models are kept "
                                     "(default: $LAYERPRUNE_CACHE, else the user's cache folder)")
    plugins: list[str] = Field(default_factory=list, description="criterion plugins for every setting")
    defaults: dict[str, Any] = Field(default_factory=dict, description="recipe keys every setting starts from")
    settings: list[dict[str, Any]] = Field(min_length=1, description="the settings: recipe keys merged over defaults, "
                                           "each with a unique name")
    _recipes: list[Recipe] = PrivateAttr(default_factory=list)
    _source: Optional[str] = PrivateAttr(None)
    _single: bool = PrivateAttr(False)

    @property
    def recipes(self) -> list[Recipe]:
        """Every setting as a validated recipe, in file order (``recipe.name`` is the setting's name)."""
        return self._recipes

    @property
    def reference(self) -> str:
        return self._recipes[0].bench.reference

    @property
    def source(self) -> str:
        return self._source or "suite"

    @property
    def single(self) -> bool:
        """A plain bench recipe run as a suite (its problems need no ``settings.NAME.`` prefix)."""
        return self._single

    @classmethod
    def of_recipe(cls, recipe: Recipe) -> "Suite":
        """A one-setting suite: a plain bench recipe, its directory and name unchanged."""
        suite = cls(name=recipe.name, output_dir=recipe.output_dir,
                    settings=[recipe.model_dump(mode="json", exclude={"output_dir"})])
        suite._recipes, suite._source, suite._single = [recipe], recipe.source, True
        return suite

"""Transformers models by folder or hub id (the optional extra ``[hf]``), loaded with the library's
own ``AutoModelFor…`` classes, with one-line errors for what users meet: the extra not installed,
a folder without ``config.json``, a hub id that cannot be reached.

>>> model = load_hf_model("runs/tiny-llama", task="causal-lm")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from layerprune.errors import MissingExtraError, ModelError, first_line

#: The tasks a model is loaded for, and the auto class of each.
TASKS = {"causal-lm": "AutoModelForCausalLM", "sequence-classification": "AutoModelForSequenceClassification"}
PREFIX = "hf:"
EXTRA = "transformers models need the optional extra [hf]: pip install 'layerprune[hf]'"


def require_transformers():
    """The ``transformers`` module, or :class:`MissingExtraError` saying what to install."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(EXTRA) from None
    return transformers


def is_hf_name(name: str) -> bool:
    """``hf:PATH_OR_ID``, the command line's way to name a transformers model."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _task_of(config) -> str:
    """The task a configuration's architectures name (causal LM unless they name a classifier)."""
    names = getattr(config, "architectures", None) or []
    if any(n.endswith("ForSequenceClassification") for n in names):
        return "sequence-classification"
    return "causal-lm"


def _check_task(config, task: str, source: str) -> None:
    """:class:`ModelError` when transformers has no ``task`` class for this configuration."""
    transformers = require_transformers()
    mapping = (transformers.MODEL_FOR_CAUSAL_LM_MAPPING if task == "causal-lm"
               else transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)
    if type(config) in mapping:
        return
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{source}: an encoder-decoder model ({type(config).__name__}); only decoder-only "
                         "causal LMs and encoder sequence classifiers are handled")
    other = [t for t in TASKS if t != task]
    raise ModelError(f"{source}: transformers has no {TASKS[task]} for {type(config).__name__} (task: {task}); "
                     f"another task ({', '.join(other)})?")


def is_local(source: str) -> bool:
    """Whether ``source`` names a local folder rather than a hub id (``owner/name``)."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def folder_problem(source: str) -> str | None:
    """What keeps the local folder ``source`` from being a transformers model folder, or ``None``."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return "no such folder (a transformers model folder holds config.json and the weights)"
    if not (path / "config.json").is_file():
        return ("no config.json in the folder, so it is not a transformers model folder (save one with "
                "model.save_pretrained(FOLDER))")
    return None


def load_hf_model(path_or_id: str, task: str | None = None, *, expect_missing: bool = False, **kwargs: Any):
    """The model at ``path_or_id`` (a local folder or a Hugging Face hub id) for ``task``
    (``causal-lm`` or ``sequence-classification``; default: what its configuration's architectures
    say), in eval mode. ``kwargs`` go to ``from_pretrained`` (``dtype=torch.bfloat16``,
    ``device_map=...``). With ``expect_missing=True``: ``(model, missing weight names)``, without
    transformers' report of them (a folder whose removed sub-layers have no weights)."""
    transformers = require_transformers()
    source = str(path_or_id).removeprefix(PREFIX)
    if task is not None and task not in TASKS:
        raise ModelError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}")
    local = is_local(source)
    if local:
        if problem := folder_problem(source):
            raise ModelError(f"{source}: {problem}")
        source = str(Path(source).expanduser())
    from layerprune.models import _hub_offline_when_unreachable

    with _hub_offline_when_unreachable(not local):
        try:
            config = transformers.AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as exc:
            where = "" if local else ("; without network, give a local folder (or fetch it once with network: the "
                                      "Hugging Face cache keeps it)")
            raise ModelError(f"{source}: cannot load its configuration ({first_line(exc)}){where}") from None
        task = task or _task_of(config)
        _check_task(config, task, source)
        auto = getattr(transformers, TASKS[task])
        try:
            if expect_missing:  # weights absent on purpose (removed sub-layers): no report, the caller checks
                with _quiet(transformers):
                    model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
                return model.eval(), list(info["missing_keys"])
            model = auto.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{source}: cannot load it as {task} ({first_line(exc)})") from None
    return model.eval()


def config_problems(config: dict[str, Any], where: str = "hf_config") -> list[str]:
    """What is wrong with a configuration mapping for :func:`build_hf_model` (an unknown
    ``model_type``, keys its configuration class does not know), one line each naming the key."""
    transformers = require_transformers()
    from layerprune.registry import did_you_mean

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return [f"{where}: needs model_type, e.g. llama or gpt2"]
    if model_type not in transformers.CONFIG_MAPPING:
        return [f"{where}.model_type: " + did_you_mean(model_type, sorted(transformers.CONFIG_MAPPING), "model type",
                                                       listing="transformers.CONFIG_MAPPING lists them")]
    cls = transformers.CONFIG_MAPPING[model_type]
    known = set(cls().to_dict()) | set(_init_keys(cls)) | set(getattr(cls, "attribute_map", {}))
    listing = f"see {cls.__name__}'s documentation for its keys"
    return [f"{where}.{key}: {did_you_mean(key, sorted(known), f'key of {cls.__name__}', listing=listing)}"
            for key in config if key not in known]


def _init_keys(cls) -> list[str]:
    import inspect

    keys = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            keys += [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "kwargs")]
    return keys


def build_hf_model(config: dict[str, Any], task: str = "causal-lm", *, seed: int = 0, tokenizer: Any = None):
    """A new transformers model for ``task`` from a configuration mapping (``model_type`` and its
    keys), its weights drawn from ``seed`` without touching the global random state, in eval mode.
    With a ``tokenizer``, ``vocab_size`` and the special tokens' ids default to its own.

    >>> model = build_hf_model({"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64})  # doctest: +SKIP
    """
    import torch

    transformers = require_transformers()
    if problems := config_problems(config):
        raise ModelError(problems[0])
    values = {k: v for k, v in config.items() if k != "model_type"}
    if tokenizer is not None:
        values.setdefault("vocab_size", len(tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name, None) is not None:
                values.setdefault(name, getattr(tokenizer, name))
    try:
        built = transformers.AutoConfig.for_model(config["model_type"], **values)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"hf_config: {first_line(exc)}") from None
    _check_task(built, task, f"hf_config ({config['model_type']})")
    auto = getattr(transformers, TASKS[task])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = auto.from_config(built)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"hf_config: {first_line(exc)}") from None
    return model.eval()


@contextlib.contextmanager
def _quiet(transformers):
    """transformers' loading report (missing weights) silenced."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


@contextlib.contextmanager
def no_progress_bars():
    """transformers' own progress bars (loading and writing weights) hidden: a run that saves and
    reloads small models between its stages shows its own progress instead."""
    logging = require_transformers().utils.logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


__all__ = ["TASKS", "build_hf_model", "config_problems", "is_hf_name", "load_hf_model", "require_transformers"]

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
    path = Path(source).expanduser()
    local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if local:
        if not path.is_dir():
            raise ModelError(f"{source}: no such folder (a transformers model folder holds config.json and the weights)")
        if not (path / "config.json").is_file():
            raise ModelError(f"{source}: no config.json in the folder, so it is not a transformers model folder "
                             "(save one with model.save_pretrained(FOLDER))")
        source = str(path)
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


__all__ = ["TASKS", "is_hf_name", "load_hf_model", "require_transformers"]

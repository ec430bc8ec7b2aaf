"""Models: CIFAR ResNets and VGGs registered in timm's registry, and checkpoint loading.

``cifar_resnet{20,32,44,56,110}`` and ``cifar_vgg{11,13,16,19}_bn`` are registered with timm as
soon as timm is imported after ``import layerprune`` (or at once, when it already is), so
``timm.create_model("cifar_resnet56")`` works. :data:`CIFAR_MODELS` names them without importing
timm (a recipe naming one is validated without it).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import urllib.parse
from typing import Iterator

from layerprune.errors import ModelError, UnknownNameError, first_line
from layerprune.lazy import lazy_exports, lazy_import
from layerprune.registry import did_you_mean

timm = lazy_import("timm")
torch = lazy_import("torch")

#: The models this package registers with timm (a test keeps it equal to what they register).
CIFAR_MODELS = ("cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
                "cifar_vgg11_bn", "cifar_vgg13_bn", "cifar_vgg16_bn", "cifar_vgg19_bn")
REGISTERING = ("layerprune.models.cifar_resnet", "layerprune.models.cifar_vgg")


def register_with_timm() -> None:
    """Register the CIFAR models with timm (imports timm and torch)."""
    for module in REGISTERING:
        importlib.import_module(module)


if "timm" in sys.modules:
    register_with_timm()

__getattr__, __dir__ = lazy_exports(__name__, {
    ".checkpoint": ["extract_state_dict", "load_checkpoint", "read_checkpoint"],
    ".cifar_resnet": ["BasicBlock", "CifarResNet", "PadShortcut"],
    ".cifar_vgg": ["CifarVGG", "ConvUnit"],
})

__all__ = [
    "BasicBlock", "CIFAR_MODELS", "CifarResNet", "CifarVGG", "ConvUnit", "PadShortcut",
    "create_model", "create_model_for", "extract_state_dict", "unknown_model_message", "list_models", "load_checkpoint", "read_checkpoint",
]


def list_models(pattern: str = "cifar_*") -> list[str]:
    """timm model names matching ``pattern``; an exact name that timm does not know raises
    :class:`UnknownNameError` with a "did you mean" hint, a wildcard matching nothing likewise."""
    names = timm.list_models(pattern)
    if names:
        return names
    if any(c in pattern for c in "*?["):
        raise UnknownNameError(f"no model matches {pattern!r} (try 'cifar_*' or '*resnet*')")
    raise UnknownNameError(unknown_model_message(pattern))


def unknown_model_message(name: str) -> str:
    """"unknown model NAME", with the closest timm names and how to list them all."""
    return did_you_mean(name, timm.list_models(), "model", listing="list them with: layerprune models '*'")


def create_model_for(name: str, data, *, checkpoint: str | None = None, seed: int = 0, **kwargs):
    """:func:`create_model` sized to a :class:`~layerprune.data.DatasetBundle` (``num_classes``
    and ``in_chans`` unless given), in eval mode. Weights not loaded from ``checkpoint`` are drawn
    from ``seed``, the same every run, without touching the global random state.

    >>> model = create_model_for("cifar_resnet20", build_dataset("digits"), seed=0)  # doctest: +SKIP
    """
    kwargs = {"num_classes": data.num_classes, "in_chans": data.in_chans, **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, checkpoint=checkpoint, **kwargs).eval()


def create_model(name: str, *, checkpoint: str | None = None, **kwargs):
    """``timm.create_model`` with a clear error for unknown names and an optional checkpoint.

    >>> model = create_model("cifar_resnet20", num_classes=10)
    """
    if not timm.is_model(name):
        raise UnknownNameError(unknown_model_message(name))
    try:
        with _hub_offline_when_unreachable(bool(kwargs.get("pretrained"))):
            model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:  # unknown or invalid keyword arguments
        raise ModelError(f"{name}: {exc}") from exc
    except Exception as exc:
        if not kwargs.get("pretrained"):
            raise
        # timm fetches pretrained weights from the Hugging Face Hub or a URL; offline that fails
        # deep inside huggingface_hub/urllib with a long traceback.
        first = first_line(exc, "")
        raise ModelError(
            f"{name}: pretrained weights could not be fetched ({type(exc).__name__}: {first}); "
            "connect to the network once (timm caches them), or pass a checkpoint file instead"
        ) from exc
    if checkpoint is not None:
        from layerprune.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@contextlib.contextmanager
def _hub_offline_when_unreachable(pretrained: bool) -> Iterator[None]:
    """Hugging Face Hub offline mode while timm fetches weights, when the Hub cannot be reached.

    Without a network the Hub client retries each file with back-off for about 45 s, printing a
    line per retry, before it fails. In offline mode, weights already cached still load and
    missing ones fail at once. Behind a proxy a direct probe says nothing, so nothing changes.
    """
    if not pretrained or any(os.environ.get(v) for v in _PROXY_VARS):
        yield
        return
    from huggingface_hub import constants

    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=3).close()
        reachable = True
    except OSError:
        reachable = False
    if reachable:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved

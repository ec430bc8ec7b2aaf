"""The optional runtime: onnxruntime (and the ONNX exporter's packages), from the [deploy] extra."""

from __future__ import annotations

import importlib
from typing import Any

from layerprune.errors import MissingExtraError
from layerprune.lazy import lazy_import

torch = lazy_import("torch")


EXTRA = "deploy"


def require(module: str, fmt: str) -> Any:
    """Import an optional dependency, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{fmt} export needs {module}, in the optional extra [{EXTRA}]: "
                                f"pip install 'layerprune[{EXTRA}]'") from None


def ort_session(model: bytes | str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an ONNX file or its bytes, with ``threads`` (default: as many
    as PyTorch uses)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

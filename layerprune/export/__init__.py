"""Deployable exports of a pruned model: ONNX, TorchScript (traced) and ``torch.export``, each
reloaded and checked against PyTorch, with runtime latency. (Finding a run's samples is the
application layer's: :func:`layerprune.app.export.export_path`.)"""

from layerprune.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {".formats": ["FORMATS", "ExportResult", "FormatCheck", "Tolerance", "export_model"]})

__all__ = ["FORMATS", "ExportResult", "FormatCheck", "Tolerance", "export_model"]

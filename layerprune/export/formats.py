"""Write a pruned model as ONNX, TorchScript and ``torch.export`` files, reload each, and check
that it computes what the PyTorch model computes.

Every file has a dynamic batch dimension (checked by comparing at a batch size other than the
one it was traced with). A comparison passes when ``|exported − pytorch| ≤ atol + rtol·|pytorch|``
holds for every output; otherwise :class:`ExportMismatchError` (exit code 1) says by how much.

>>> export_model("runs/quickstart/model", ["onnx", "torchscript"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from layerprune.errors import ExportMismatchError, LayerpruneError, MissingExtraError, first_line
from layerprune.io import atomic_path
from layerprune.export.runtime import ort_session, require
from layerprune.registry import did_you_mean
from layerprune.lazy import lazy_import

torch = lazy_import("torch")
nn = lazy_import("torch.nn")


FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported": "model.pt2"}
FORMATS = tuple(FILES)
TRACE_BATCH = 2  # torch.export specialises batch sizes 0 and 1; trace at 2, check at another size


@dataclass(frozen=True)
class Tolerance:
    """``|exported − pytorch| ≤ atol + rtol·|pytorch|`` for every output element."""

    atol: float = 1e-4
    rtol: float = 1e-3

    def __str__(self) -> str:
        return f"|exported − PyTorch| ≤ {self.atol:g} + {self.rtol:g}·|PyTorch|"


@dataclass
class FormatCheck:
    format: str
    path: str
    max_abs_diff: float
    worst_excess: float  # max(|diff| − (atol + rtol·|ref|)); ≤ 0 passes
    batch_size: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExportResult:
    out: Path
    checks: list[FormatCheck] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)


def check_formats(formats: list[str]) -> list[str]:
    out = []
    for f in formats:
        if f not in FILES:
            raise LayerpruneError(did_you_mean(f, list(FILES), "export format"))
        if f == "onnx":
            for module in ("onnx", "onnxruntime", "onnxscript"):
                require(module, f)
        if f not in out:
            out.append(f)
    return out


# -- writers: model + an example batch → a file; loaders: file → a callable on tensors -------------
def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model (dynamo exporter, dynamic batch) as bytes: written to a file, or handed to
    onnxruntime without one (the base model's latency)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"], output_names=["output"],
                                    dynamic_shapes=({0: _batch_dim()},), verbose=False)
    return program.model_proto.SerializeToString()


def _load_onnx(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    session = ort_session(data)
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values; the comparison is the judge
        traced = torch.jit.trace(model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)  # torch 2.14 marks TorchScript deprecated (FutureWarning); it still works
    return buf.getvalue()


def _load_torchscript(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def exported_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def _load_exported(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.export.load(io.BytesIO(data)).module()


# format → (model, example batch → the file's bytes; bytes → a callable on tensors)
WRITERS = {"onnx": (onnx_bytes, _load_onnx), "torchscript": (torchscript_bytes, _load_torchscript),
           "exported": (exported_bytes, _load_exported)}


def compare(reference: torch.Tensor, got: torch.Tensor, tol: Tolerance) -> tuple[float, float]:
    """The largest absolute difference and the largest excess over the tolerance."""
    if got.shape != reference.shape:
        return float("inf"), float("inf")
    diff = (got.float() - reference.float()).abs()
    excess = diff - (tol.atol + tol.rtol * reference.float().abs())
    return float(diff.max()), float(excess.max())


def export_one(model: nn.Module, fmt: str, path: Path, samples: torch.Tensor, tol: Tolerance) -> FormatCheck:
    """Export ``model`` as ``fmt``, reload it and compare with PyTorch on ``samples``; the file is
    written (atomically) only when the comparison passes, else :class:`ExportMismatchError`."""
    write, load = WRITERS[fmt]
    try:
        data = write(model, samples[:TRACE_BATCH])
    except MissingExtraError:
        raise
    except Exception as exc:  # the exporters raise many kinds; one line names the format and model
        first = first_line(exc, "")
        raise LayerpruneError(f"{fmt}: exporting {type(model).__name__} failed ({type(exc).__name__}: {first[:300]})") \
            from exc
    run = load(data)
    with torch.inference_mode():
        reference, got = model(samples), run(samples)
    worst, excess = compare(reference, got, tol)
    check = FormatCheck(fmt, str(path), worst, excess, len(samples), excess <= 0)
    if not check.passed:
        raise ExportMismatchError(
            f"{fmt}: the exported model's outputs differ from PyTorch's by up to {worst:.3g} on {len(samples)} "
            f"samples, {excess:.3g} beyond the tolerance ({tol}); nothing written to {path}")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return check


# -- the whole export ---------------------------------------------------------------------------
def export_model(folder: str | Path, formats: list[str] | tuple[str, ...], *, out: str | Path | None = None,
                 tolerance: Tolerance = Tolerance(), samples: torch.Tensor | None = None, origin: str = "given",
                 count: int = 64, batch_sizes: tuple[int, ...] = (1, 32), latency: bool = True,
                 log: Callable[[str], None] = print) -> ExportResult:
    """Export the pruned model saved in ``folder`` to each format in ``out`` (default
    ``FOLDER/export``), checked on ``samples`` (``origin`` says what they are; default: ``count``
    random inputs of the model's input size); then time PyTorch eager and onnxruntime for the
    pruned model and its unpruned architecture. Writes ``export.json``."""
    from layerprune.io import write_json
    from layerprune.models import create_model
    from layerprune.surgery.spec import CONFIG_FILE, PruneSpec, is_pruned_folder, load_pruned

    formats = check_formats(list(formats))
    folder = Path(folder)
    if not is_pruned_folder(folder):
        raise LayerpruneError(f"{folder}: not a pruned-model folder (no {CONFIG_FILE})")
    out = Path(out) if out is not None else folder / "export"
    spec = PruneSpec.load(folder)
    model = load_pruned(folder).cpu().eval()
    size = tuple(spec.input_size or ())
    if samples is None:
        samples = torch.randn(count, *size, generator=torch.Generator().manual_seed(0))
        origin = f"{count} random inputs of size {' × '.join(map(str, size))}"
    if len(samples) <= TRACE_BATCH:  # the check runs at a batch size the files were not traced with
        samples = torch.cat([samples] * (TRACE_BATCH + 1))[:TRACE_BATCH + 1]
    result = ExportResult(out)
    for fmt in formats:
        check = export_one(model, fmt, out / FILES[fmt], samples, tolerance)
        result.checks.append(check)
        log(f"{fmt}: {out / FILES[fmt]} (max |Δ| {check.max_abs_diff:.2e} vs PyTorch on {origin})")
    if latency:
        from layerprune.export.latency import runtime_latency

        with_ort = "onnx" in formats
        base = create_model(spec.model, **spec.model_kwargs).eval()
        for name, m in (("pruned", model), ("base", base)):
            result.latency += runtime_latency(m, size, name=name, batch_sizes=batch_sizes,
                                              onnx=onnx_bytes(m, samples[:TRACE_BATCH]) if with_ort else None)
    write_json(out / "export.json", {
        "source": str(folder), "samples": origin, "tolerance": {"atol": tolerance.atol, "rtol": tolerance.rtol,
                                                                "rule": str(tolerance)},
        "checks": [c.to_dict() for c in result.checks], "latency": result.latency})
    return result

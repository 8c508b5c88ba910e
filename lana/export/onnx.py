"""ONNX: the model for ONNX Runtime (``.onnx``), batch dimension dynamic.

The torch.export-based exporter (``dynamo=True``) is used, fed the same ExportedProgram as
the pt2 and aoti formats. Only when it cannot be used is the legacy TorchScript exporter
tried, with the reason logged; a legacy trace that warns it recorded a Python branch on a
tensor value is refused, because it would be silently wrong for other inputs.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lana.errors import ExportError
from lana.export.pt2 import export_program
from lana.export.verify import atomic_path, batch_example, prepare

log = logging.getLogger("lana")

EXTRA = "onnx"
NEEDS = "onnx, onnxruntime and onnxscript"
_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
_NAMES = {"input_names": ["input"], "output_names": ["output"]}


def available() -> bool:
    """True when onnx, onnxruntime and onnxscript can all be imported."""
    return all(importlib.util.find_spec(name) is not None for name in _PACKAGES)


def _require() -> None:
    if not available():
        missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
        raise ExportError(f"the onnx format needs {NEEDS} ({', '.join(missing)} missing): pip install 'lana[{EXTRA}]'")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _dynamo(model: nn.Module, example: torch.Tensor, tmp: Path) -> str | None:
    """Export with ``dynamo=True`` to ``tmp``; the reason it could not, or None on success."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        return f"torch {torch.__version__} has no dynamo=True ONNX exporter (needs torch >= 2.5)"
    try:
        program = export_program(model, example)
    except ExportError as exc:
        return str(exc)
    try:
        onnx_program = torch.onnx.export(program, (batch_example(example),), dynamo=True, verbose=False, **_NAMES)
        onnx_program.save(str(tmp))
    except Exception as exc:  # noqa: BLE001 -- e.g. an op without an ONNX translation: try the legacy exporter
        return f"the dynamo ONNX exporter failed ({_first_line(exc)})"
    return None


def _legacy(model: nn.Module, example: torch.Tensor, tmp: Path, reason: str) -> None:
    """Export with the TorchScript-based exporter, refusing traces that baked in a branch."""
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(prepare(model), (batch_example(example),), str(tmp), **_NAMES,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **kwargs)
        except Exception as exc:
            raise ExportError(f"cannot export {type(model).__name__} to ONNX: {reason}; the legacy exporter "
                              f"failed too ({_first_line(exc)})") from exc
    traced = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if traced:
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: {reason}; the legacy exporter's trace "
                          f"would be wrong for other inputs ({str(traced[0].message).split('. ')[0]})")


def save(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Export ``model`` to ONNX at ``path`` (atomically), batch dimension dynamic.

    Args:
        model: the eager model.
        path: the ``.onnx`` file to write.
        example: an input batch for the capture.

    Returns:
        ``{"method": "dynamo" | "legacy", "dynamic_batch": True}`` plus ``fallback_reason``
        when the legacy exporter was used.
    """
    _require()
    with atomic_path(path) as tmp:
        reason = _dynamo(model, example, tmp)
        if reason is not None:
            log.warning("export: ONNX via the legacy TorchScript exporter, because %s", reason)
            _legacy(model, example, tmp, reason)
    return {"method": "dynamo" if reason is None else "legacy", "dynamic_batch": True,
            **({"fallback_reason": reason} if reason else {})}


class OrtModule:
    """An ONNX Runtime CPU session called like a module: tensor in, tensor out (a list of
    tensors, in the model's flattened output order, where it has several outputs)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # follow torch's setting
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feed = {self.input_name: x.detach().cpu().float().contiguous().numpy()}
        outputs = [torch.from_numpy(array) for array in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else outputs


def load(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Open an ``.onnx`` file in an ONNX Runtime CPU session.

    Args:
        path: the file.
        threads: intra-op threads (default: ``torch.get_num_threads()``).

    Returns:
        An :class:`OrtModule`.
    """
    _require()
    try:
        return OrtModule(Path(path), threads)
    except Exception as exc:  # onnxruntime raises its own types for bad or foreign files
        raise ExportError(f"ONNX Runtime cannot open {path} ({_first_line(exc)})") from exc

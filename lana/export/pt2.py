"""torch.export: an ExportedProgram with a dynamic batch dimension, saved as ``.pt2``.

The capture here (:func:`export_program`) is shared with AOTInductor and ONNX, so every
graph-based format fails the same way, with the same one-line explanation, on code that
``torch.export`` cannot capture (e.g. Python ``if`` on a tensor's value).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lana.errors import ExportError
from lana.export.verify import atomic_path, batch_example, prepare

EXTRA = None
NEEDS = "torch.export (torch >= 2.4)"

# Guards on tensor *values* end up in these errors; say what to change, not just what broke.
_DATA_DEPENDENT = ("data-dependent", "GuardOnDataDependentSymNode", "DataDependentOutputException")


def available() -> bool:
    """True when this torch has ``torch.export`` with ``Dim``, ``save`` and ``load``."""
    return all(hasattr(torch.export, name) for name in ("export", "Dim", "save", "load"))


def _explain(model: nn.Module, exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("File ")), "")
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if any(key in type(exc).__name__ + str(exc) for key in _DATA_DEPENDENT):
        text += ("; the forward branches on a tensor's value (Python if/while/int() on a tensor), which a graph "
                 "cannot record: rewrite it with torch.where or torch.cond, or export as torchscript")
    elif "Constraint" in type(exc).__name__ or "specializ" in str(exc):
        text += "; the model fixes its batch size (e.g. a reshape with a literal batch); use x.shape[0] or -1 instead"
    return f"torch.export cannot capture {type(model).__name__}: {text}" + (f" ({where})" if where else "")


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Capture a fused, eval-mode copy of ``model`` with a dynamic batch dimension.

    Args:
        model: the eager model (not modified).
        example: an input batch (a batch of 1 is widened to 2, so the batch stays symbolic).

    Returns:
        The ExportedProgram.
    """
    if not available():
        raise ExportError(f"this torch ({torch.__version__}) lacks torch.export; the pt2 format needs {NEEDS}")
    model = prepare(model)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            # strict=False traces Python as written (the default from torch 2.5 on; 2.4 defaulted to strict).
            return torch.export.export(model, (batch_example(example),), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:  # torch raises many unrelated types here; all mean "cannot capture"
        raise ExportError(_explain(model, exc)) from exc


def save(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Export ``model`` and write it with ``torch.export.save`` to ``path`` (atomically).

    Args:
        model: the eager model.
        path: the ``.pt2`` file to write.
        example: an input batch for the capture.

    Returns:
        ``{"method": "torch.export", "dynamic_batch": True}``.
    """
    program = export_program(model, example)
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    return {"method": "torch.export", "dynamic_batch": True}


def load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reload a ``.pt2`` written by :func:`save` as a callable module.

    Args:
        path: the file.

    Returns:
        ``torch.export.load(path).module()``.
    """
    try:
        return torch.export.load(Path(path)).module()
    except Exception as exc:  # a truncated or foreign file, or one from another torch version
        raise ExportError(
            f"cannot reload {path} with torch.export.load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc

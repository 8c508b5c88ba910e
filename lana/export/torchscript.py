"""TorchScript: scripted (traced where a third-party module cannot be scripted), saved,
reloaded and checked against eager.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

import op_zoo
from lana.errors import ExportError
from lana.run.folder import atomic_write_bytes

log = logging.getLogger("lana")


def to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """Script (or, failing that, trace) an eval-mode copy of ``model`` with fused branches."""
    model = op_zoo.fuse_for_export(copy.deepcopy(model).eval())
    try:
        return torch.jit.script(model), "script"
    except Exception as exc:  # e.g. a third-party block with unscriptable Python
        log.info("export: scripting failed (%s); tracing instead", str(exc).splitlines()[0])
        with torch.no_grad():
            return torch.jit.trace(model, example), "trace"


def export_torchscript(model: nn.Module, path: Path, images: torch.Tensor, atol: float) -> dict:
    """Write ``model`` as TorchScript to ``path``, reload it and check it matches eager.

    Args:
        model: the eager model.
        path: the ``.ts`` file to write (atomically).
        images: real inputs for the check.
        atol: largest tolerated absolute difference of outputs.

    Returns:
        ``{"path", "method", "max_abs_diff", "images"}``.
    """
    import io

    model = model.eval()
    scripted, method = to_torchscript(model, images[:2])
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    reloaded = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        diff = max((reloaded(images[i : i + 256]) - model(images[i : i + 256])).abs().max().item() for i in range(0, len(images), 256))
    if not diff <= atol:
        raise ExportError(f"exported {path.name} differs from the eager student by {diff:.2e} > atol {atol:.0e}; report this op set")
    return {"path": str(path), "method": method, "max_abs_diff": diff, "images": len(images)}

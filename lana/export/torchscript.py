"""TorchScript (``.ts``): scripted (traced where a third-party module cannot be scripted),
saved, reloaded and checked against eager like every other format (see ``verify``).

TorchScript is deprecated in favour of ``torch.export`` since torch 2.10, but users asked
to keep it, and bundles (``lana profile --bundle``) run it on machines without lana.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lana.errors import ExportError
from lana.export.verify import atomic_path, batch_example, prepare

log = logging.getLogger("lana")

EXTRA = None
NEEDS = "torch.jit (part of torch)"


def available() -> bool:
    """True while this torch still ships ``torch.jit`` scripting, saving and loading."""
    return all(hasattr(torch.jit, name) for name in ("script", "trace", "save", "load"))


def to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """Script (or, failing that, trace) an eval-mode copy of ``model`` with fused branches.

    Args:
        model: the eager model (not modified).
        example: an input batch, used only when scripting fails and the model is traced.

    Returns:
        The ScriptModule and how it was made (``"script"`` or ``"trace"``).
    """
    model = prepare(model)
    try:
        return torch.jit.script(model), "script"
    except Exception as exc:  # e.g. a third-party block with unscriptable Python
        log.info("export: scripting failed (%s); tracing instead", str(exc).splitlines()[0])
        try:
            with torch.no_grad():
                # strict=False: a list or dict output (feature maps) is traced as such, not refused
                return torch.jit.trace(model, batch_example(example), strict=False), "trace"
        except Exception as trace_exc:  # noqa: BLE001 -- both front-ends refused: one line for the user
            first = str(trace_exc).strip().splitlines()[0] if str(trace_exc).strip() else ""
            raise ExportError(f"TorchScript can neither script nor trace {type(model).__name__} "
                              f"({type(trace_exc).__name__}: {first})") from trace_exc


def save(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Script (or trace) ``model`` and write it to ``path`` (atomically).

    Args:
        model: the eager model.
        path: the ``.ts`` file to write.
        example: an input batch (for tracing; a scripted module is batch-agnostic anyway).

    Returns:
        ``{"method": "script" | "trace", "dynamic_batch": True}``.
    """
    scripted, method = to_torchscript(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return {"method": method, "dynamic_batch": True}


def load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reload a ``.ts`` file on the CPU, in eval mode.

    Args:
        path: the file.

    Returns:
        The ScriptModule.
    """
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # truncated or not TorchScript
        raise ExportError(f"cannot reload {path} with torch.jit.load ({type(exc).__name__}: {str(exc).strip()[:200]})") from exc

"""AOTInductor: the ExportedProgram compiled ahead of time to a native package (``.aoti.pt2``).

The package holds a shared library built by the host's C++ compiler for this device and
torch version; it runs without Python tracing overhead, batch size dynamic. Compiling takes
seconds to minutes, so the time is logged and reported.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lana.errors import ExportError
from lana.export.pt2 import export_program
from lana.export.verify import atomic_path

log = logging.getLogger("lana")

EXTRA = None
NEEDS = "a C++ compiler (g++ or c++ on PATH) and torch >= 2.6 (AOTInductor packaging)"


def compiler() -> str | None:
    """The C++ compiler AOTInductor will call, or None when there is none on PATH."""
    return shutil.which("g++") or shutil.which("c++")


def available() -> bool:
    """True with a C++ compiler and a torch whose AOTInductor packaging API is stable (2.6+)."""
    # 2.5 had the functions too, with required positional example args that 2.6 deprecated.
    # torch._inductor is imported lazily on first use (seconds), so it is not touched here.
    return compiler() is not None and torch.__version__ >= "2.6"


def save(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Export ``model``, compile it with AOTInductor and write the package to ``path``.

    Args:
        model: the eager model.
        path: the ``.aoti.pt2`` package to write (atomically; the name must end in ``.pt2``).
        example: an input batch, on the device the package is compiled for.

    Returns:
        ``{"method": "aoti", "dynamic_batch": True, "compile_s", "compiler", "device"}``.
    """
    if not available():
        raise ExportError(f"the aoti format needs {NEEDS}; found compiler {compiler()}, torch {torch.__version__}")
    if not str(path).endswith(".pt2"):
        raise ExportError(f"an AOTInductor package name must end in .pt2, got {Path(path).name}")
    program = export_program(model, example)
    start = time.perf_counter()
    with atomic_path(path) as tmp:
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
        except Exception as exc:  # compiler errors arrive as many types, with pages of C++ log
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(f"AOTInductor could not compile {type(model).__name__} with {compiler()} "
                              f"({type(exc).__name__}: {first}); rerun with TORCH_LOGS=output_code for the log") from exc
    seconds = time.perf_counter() - start
    log.info("export: AOTInductor compiled %s in %.1f s", Path(path).name, seconds)
    return {"method": "aoti", "dynamic_batch": True, "compile_s": round(seconds, 2), "compiler": compiler(),
            "device": str(example.device)}


def load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reload an AOTInductor package written by :func:`save`.

    Args:
        path: the ``.aoti.pt2`` file.

    Returns:
        A callable taking a batch and returning the output tensor.
    """
    if not available():
        raise ExportError(f"the aoti format needs {NEEDS}")
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # built for another device/torch, or not a package
        raise ExportError(f"cannot load AOTInductor package {path} ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                          "packages run only on the device and torch version they were compiled for") from exc
    return runner

"""lana: latency-aware network acceleration.

The public API (see docs/api.md)::

    import lana
    result = lana.accelerate(model, train=train_set, val=val_set, budget="50%")

Names are loaded on first use (PEP 562), so ``import lana`` and the light commands
(``lana --help``, ``lana solve --table``) do not import torch.
"""
from __future__ import annotations

import importlib

from lana.errors import (
    BlockDiscoveryError,
    BudgetError,
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ExportError,
    InfeasibleError,
    LanaError,
    RunFolderError,
    SolverUnavailableError,
    TableError,
    TeacherOutputError,
    UnknownModelError,
    UnknownOpError,
)

__version__ = "0.1.0"

_API = ("accelerate", "new_run", "open_run", "Run", "Result", "distill_candidates", "solve", "assemble_student",
        "finetune", "export_student", "read_report")
_ELSEWHERE = {"parse_budget": "lana.selection", "list_ops": "op_zoo"}
__all__ = [*_API, *_ELSEWHERE, "LanaError", "ConfigError", "DataError", "BlockDiscoveryError", "BudgetError",
           "InfeasibleError", "RunFolderError", "CheckpointError", "DeviceError", "ExportError", "SolverUnavailableError",
           "TableError", "TeacherOutputError", "UnknownModelError", "UnknownOpError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("lana.api"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'lana' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)

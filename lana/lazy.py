"""Modules loaded on first use, so the light commands (`lana solve --help`, `--table`) start fast.

``pd = lazy_import("pandas")`` binds a module whose code runs on the first attribute access
(the standard library's :class:`importlib.util.LazyLoader`): importing ``lana.selection`` or
a solver back-end costs nothing until a table is read or that back-end solves.
"""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType | None:
    """``name``, loaded when first used; the module itself if already imported; None if not installed.

    Args:
        name: a module's dotted name (its parent packages are imported now, the module later).

    Returns:
        The (lazy) module, or None when it cannot be found.
    """
    if name in sys.modules:
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package is missing or broken
        return None
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

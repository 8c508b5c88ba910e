"""The process's memory: what it holds, what the machine has left, and giving freed memory back.

Every stage keeps its peak under ``distill.max_memory`` by planning against what the process
already holds (:func:`held_bytes`) and by handing memory it no longer uses back to the
system (:func:`release_memory`): glibc keeps freed heap memory (the gradients and optimiser
moments of a finished group, a timed candidate's copies) in the process unless asked, so the
resident size of a long run only ever grew.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import re

import torch

from lana.config import DistillConfig
from lana.errors import ConfigError

log = logging.getLogger("lana")

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _status_kib(field: str, path: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes() -> int:
    """This process's resident set size now (``VmRSS``; 0 where /proc is missing)."""
    kib = _status_kib("VmRSS", "/proc/self/status")
    return (kib or 0) * 1024


def available_bytes() -> int | None:
    """What the machine can still give without swapping (``MemAvailable``), or None if unknown."""
    kib = _status_kib("MemAvailable", "/proc/meminfo")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def held_bytes(device: torch.device) -> int:
    """Memory the process already holds on ``device``: resident size (CPU) or reserved GPU memory."""
    if device.type == "cuda":
        return int(torch.cuda.memory_reserved(device))
    return resident_bytes()


def release_memory(device: torch.device | None = None) -> None:
    """Collect garbage and give freed memory back: the CUDA cache, and glibc's free heap pages."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    libc = _libc()
    if libc:
        try:
            libc.malloc_trim(0)
        except AttributeError:  # not glibc
            pass


# -- distill.max_memory --------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str | int, what: str = "memory size") -> int:
    """``"8GB"``, ``"512MiB"``, ``"2g"`` or a plain number of bytes -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{what} '{text}' is not understood; write e.g. 8GB, 512MB, auto or none")
    return int(float(match.group(1)) * _UNITS[unit])


def memory_limit(limit: int | str | None, device: torch.device) -> int | None:
    """The bound ``distill.max_memory`` puts on the whole process on ``device``, in bytes.

    A size is taken as given; ``+SIZE`` (:class:`OnTop`) is what the process holds now plus
    SIZE. ``auto`` is what the process holds now plus half of what is
    still free — the machine's available RAM on a CPU, the GPU's free memory on a GPU (85 %
    there: nothing else shares it as a rule) — so the rest of the machine keeps the other
    half. None: no bound.
    """
    if isinstance(limit, OnTop):
        return held_bytes(device) + int(limit)
    if limit is None or limit != "auto":
        return limit
    if device.type == "cuda":
        return int(torch.cuda.memory_reserved(device) + torch.cuda.mem_get_info(device)[0] * 0.85)
    available = available_bytes()
    return resident_bytes() + available // 2 if available is not None else None


def free_memory(device: torch.device) -> int:
    """Bytes the process may still add under ``max_memory: auto`` (0 when it holds more already)."""
    bound = memory_limit("auto", device)
    return 2**62 if bound is None else max(0, bound - held_bytes(device))  # None: unknown, assume it fits


def group_budget(limit: int | str | None, device: torch.device) -> int | None:
    """Bytes the candidate groups may use on ``device`` under ``distill.max_memory``.

    What the process already holds — the runtime, the teacher, its data; candidate modules are
    built group by group, not held — comes off :func:`memory_limit`. The figures are logged (with ``extra``: ``memory_limit``,
    ``memory_held``) for the run's log and for benchmarks.

    Args:
        limit: from :func:`memory_limits`: bytes, ``"auto"`` or None (no limit).
        device: the compute device.

    Raises:
        ConfigError: the process already holds the limit or more.
    """
    bound = memory_limit(limit, device)
    if bound is None:
        return None
    held = held_bytes(device)
    if isinstance(limit, OnTop):  # exactly SIZE for the groups, however much the runtime holds
        bound = held + int(limit)
    log.info("distill: max_memory %s on %s, %s already held, %s for the candidate groups", mib(bound), device, mib(held),
             mib(max(0, bound - held)), extra={"memory_limit": bound, "memory_held": held})
    if held >= bound:
        raise ConfigError(f"distill.max_memory {mib(bound)} is below the {mib(held)} this process already holds on {device} "
                          "(the runtime, the teacher and its data); raise --max-memory")
    return bound - held


def mib(size: int) -> str:
    """Bytes as mebibytes, for messages."""
    return f"{size / 2**20:.1f} MiB"


class OnTop(int):
    """A ``max_memory`` written ``+SIZE``: that many bytes on top of what the process holds."""


def memory_limits(cfg: DistillConfig) -> tuple[int | str | None, int | str | None]:
    """``(max_memory, feature_cache)``: bytes, ``"auto"``, or None (no limit / no cache).

    ``max_memory: +2GB`` gives :class:`OnTop` (2 GB for the candidate groups beyond what the
    process already holds); a plain size bounds the whole process.

    Raises:
        ConfigError: a size that cannot be read (said before anything runs).
    """
    limits = []
    for what in ("max_memory", "feature_cache"):
        text = str(getattr(cfg, what)).strip().lower()
        none = text in ("none", "off", "unlimited", "inf") or (what == "feature_cache" and text == "0")
        extra = what == "max_memory" and text.startswith("+")
        name = "--max-memory / distill.max_memory" if what == "max_memory" else f"distill.{what}"
        size = "auto" if text == "auto" else None if none else parse_bytes(text.removeprefix("+") if extra else text, name)
        limits.append(OnTop(size) if extra else size)
    return limits[0], limits[1]

"""What every export format shares: the registry, choosing formats, and the reload check.

A format is a module under ``lana.export`` with ``save(model, path, example) -> dict``,
``load(path) -> callable``, ``available() -> bool``, ``EXTRA`` (the pip extra that installs
its runtime, or None) and ``NEEDS`` (what it needs, in words); a format without
``available`` needs only torch. Modules are resolved by name when used, so a missing
optional runtime never breaks ``import lana``.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

import op_zoo
from lana.errors import ConfigError, ExportError
from lana.teacher.outputs import flatten_outputs

log = logging.getLogger("lana")


class Format(NamedTuple):
    """One export format: its file suffix and the module that implements it."""

    suffix: str
    module: str


FORMATS: dict[str, Format] = {
    "torchscript": Format(".ts", "lana.export.torchscript"),
    "pt2": Format(".pt2", "lana.export.pt2"),
    "aoti": Format(".aoti.pt2", "lana.export.aoti"),
    "onnx": Format(".onnx", "lana.export.onnx"),
}


def format_module(name: str) -> ModuleType:
    """The module implementing format ``name`` (see the module docstring for its interface)."""
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {name!r}; expected one of {', '.join(FORMATS)} (or 'all')")
    return importlib.import_module(FORMATS[name].module)


def is_available(name: str) -> bool:
    """True when format ``name``'s runtime is installed (formats without ``available()`` need only torch)."""
    return getattr(format_module(name), "available", lambda: True)()


def missing_runtime(name: str) -> ExportError:
    """The one-line error for a format whose runtime is not installed (raise it)."""
    module = format_module(name)
    extra = getattr(module, "EXTRA", None)
    fix = f": pip install 'lana[{extra}]'" if extra else ""
    return ExportError(f"export format {name!r} needs {getattr(module, 'NEEDS', 'its runtime')}, which is not available{fix}")


def parse_formats(text: str) -> list[str]:
    """Turn ``"torchscript,pt2"`` or ``"all"`` into a list of format names.

    Args:
        text: comma-separated format names, or ``all`` for every format whose runtime is
            installed (the others are skipped with a warning saying how to install them).

    Returns:
        The format names, in the order given (registry order for ``all``), without duplicates.
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"no export format given; expected one or more of {', '.join(FORMATS)} (or 'all')")
    if names == ["all"]:
        chosen = [name for name in FORMATS if is_available(name)]
        for name in FORMATS:
            if name not in chosen:
                log.warning("export: skipping %s (%s)", name, missing_runtime(name))
        return chosen
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {', '.join(unknown)}; expected one or more of {', '.join(FORMATS)} (or 'all')")
    for name in names:  # fail before any slow export, not halfway through
        if not is_available(name):
            raise missing_runtime(name)
    return list(dict.fromkeys(names))


def prepare(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with re-parameterisable branches fused, ready to export."""
    return op_zoo.fuse_for_export(copy.deepcopy(model).eval())


def batch_example(example: torch.Tensor) -> torch.Tensor:
    """Two rows of ``example`` for a capture: a batch of 1 would be specialised as a constant.

    Only two: ``torch.export.save`` stores the example inputs in the file (a whole test set
    made a 32 MB ``.pt2`` for a 0.9 MB student), cloned so that the slice does not carry
    the whole storage with it.
    """
    return example[:2].clone() if example.shape[0] >= 2 else example[:1].expand(2, *example.shape[1:]).contiguous()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file has ``path``'s very name, in a hidden folder beside it: writers that
    insist on a suffix (``.pt2``) accept it, the ``.pt2`` archive's inner folder is named
    after the file (not the temporary name), and a crash never leaves a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent / f".tmp-{secrets.token_hex(4)}"
    folder.mkdir()
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _outputs(fn: Callable, images: torch.Tensor, chunk: int = 256) -> list[torch.Tensor]:
    """The output tensors of ``fn`` over ``images`` (flattened: a tuple, list or dict output gives several)."""
    with torch.no_grad():
        parts = [flatten_outputs(fn(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return [torch.cat([torch.as_tensor(t).cpu() for t in tensors]) for tensors in zip(*parts)]


def check_artifact(loaded: Callable, model: nn.Module, images: torch.Tensor, atol: float) -> float:
    """Compare a reloaded artefact with the eager model at two batch sizes.

    Outputs of any structure (a tensor, or a tuple, list or dict of tensors) are compared
    tensor by tensor, in flattened order.

    Args:
        loaded: the reloaded artefact, called on a tensor.
        model: the eager model (unfused; it is put in eval mode).
        images: real inputs; batch 1 and the whole set (at least 2 rows) are compared.
        atol: largest tolerated absolute difference.

    Returns:
        The largest absolute difference seen.
    """
    model = model.eval()
    diff = 0.0
    for batch in (images[:1], batch_example(images)):
        got, want = _outputs(loaded, batch), _outputs(model, batch)
        if len(got) != len(want):
            raise ExportError(f"the exported model returns {len(got)} output tensors, the eager model {len(want)}")
        for index, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape:
                which = f"output tensor {index}" if len(want) > 1 else "the exported model"
                raise ExportError(f"{which} has shape {tuple(g.shape)} for a batch of {len(batch)}, "
                                  f"expected {tuple(w.shape)}; its batch dimension is not dynamic")
            diff = max(diff, (g.float() - w.float()).abs().max().item())
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"the exported model differs from eager by {diff:.2e} > atol {atol:.0e}; report this op set")
    return diff


def export_and_verify(name: str, model: nn.Module, path: Path, images: torch.Tensor, atol: float) -> dict:
    """Save ``model`` in format ``name``, reload it from disk and check it against eager.

    Args:
        name: a key of ``FORMATS``.
        model: the eager model.
        path: the file to write (atomically).
        images: real inputs for the check (the first two also serve as the export example).
        atol: largest tolerated absolute difference of outputs.

    Returns:
        The format's info plus ``{"format", "path", "max_abs_diff", "images"}``.
    """
    module = format_module(name)
    if not is_available(name):
        raise missing_runtime(name)
    info = module.save(model, Path(path), images[:2])
    diff = check_artifact(module.load(Path(path)), model, images, atol)
    return {"format": name, **info, "path": str(path), "max_abs_diff": diff, "images": len(images)}

"""Load the teacher network: a timm or torchvision model by name, or a user's factory.

Nothing here downloads weights (``pretrained=False`` / ``weights=None``): trained weights come
from the user's checkpoint, which is read with ``torch.load(weights_only=True)`` so that a
checkpoint can never run code. The only user code that runs is the named factory.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from lana.config import RANDOM_CHECKPOINT
from lana.errors import CheckpointError, ConfigError, UnknownModelError

# Keys under which training scripts commonly nest the state_dict, in the order tried.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 3  # how many offending keys an error message names


PYTHON_TEACHER = "python"  # teacher.model "python:module.Class": a module passed to lana.accelerate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models()


def _unknown(name: str, source: str, candidates: list[str]) -> UnknownModelError:
    # timm and torchvision share names (resnet18): suggest each once.
    close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "no close names"
    return UnknownModelError(
        f"unknown {source} model '{name}'; {hint} (or give 'package.module:factory')"
    )


def _is_timm_model(name: str) -> bool:
    import timm

    # timm accepts pretrained tags ("resnet18.a1_in1k"); the architecture is the part before.
    return timm.is_model(name) or timm.is_model(name.split(".", 1)[0])


def _is_torchvision_model(name: str) -> bool:
    return name in _torchvision_names()


def _call_builder(build, label: str, kwargs: dict):
    """Call a model builder, turning a keyword mismatch into a one-line ConfigError."""
    try:
        return build(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"building {label} with teacher.kwargs {sorted(kwargs)} failed ({_first_line(exc)}); "
            f"fix teacher.kwargs"
        ) from exc


def _build_timm(name: str, kwargs: dict) -> nn.Module:
    import timm

    if not _is_timm_model(name):
        raise _unknown(name, "timm", _timm_names())
    return _call_builder(
        lambda **kw: timm.create_model(name, pretrained=False, **kw), f"timm:{name}", kwargs
    )


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give a torchvision model ``in_chans`` input channels by rebuilding its stem conv."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ConfigError(f"in_chans={in_chans} given but {type(model).__name__} has no Conv2d; drop in_chans")
    if conv.in_channels == in_chans:
        return
    if conv.groups != 1:
        raise ConfigError(
            f"in_chans={in_chans}: the first conv '{name}' is grouped ({conv.groups}); "
            f"use a timm model or a factory instead"
        )
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _build_torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    if not _is_torchvision_model(name):
        raise _unknown(name, "torchvision", _torchvision_names())
    kwargs = dict(kwargs)
    in_chans = kwargs.pop("in_chans", None)
    build = lambda **kw: torchvision.models.get_model(name, weights=None, **kw)  # noqa: E731
    model = _call_builder(build, f"torchvision:{name}", kwargs)
    if in_chans is not None:
        _replace_first_conv(model, int(in_chans))
    return model


def _import_from_cwd(module_name: str):
    """Import a module, also looking in the working directory (as ``python -m`` would).

    The ``lana`` console script does not put the working directory on ``sys.path``, yet a
    user's ``mymodels.py`` next to the config is the common case (uvicorn does the same).
    """
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _build_factory(spec: str, kwargs: dict) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"expected 'package.module:factory', got '{spec}'; fix teacher.model")
    try:
        module = _import_from_cwd(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UnknownModelError(
                f"cannot import module '{module_name}' for teacher '{spec}': not found; "
                f"install it or add its folder to PYTHONPATH"
            ) from exc
        raise UnknownModelError(
            f"importing '{module_name}' for teacher '{spec}' failed ({_first_line(exc)}); install what it needs"
        ) from exc
    except Exception as exc:
        raise UnknownModelError(
            f"importing '{module_name}' for teacher '{spec}' failed ({_first_line(exc)}); fix that module"
        ) from exc
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UnknownModelError(
                f"module '{module_name}' has no attribute '{attr}' (teacher '{spec}'); "
                f"name a function or class that returns an nn.Module"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise UnknownModelError(
            f"'{spec}' is a {type(factory).__name__}, not callable; name a function or class "
            f"that returns an nn.Module"
        )
    model = _call_builder(factory, spec, kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(
            f"factory '{spec}' returned {type(model).__name__}, expected an nn.Module; "
            f"make it return the model"
        )
    return model


def build_model(model: str, kwargs: dict | None = None) -> nn.Module:
    """Build a teacher architecture with fresh weights (no download, no checkpoint).

    Args:
        model: ``"timm:NAME"``, ``"torchvision:NAME"``, bare ``"NAME"`` (timm first, then
            torchvision) or ``"package.module:factory"``.
        kwargs: keyword arguments for the builder (``num_classes``, ``in_chans``, ...).

    Returns:
        The model, in training mode as built.

    Raises:
        UnknownModelError: the name or factory cannot be found.
        ConfigError: the builder rejects the kwargs.
    """
    kwargs = dict(kwargs or {})
    model = model.strip()
    source, sep, rest = model.partition(":")
    if sep and source == PYTHON_TEACHER:
        raise UnknownModelError(
            f"this run's teacher ({rest}) was passed from Python and has no name to rebuild it from; "
            "reopen the run from Python: lana.open_run(RUN, teacher=model)")
    if sep and source == "timm":
        return _build_timm(rest, kwargs)
    if sep and source == "torchvision":
        return _build_torchvision(rest, kwargs)
    if sep:
        return _build_factory(model, kwargs)
    if _is_timm_model(model):
        return _build_timm(model, kwargs)
    if _is_torchvision_model(model):
        return _build_torchvision(model, kwargs)
    raise _unknown(model, "timm or torchvision", _timm_names() + _torchvision_names())


def _extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict in a loaded checkpoint (plain, or nested under a common key)."""
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = (
        f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
    )
    raise CheckpointError(
        f"checkpoint {path} holds {found}, expected a state_dict or a dict with one under "
        f"{' / '.join(repr(k) for k in CHECKPOINT_KEYS)}; save model.state_dict()"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _names(keys: list[str]) -> str:
    more = f", +{len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_checkpoint(model: nn.Module, checkpoint: str | Path, label: str = "the model") -> None:
    """Load a checkpoint into ``model`` in place, strictly (every key and shape must fit).

    Args:
        model: the architecture to fill.
        checkpoint: path of a file written by ``torch.save``: a state_dict, or a dict with
            it under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``. Leading
            ``"module."`` (DDP) and ``"_orig_mod."`` (torch.compile) prefixes are stripped.
        label: how error messages name the model (e.g. ``"timm:resnet18"``).

    Raises:
        CheckpointError: the file is missing, unreadable, holds no state_dict or does not fit.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; fix teacher.checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses classes it does not know: say which one, not torch's essay.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled {found.group(1)}, not just tensors, and lana "
                f"loads weights only; re-save it with torch.save(model.state_dict(), path)"
            ) from exc
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        raise CheckpointError(
            f"cannot read checkpoint {path} ({detail.group(1).strip()[:120] if detail else 'unpickling failed'}); "
            f"the file is corrupt or not written by torch.save"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({_first_line(exc)[:160]}); the file is corrupt or "
            f"not written by torch.save"
        ) from exc
    state = _strip_prefixes(_extract_state_dict(obj, path))
    expected = model.state_dict()
    # Old checkpoints lack BatchNorm's num_batches_tracked; it does not change the outputs.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_names(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches, checkpoint vs model ({_names(mismatched)})")
        raise CheckpointError(
            f"checkpoint {path} does not fit {label}: {'; '.join(problems)}; check teacher.model "
            f"and teacher.kwargs (num_classes, in_chans) match the checkpoint"
        )
    model.load_state_dict(state, strict=False)


def load_teacher(
    model: str, checkpoint: str | Path | None = None, kwargs: dict | None = None
) -> nn.Module:
    """Build the teacher, load its checkpoint and return it in eval mode.

    Args:
        model: ``"timm:resnet18"``, ``"torchvision:resnet18"``, bare ``"resnet18"`` (timm
            first, then torchvision), or ``"package.module:factory"`` (the module is
            imported and ``factory(**kwargs)`` must return an ``nn.Module``).
        checkpoint: the state_dict file (see :func:`load_checkpoint`), or ``"random"`` to keep
            the random initial weights on purpose (tests, timing studies). None is refused:
            accelerating an untrained network by accident wastes the whole run.
        kwargs: builder keywords. timm: any ``create_model`` keyword (``num_classes``,
            ``in_chans``, ...). torchvision: builder keywords (``num_classes``, ...) plus
            ``in_chans``, which replaces the first Conv2d with a fresh one.

    Returns:
        The teacher in eval mode, on the CPU.

    Raises:
        UnknownModelError, ConfigError, CheckpointError: one-line messages for bad input.
        CheckpointError: also when no checkpoint is given.
    """
    if checkpoint is None:
        raise CheckpointError(
            f"teacher '{model}' has no checkpoint, and lana would accelerate random weights; set teacher.checkpoint "
            f"to your trained state_dict, or teacher.checkpoint: {RANDOM_CHECKPOINT} for an untrained teacher on purpose")
    net = build_model(model, kwargs)
    if str(checkpoint) != RANDOM_CHECKPOINT:
        load_checkpoint(net, checkpoint, label=model)
    return net.eval()


def teacher_fingerprint(model: nn.Module) -> str:
    """A sha256 hex digest of the model's weights, to tie run folders to one teacher.

    Args:
        model: any module.

    Returns:
        64 hex characters over the sorted state_dict names, shapes, dtypes and raw bytes;
        identical weights give identical digests, any changed value changes it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if not isinstance(tensor, torch.Tensor):  # extra state saved by some modules
            digest.update(repr(tensor).encode())
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        # view as bytes so every dtype (bf16, bool, ...) hashes without numpy support.
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

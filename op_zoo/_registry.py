"""The op registry: named builders of candidate replacement ops, filled on import.

Like timm's ``register_model``: each family file decorates its builders, and
``op_zoo/__init__.py`` imports every family file, so importing ``op_zoo`` fills the
registry. Like torchvision's, registering a name twice is refused.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import importlib
import importlib.util
import itertools
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from torch import nn

from lana.errors import ConfigError, UnknownOpError
from lana.names import TEACHER_OP
from op_zoo._spec import LAYOUTS, BlockSpec

Builder = Callable[[BlockSpec], Union[nn.Module, None]]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_REGISTRY: dict[str, "OpDef"] = {}


@dataclass(frozen=True, eq=False)
class OpDef:
    """One registered op.

    Args:
        name: unique op name (lower case, digits and ``_``), e.g. ``"mbconv_k3_e6_se"``.
        family: the family it belongs to, e.g. ``"mbconv"``.
        description: one line saying what the op builds.
        source: the paper(s) or codebase the op comes from.
        builder: ``builder(spec) -> nn.Module | None``; ``None`` means the op declines
            a block whose shapes it cannot reproduce.
        params: the grid parameters the builder was bound to (empty for single ops).
        layouts: the block layouts the op builds for (``"nchw"`` feature maps by default;
            ``"nld"`` tokens, ``"nhwc"`` channels-last maps); other blocks are declined.
    """

    name: str
    family: str
    description: str
    source: str
    builder: Builder = field(repr=False)
    params: Mapping[str, Any] = field(default_factory=dict)
    layouts: tuple[str, ...] = ("nchw",)

    def build(self, spec: BlockSpec) -> nn.Module | None:
        """Build this op for one block.

        Args:
            spec: the block to replace.

        Returns:
            The candidate module, or ``None`` when the op declines the block (its layout
            is not one the op builds for, or its shapes cannot be reproduced).
        """
        if getattr(spec, "layout", "nchw") not in self.layouts:
            return None
        return self.builder(spec)


def _add(op: OpDef) -> None:
    if not _NAME_RE.match(op.name):
        raise ConfigError(
            f"op name {op.name!r} is invalid: expected lower-case letters, digits and '_'"
        )
    if op.name in _REGISTRY:
        old = _REGISTRY[op.name]
        raise ConfigError(
            f"op {op.name!r} is already registered (family {old.family!r}, "
            f"{getattr(old.builder, '__module__', '?')}); choose another name"
        )
    _REGISTRY[op.name] = op


def register_op(
    name: str, *, family: str, description: str, source: str, layouts: Sequence[str] = ("nchw",)
) -> Callable[[Builder], Builder]:
    """Decorator registering one op builder under ``name``.

    Args:
        name: unique op name; a name already registered is refused with ``ConfigError``.
        family: family name (groups ops in ``lana ops`` and docs).
        description: one line saying what the op builds.
        source: the paper or codebase the op comes from.
        layouts: block layouts the op builds for (``BlockSpec.layout``); default feature maps.

    Returns:
        The decorator; it returns the builder unchanged.
    """

    def decorate(builder: Builder) -> Builder:
        _add(OpDef(name, family, description, source, builder, layouts=_layouts(layouts)))
        return builder

    return decorate


def register_grid(
    name: str | Callable[..., str],
    *,
    family: str,
    description: str | Callable[..., str],
    source: str,
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    layouts: Sequence[str] = ("nchw",),
) -> Callable[[Callable[..., nn.Module | None]], Callable[..., nn.Module | None]]:
    """Decorator registering one op per point of a parameter grid.

    ``builder(spec, **params)`` is registered once per point under
    ``name.format(**params)`` (or ``name(**params)`` when ``name`` is callable).

    Args:
        name: format string or callable giving the op name of a grid point.
        family: family name shared by every point.
        description: format string or callable giving the one-line description.
        source: the paper or codebase the ops come from.
        grid: either a mapping ``{param: [values]}`` (every combination is registered)
            or an explicit list of parameter dicts.
        layouts: block layouts the ops build for (``BlockSpec.layout``); default feature maps.

    Returns:
        The decorator; it returns the builder unchanged.
    """
    if isinstance(grid, Mapping):
        keys = list(grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    else:
        points = [dict(p) for p in grid]

    def render(template: str | Callable[..., str], params: dict[str, Any]) -> str:
        return template(**params) if callable(template) else template.format(**params)

    def decorate(builder: Callable[..., nn.Module | None]) -> Callable[..., nn.Module | None]:
        for params in points:
            bound = partial(builder, **params)
            bound.__module__ = builder.__module__  # type: ignore[attr-defined]
            _add(OpDef(render(name, params), family, render(description, params), source,
                       bound, dict(params), _layouts(layouts)))
        return builder

    return decorate


def _layouts(layouts: Sequence[str]) -> tuple[str, ...]:
    layouts = (layouts,) if isinstance(layouts, str) else tuple(layouts)
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown or not layouts:
        raise ConfigError(f"op layouts must be some of {', '.join(LAYOUTS)}, got {list(layouts)}")
    return layouts


def list_ops(pattern: str = "*") -> list[OpDef]:
    """Registered ops whose name matches a shell-style pattern.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"mbconv_k3_*"``; ``"*"`` lists all.

    Returns:
        The matching ops, sorted by name.
    """
    return [_REGISTRY[n] for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, pattern)]


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{hint} (`lana ops` lists the {len(_REGISTRY)} registered ops)"


def get_op(name: str) -> OpDef:
    """Look an op up by exact name.

    Args:
        name: a registered op name.

    Returns:
        Its ``OpDef``.

    Raises:
        UnknownOpError: no op has that name; the message names close matches.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}{_suggest(name)}") from None


def _patterns(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def build_candidates(
    spec: BlockSpec, include: str | Iterable[str] = ("*",), exclude: str | Iterable[str] = ()
) -> dict[str, nn.Module]:
    """Build every selected op that accepts a block.

    The keep-teacher op ``"teacher"`` is always included (a deep copy of
    ``spec.module``), whatever the patterns say, when ``spec.module`` is set.

    Args:
        spec: the block to replace.
        include: name patterns of the ops to consider; each must match at least one op.
        exclude: name patterns of ops to leave out (applied after ``include``).

    Returns:
        ``{op name: module}``, ``"teacher"`` first, then by op name; ops that decline
        the block are absent.

    Raises:
        UnknownOpError: an include pattern matches no registered op.
    """
    candidates: dict[str, nn.Module] = {}
    for name in select_ops(include, exclude):
        module = build_op(spec, name)
        if module is not None:
            candidates[name] = module
    return candidates


def select_ops(include: str | Iterable[str] = ("*",), exclude: str | Iterable[str] = ()) -> list[str]:
    """The op names :func:`build_candidates` tries, without building anything.

    Returns:
        ``"teacher"`` first, then the names matching ``include`` and not ``exclude``, sorted.

    Raises:
        UnknownOpError: an include pattern matches no registered op.
    """
    include, exclude = _patterns(include), _patterns(exclude)
    for pattern in include:
        if not list_ops(pattern):
            raise UnknownOpError(f"op pattern {pattern!r} in 'include' matches no op{_suggest(pattern)}")
    return [TEACHER_OP] * (TEACHER_OP in _REGISTRY) + sorted(
        n for n in _REGISTRY
        if n != TEACHER_OP
        and any(fnmatch.fnmatchcase(n, p) for p in include)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    )


def build_op(spec: BlockSpec, name: str) -> nn.Module | None:
    """Build one op for one block (None where it declines); a builder's error names the op and block."""
    op = get_op(name)
    try:
        return op.build(spec)
    except Exception as err:  # a builder bug: say which op and block
        noted = _with_note(err, f"while building op {name!r} for block {spec.name!r}")
        if noted is err:
            raise
        raise noted from err


# ``BaseException.add_note`` is Python 3.11+; pyproject promises 3.10.
_HAS_ADD_NOTE = hasattr(BaseException, "add_note")


def _with_note(err: Exception, note: str) -> Exception:
    """Attach ``note`` to ``err``, the 3.11 way when it exists.

    Args:
        err: the exception being re-raised.
        note: the line to add (which op and block failed).

    Returns:
        ``err`` itself with the note added (3.11+), or on 3.10 a new exception of the
        same type whose message ends with the note (``RuntimeError`` when that type
        cannot be built from one message); the caller raises it ``from err``.
    """
    if _HAS_ADD_NOTE:
        err.add_note(note)
        return err
    message = f"{err} ({note})"
    try:
        return type(err)(message)
    except Exception:  # an exception type whose constructor wants other arguments
        return RuntimeError(f"{type(err).__name__}: {message}")


def _import_path(path: Path):
    module_name = f"lana_user_ops_{path.stem}"
    if module_name in sys.modules:
        if Path(sys.modules[module_name].__file__).resolve() != path.resolve():
            raise ConfigError(f"two op modules are named {path.name!r}; rename one of them")
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _import_one(name: str) -> None:
    try:
        if name.endswith(".py"):
            path = Path(name)
            if not path.is_file():
                raise ImportError(f"no such file: {path}")
            _import_path(path)
        else:
            importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(
            f"cannot import op module {name!r} ({err}); install it or put its folder "
            "on PYTHONPATH, or fix 'ops.modules' in the config"
        ) from err
    except ConfigError:
        raise  # e.g. a duplicate op name: already one line
    except Exception as err:  # a bug in the user's module: one line, cause kept for --debug
        raise ConfigError(f"op module {name!r} failed while importing: {type(err).__name__}: {err}") from err


def import_op_modules(modules: str | Iterable[str]) -> list[str]:
    """Import user modules so that their ``@register_op`` decorators run.

    Args:
        modules: dotted module names (``"mypkg.my_ops"``) or paths to ``.py`` files.

    Returns:
        The names of the ops these imports registered (empty for modules already imported).

    Raises:
        ConfigError: a module cannot be found, fails while importing, or registers a name
            that is already taken; always one line (the original error is the cause). Ops
            the failing module registered before failing are removed again.
    """
    before = set(_REGISTRY)
    for name in _patterns(modules):
        registered = set(_REGISTRY)
        try:
            _import_one(name)
        except ConfigError:
            for added in set(_REGISTRY) - registered:
                del _REGISTRY[added]
            raise
    return sorted(set(_REGISTRY) - before)


def copy_teacher(spec: BlockSpec) -> nn.Module | None:
    """A deep copy of the teacher block, or ``None`` when the spec carries none.

    Args:
        spec: the block description.

    Returns:
        An independent copy of ``spec.module`` (the teacher itself is never modified).
    """
    return None if spec.module is None else copy.deepcopy(spec.module)

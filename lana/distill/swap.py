"""The network before a block, computed once per block and replayed for its candidates.

Swap-one scoring runs the teacher with one block replaced, once for every candidate of
that block; everything that ran before the block is the same each time. A first pass on
one image records when each module's call starts and ends. For a block, the *prefix* is
the largest modules called once, whose call ended before the block's began: their outputs
on a batch of images are recorded by one teacher pass stopped at the block, and while the
block's candidates are scored those modules are swapped for stand-ins that return the
recorded outputs (a copy: later in-place operations cannot spoil them). What the parent
modules compute between their children (additions, reshapes) still runs: it is cheap, and
it keeps the replay true to any module graph, not only sequential ones.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lana.teacher.blocks import get_submodule, set_submodule

log = logging.getLogger("lana")


class _Stop(Exception):
    """Raised when the block is reached: the rest of the pass is not needed."""


class _Replay(nn.Module):
    """Stands in for a module of the prefix: returns (a copy of) its recorded output.

    Other attributes are read from the module it stands in for: a parent's forward may read
    them (timm's ViT reads ``patch_embed.grid_size``, ...).
    """

    def __init__(self, output: Any, original: nn.Module | None = None) -> None:
        super().__init__()
        self.output = output
        object.__setattr__(self, "_original", original)  # not a child: its weights stay out of this module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:
                raise
            return getattr(original, name)

    def forward(self, *args, **kwargs):
        return _clone(self.output)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _ancestors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Prefix:
    """Which modules of ``teacher`` run before each block, and their replay.

    Args:
        teacher: the network (eval mode; restored after every use).
        sample: one input batch (a single image is enough) to record the call order on.
    """

    def __init__(self, teacher: nn.Module, sample: torch.Tensor) -> None:
        self.teacher = teacher
        self.spans: dict[str, list[tuple[int, int]]] = {}
        clock = [0]
        starts: dict[str, list[int]] = {}
        handles = []
        for name, module in teacher.named_modules():
            if not name:
                continue

            def pre(_m, _a, name=name):
                starts.setdefault(name, []).append(clock[0])
                clock[0] += 1

            def post(_m, _a, _o, name=name):
                self.spans.setdefault(name, []).append((starts[name][len(self.spans.get(name, []))], clock[0]))
                clock[0] += 1

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            with torch.no_grad():
                teacher(sample)
        finally:
            for handle in handles:
                handle.remove()

    def modules_before(self, block: str) -> list[str]:
        """The largest modules called once and finished before ``block`` starts (its prefix)."""
        if len(self.spans.get(block, [])) != 1:
            return []
        begin = self.spans[block][0][0]
        done = {n for n, s in self.spans.items() if len(s) == 1 and s[0][1] < begin}
        # a module called again after the block, or more than once, never stands in; nor does one
        # inside another that stands in (its parent may be a container never called, a ModuleList)
        return [n for n in done if not any(a in done for a in _ancestors(n))]

    @torch.no_grad()
    def record(self, block: str, images: torch.Tensor) -> dict[str, Any]:
        """Outputs of the prefix modules of ``block`` on ``images`` (one pass, stopped at the block)."""
        names = self.modules_before(block)
        outputs: dict[str, Any] = {}
        handles = []
        for name in names:
            handles.append(get_submodule(self.teacher, name).register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out)))

        def stop(_m, _a):
            raise _Stop

        handles.append(get_submodule(self.teacher, block).register_forward_pre_hook(stop))
        try:
            self.teacher(images)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {n: outputs[n] for n in names if n in outputs}


class replayed:
    """Context manager: the prefix modules of a block replaced by their recorded outputs."""

    def __init__(self, teacher: nn.Module, outputs: dict[str, Any]) -> None:
        self.teacher, self.outputs, self.saved = teacher, outputs, {}

    def __enter__(self) -> nn.Module:
        for name, output in self.outputs.items():
            self.saved[name] = get_submodule(self.teacher, name)
            set_submodule(self.teacher, name, _Replay(output, self.saved[name]))
        return self.teacher

    def __exit__(self, *exc) -> None:
        for name, module in self.saved.items():
            set_submodule(self.teacher, name, module)
        self.saved = {}

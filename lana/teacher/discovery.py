"""Find replaceable blocks from a model's structure, not from a list of class names.

One forward pass with hooks on every module records, for each module, how often it runs,
in which order, and the shapes of its input and output when both are one tensor. A module
is a *block candidate* when it runs once, takes and returns one tensor of the same layout
((N, C, H, W) feature map, (N, H, W, C) channels-last map or (N, L, D) tokens), holds at
least two weight layers (a lone conv-BN-act is a layer, not a block), and is one of the
repeated children of a container (``Sequential``, ``ModuleList`` or ``ModuleDict`` children
that share their class: ``stages.N.blocks.M``, ``blocks.N``, ``layers.N``, ``features.N``),
or a feature point that timm's ``feature_info`` names (or a child of such a stage). Among nested candidates the
innermost ones win: a ConvNeXt stage is a container of blocks, not a block.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

# Per-sample layouts a block may have.
NCHW, NHWC, NLD = "nchw", "nhwc", "nld"


@dataclass
class Recorder:
    """What one hooked forward pass saw of the watched modules."""

    order: dict[str, int] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    in_shape: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    out_shape: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    first_leaf: dict[str, nn.Module] = field(default_factory=dict)

    def watch(self, name: str, module: nn.Module, active: list[str]) -> list:
        """Hook one module; ``active`` is the stack of watched modules now running."""

        def pre(_mod, args, kwargs):
            self.calls[name] += 1
            self.order.setdefault(name, len(self.order))
            single = (
                len(args) == 1
                and isinstance(args[0], torch.Tensor)
                and args[0].dim() in (3, 4)
                and not any(isinstance(v, torch.Tensor) for v in kwargs.values())
            )
            self.in_shape[name] = tuple(args[0].shape) if single else None
            if _is_weight_leaf(module):  # the first weight layer each running parent meets
                for outer in (*active, name):
                    self.first_leaf.setdefault(outer, module)
            active.append(name)

        def post(_mod, _args, _kwargs, output):
            if active and active[-1] == name:
                active.pop()
            ok = isinstance(output, torch.Tensor) and output.dim() in (3, 4)
            self.out_shape[name] = tuple(output.shape) if ok else None

        return [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True),
        ]

    def layout(self, name: str) -> str | None:
        """The block's layout, or None when its input and output are not one tensor of one layout."""
        shape_in, shape_out = self.in_shape.get(name), self.out_shape.get(name)
        if shape_in is None or shape_out is None or len(shape_in) != len(shape_out):
            return None
        if shape_in[0] != shape_out[0]:
            return None
        if len(shape_in) == 3:
            layout, sizes = NLD, slice(1, 2)
        else:
            leaf = self.first_leaf.get(name)
            channels_last = isinstance(leaf, nn.Linear) or (
                isinstance(leaf, nn.LayerNorm) and not type(leaf).__name__.lower().endswith("2d")
                and tuple(leaf.normalized_shape) == (shape_in[-1],)
            )
            layout, sizes = (NHWC, slice(1, 3)) if channels_last else (NCHW, slice(2, 4))
        # Every spatial (or token) dimension must shrink by one stride: a block that turns
        # (N, H, W, C) into (N, C, H, W) passes no other test, and no op could replace it.
        size_in, size_out = shape_in[sizes], shape_out[sizes]
        stride = -(-size_in[0] // max(size_out[0], 1))
        if any(-(-i // stride) != o for i, o in zip(size_in, size_out)):
            return None
        return layout

    def why_not(self, name: str) -> str | None:
        """None when the module qualifies as a block, else the reason it does not."""
        if self.calls[name] == 0:
            return "it does not run in the forward pass"
        if self.calls[name] > 1:
            return f"it runs {self.calls[name]} times per forward (shared weights)"
        if self.in_shape.get(name) is None:
            return "its input is not a single 4-D (N, C, H, W) or 3-D (N, L, D) tensor"
        if self.out_shape.get(name) is None:
            return "its output is not a single 4-D (N, C, H, W) or 3-D (N, L, D) tensor"
        if self.layout(name) is None:
            return (f"its input {self.in_shape[name]} and output {self.out_shape[name]} "
                    "have different layouts or batch sizes")
        return None


_LAYOUT_LEAVES = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, nn.MultiheadAttention)


def _is_weight_leaf(module: nn.Module) -> bool:
    """A layer whose input tells the layout: a conv or 2-D norm reads (N, C, H, W), a linear
    or layer norm reads the last dimension."""
    return isinstance(module, _LAYOUT_LEAVES)


def weight_layers(module: nn.Module) -> int:
    """How many modules inside ``module`` hold a weight of two or more dimensions.

    Args:
        module: any module.

    Returns:
        The count (a conv-BN-act counts 1, a residual basic block 2 or 3, a ViT block 4).
    """
    return sum(1 for m in module.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False)))


def record_forward(model: nn.Module, input_shape: tuple[int, ...], watched: list[tuple[str, nn.Module]]) -> Recorder:
    """Run one forward pass on zeros with hooks on ``watched``; the model's mode is restored.

    Args:
        model: the network.
        input_shape: shape of one input batch.
        watched: ``(name, module)`` pairs to record.

    Returns:
        The recorder.

    Raises:
        Exception: whatever the model's forward raises (the caller words it).
    """
    rec, active = Recorder(), []
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    handles = [h for name, mod in watched for h in rec.watch(name, mod, active)]
    was_training = model.training
    # eval(): batch-norm with batch 1 and 1x1 maps refuses to run in training mode.
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rec


def feature_info_stages(model: nn.Module) -> list[str]:
    """Module names of the stages that timm's ``feature_info`` reports, where it has any.

    Args:
        model: the network (any; non-timm models give an empty list).

    Returns:
        Names such as ``["stages.0", "stages.1"]`` that exist in the model.
    """
    info = getattr(model, "feature_info", None)
    entries = info.info if hasattr(info, "info") else info
    if not isinstance(entries, (list, tuple)):
        return []
    names = dict(model.named_modules())
    found = []
    for entry in entries:
        module = entry.get("module") if isinstance(entry, dict) else None
        if isinstance(module, str):
            module = module if module in names else module.replace("_", ".")
            if module in names and module:
                found.append(module)
    return found


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _repeated_children(model: nn.Module, stage_names: list[str]) -> list[str]:
    """Children of containers that share their class with a sibling, plus the stages that
    ``feature_info`` names and the children of those stages that are containers."""
    names = set()
    modules = dict(model.named_modules())
    for stage in stage_names:
        names.add(stage)  # a feature point is a block boundary (a ViT block, a ResNet stage)
        stage_module = modules[stage]
        inner = getattr(stage_module, "blocks", None)  # timm stages keep blocks in `.blocks`
        if isinstance(inner, _CONTAINERS):
            names.update(f"{stage}.blocks.{child}" for child in inner._modules)
        elif isinstance(stage_module, _CONTAINERS):
            names.update(f"{stage}.{child}" for child in stage_module._modules)
    for parent_name, parent in modules.items():
        if not isinstance(parent, _CONTAINERS):
            continue
        counts = Counter(type(child) for child in parent._modules.values() if child is not None)
        for child_name, child in parent._modules.items():
            if child is not None and counts[type(child)] > 1:
                names.add(f"{parent_name}.{child_name}" if parent_name else child_name)
    return [n for n in modules if n in names]


def structural_candidates(model: nn.Module, stage_names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """Modules that may be blocks by structure: repeated children holding ≥ 2 weight layers.

    Args:
        model: the network.
        stage_names: stage modules from ``feature_info`` whose children count as repeated.

    Returns:
        ``(name, module)`` pairs, parents before children (the shapes are checked later).
    """
    modules = dict(model.named_modules())
    repeated = set(_repeated_children(model, stage_names or []))
    return [(n, m) for n, m in modules.items() if n in repeated and weight_layers(m) >= 2]


def innermost(names: list[str]) -> list[str]:
    """Keep the names that contain no other name of the list (``a.b`` is inside ``a``).

    Args:
        names: dotted module names.

    Returns:
        The innermost ones, in the order given.
    """
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def outermost(names: list[str]) -> list[str]:
    """Keep the names that sit inside no other name of the list.

    Args:
        names: dotted module names.

    Returns:
        The outermost ones, in the order given.
    """
    return [n for n in names if not any(n.startswith(o + ".") for o in names)]


def why_none_found(model: nn.Module, rec: Recorder, tried: list[str]) -> str:
    """One clause saying why structural discovery found nothing, for the error message.

    Args:
        model: the network.
        rec: the recorder of the discovery pass.
        tried: names of the structural candidates that were checked.

    Returns:
        A short reason naming the most common refusal.
    """
    if not tried:
        return "no repeated submodule holds two or more weight layers"
    reasons = Counter(rec.why_not(n) for n in tried if rec.why_not(n) is not None)
    reason, count = reasons.most_common(1)[0]
    return f"{count} of {len(tried)} repeated submodules were refused because {reason}"

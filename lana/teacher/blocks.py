"""Block specs and swapping: describe the replaceable blocks of a teacher, and put candidates in.

A *block* is a submodule that takes one tensor and returns one tensor of the same layout
((N, C, H, W), (N, H, W, C) or (N, L, D) tokens), and that lana may swap for a cheaper op
with the same input and output shapes. Blocks are found from the model's structure
(``lana.teacher.discovery``) and by known block class names, or listed by module name in
the config (``teacher.blocks``). One forward pass with hooks records each block's real
shapes and the order in which blocks run.
"""
from __future__ import annotations

import difflib
from collections import Counter
from typing import Callable

from torch import nn

from lana.errors import BlockDiscoveryError
from lana.teacher.discovery import (
    NHWC,
    NLD,
    Recorder,
    feature_info_stages,
    innermost,
    outermost,
    record_forward,
    structural_candidates,
    why_none_found,
)
from op_zoo._spec import BlockSpec

# Class names of residual / inverted-residual blocks, mapped to an extra test the module
# must pass. Names (not classes) are matched so that user models and future timm versions
# with the same naming work without importing them here. Covered:
#   torchvision: resnet.BasicBlock/Bottleneck, mobilenetv2/v3.InvertedResidual,
#                efficientnet.MBConv/FusedMBConv, regnet.ResBottleneckBlock
#   timm:        resnet.BasicBlock/Bottleneck, regnet.Bottleneck/PreBottleneck,
#                resnetv2.PreActBasic/PreActBottleneck, _efficientnet_blocks.InvertedResidual/
#                DepthwiseSeparableConv/EdgeResidual/UniversalInvertedResidual/CondConvResidual,
#                ConvBnAct (EfficientNetV2's first stage, i.e. a fused-MBConv with expansion 1,
#                when it has a skip or a kxk kernel; the plain 1x1 head conv that MobileNetV3
#                keeps inside its blocks is left out, as torchvision keeps it outside)
#   user models: the names above plus ResBlock / ResidualBlock / BottleneckBlock.
def _ANY(module: nn.Module) -> bool:
    return True


def _is_fused_conv(module: nn.Module) -> bool:
    conv = getattr(module, "conv", None)
    kernel = getattr(conv, "kernel_size", (1,))
    return bool(getattr(module, "has_skip", False)) or max(kernel) > 1


BLOCK_CLASS_NAMES: dict[str, Callable[[nn.Module], bool]] = {
    "BasicBlock": _ANY,
    "Bottleneck": _ANY,
    "BottleneckBlock": _ANY,
    "ResBottleneckBlock": _ANY,
    "PreBottleneck": _ANY,
    "PreActBasic": _ANY,
    "PreActBottleneck": _ANY,
    "ResBlock": _ANY,
    "ResidualBlock": _ANY,
    "InvertedResidual": _ANY,
    "MBConv": _ANY,
    "FusedMBConv": _ANY,
    "DepthwiseSeparableConv": _ANY,
    "EdgeResidual": _ANY,
    "UniversalInvertedResidual": _ANY,
    "CondConvResidual": _ANY,
    "ConvBnAct": lambda module: _is_fused_conv(module),
}

# Activation class name (lower case) -> the name op builders understand. Sigmoid-like
# gates are left out on purpose: they live in squeeze-excite and are not the block's act.
_ACT_NAMES = {
    "relu": "relu",
    "relu6": "relu6",
    "silu": "silu",
    "swish": "silu",
    "swishme": "silu",
    "hardswish": "hardswish",
    "hardswishme": "hardswish",
    "gelu": "gelu",
    "gelutanh": "gelu",
    "quickgelu": "gelu",
    "mish": "mish",
    "mishme": "mish",
    "hardmish": "hardmish",
    "hardmishme": "hardmish",
    "leakyrelu": "leaky_relu",
    "prelu": "prelu",
    "elu": "elu",
    "celu": "celu",
    "selu": "selu",
}


def _block_class_match(module: nn.Module) -> bool:
    """True when the module's class (or a base class) has a known block name."""
    for cls in type(module).__mro__:
        test = BLOCK_CLASS_NAMES.get(cls.__name__)
        if test is not None:
            return test(module)
    return False


def activation_name(module: nn.Module) -> str | None:
    """Name of an activation module (``"relu"``, ``"silu"``, ...), or None if it is not one.

    Args:
        module: any module.

    Returns:
        The normalised activation name, or None.
    """
    return _ACT_NAMES.get(type(module).__name__.lower())


def _first_activation(module: nn.Module) -> str | None:
    for sub in module.modules():
        name = activation_name(sub)
        if name is not None:
            return name
    return None


def _model_activation(model: nn.Module) -> str:
    """The teacher's most common activation: the fallback for blocks that use F.relu etc."""
    counts = Counter(n for n in map(activation_name, model.modules()) if n is not None)
    return counts.most_common(1)[0][0] if counts else "relu"


def _close_names(model: nn.Module, name: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    return ", ".join(close) if close else "none"


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule at a dotted path such as ``"layer2.0"`` or ``"blocks.3.1"``.

    Args:
        model: the network.
        name: dotted module name as in ``model.named_modules()``; ``""`` is the model itself.

    Returns:
        The submodule.

    Raises:
        BlockDiscoveryError: no module has that name (the message suggests close names).
    """
    module = model
    if not name:
        return module
    for part in name.split("."):
        child = module._modules.get(part)
        if child is None:
            raise BlockDiscoveryError(
                f"no module named '{name}' in {type(model).__name__}; close names: "
                f"{_close_names(model, name)}; fix the name in teacher.blocks"
            )
        module = child
    return module


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted path (works inside ``Sequential``/``ModuleList``).

    Args:
        model: the network, changed in place.
        name: dotted module name of an existing submodule (not ``""``).
        module: the new module.

    Raises:
        BlockDiscoveryError: the name is empty or no module has that name.
        TypeError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"set_submodule expects an nn.Module, got {type(module).__name__}")
    if not name:
        raise BlockDiscoveryError("cannot replace the whole model as a block; name a submodule")
    parent_name, _, leaf = name.rpartition(".")
    parent = get_submodule(model, parent_name)
    if leaf not in parent._modules:
        get_submodule(model, name)  # raises with close-name suggestions
    # _modules keeps insertion order, so the replacement runs where the old block ran.
    parent._modules[leaf] = module


def _run_forward(model: nn.Module, input_shape: tuple[int, ...], watched) -> Recorder:
    try:
        return record_forward(model, input_shape, watched)
    except Exception as exc:  # the teacher's own error, reported as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BlockDiscoveryError(
            f"forward of {type(model).__name__} on input shape {tuple(input_shape)} failed "
            f"({type(exc).__name__}: {first}); check the data input shape and teacher.kwargs "
            f"(e.g. in_chans)"
        ) from exc


def _make_spec(model: nn.Module, name: str, rec: Recorder, fallback_act: str) -> BlockSpec:
    module = get_submodule(model, name)
    layout = rec.layout(name)
    shape_in, shape_out = rec.in_shape[name][1:], rec.out_shape[name][1:]
    if layout == NLD:  # (L, D): channels are the token width, the "size" the token count
        (l_in, c_in), (l_out, c_out) = shape_in, shape_out
        size_in, size_out = (l_in,), (l_out,)
    elif layout == NHWC:
        *size_in, c_in = shape_in
        *size_out, c_out = shape_out
    else:
        c_in, *size_in = shape_in
        c_out, *size_out = shape_out
    # Ceil division: a stride-2 conv maps 7 -> 4, and 7 / 4 rounds up to 2.
    stride = max(1, -(-size_in[0] // max(size_out[0], 1)))
    return BlockSpec(
        name=name,
        in_channels=c_in,
        out_channels=c_out,
        in_size=tuple(size_in),
        out_size=tuple(size_out),
        stride=stride,
        module=module,
        act=_first_activation(module) or fallback_act,
        layout=layout,
    )


def _check_listed(model: nn.Module, names: list[str]) -> None:
    if not names:
        raise BlockDiscoveryError(
            "teacher.blocks is empty; list block module names, or leave it out to find blocks automatically"
        )
    seen = set()
    for name in names:
        if name in seen:
            raise BlockDiscoveryError(f"teacher.blocks lists '{name}' twice; list each block once")
        seen.add(name)
        if not name:
            raise BlockDiscoveryError("teacher.blocks holds an empty name; list submodule names")
        get_submodule(model, name)
    for name in names:
        for other in names:
            if name != other and name.startswith(other + "."):
                raise BlockDiscoveryError(
                    f"teacher.blocks lists '{name}' inside '{other}'; list blocks that do not nest"
                )


def discover_blocks(
    model: nn.Module, input_shape: tuple[int, ...], names: list[str] | None = None
) -> list[BlockSpec]:
    """Find the replaceable blocks of a teacher and describe each one.

    Runs one forward pass with zeros of ``input_shape`` (under ``no_grad``, in eval mode;
    the model's mode is restored) with hooks on the modules. Without ``names``, blocks are
    the outermost modules of a known block class (``BLOCK_CLASS_NAMES``) plus, outside
    them, what the model's structure shows (``lana.teacher.discovery``): the innermost
    repeated children of containers that hold two or more weight layers and take and give
    one tensor of one layout (feature map, channels-last map or tokens).

    Args:
        model: the teacher network.
        input_shape: shape of one input batch, e.g. ``(1, 3, 224, 224)``.
        names: module names to use as blocks (``teacher.blocks`` in the config); None to
            find them automatically.

    Returns:
        One ``BlockSpec`` per block, in the order blocks run in the forward pass.

    Raises:
        BlockDiscoveryError: a listed name does not exist or is not a one-tensor-in,
            one-tensor-out block; nothing was found; or the forward pass failed.
    """
    if len(tuple(input_shape)) != 4:
        raise BlockDiscoveryError(
            f"expected a 4-D input shape (N, C, H, W), got {tuple(input_shape)}; fix the data input shape"
        )
    if names is not None:
        names = list(names)
        _check_listed(model, names)
        rec = _run_forward(model, input_shape, [(n, m) for n, m in model.named_modules()])
        for name in names:
            reason = rec.why_not(name)
            if reason is not None:
                raise BlockDiscoveryError(
                    f"teacher.blocks entry '{name}' ({type(get_submodule(model, name)).__name__}) "
                    f"cannot be replaced: {reason}; list another module"
                )
        chosen = names
    else:
        rec = _run_forward(model, input_shape, [(n, m) for n, m in model.named_modules()])
        known = [n for n, m in model.named_modules() if n and _block_class_match(m) and rec.why_not(n) is None]
        known = outermost(known)
        tried = [n for n, _ in structural_candidates(model, feature_info_stages(model))]
        found = innermost([n for n in tried if rec.why_not(n) is None])
        # Known blocks win over structural ones that hold them or sit inside them.
        found = [n for n in found if not any(n.startswith(k + ".") or k.startswith(n + ".") or n == k for k in known)]
        chosen = known + found
        if not chosen:
            seen = sorted({type(m).__name__ for n, m in model.named_modules() if n})
            raise BlockDiscoveryError(
                f"no replaceable blocks found in {type(model).__name__}: {why_none_found(model, rec, tried)} "
                f"(module classes seen: {', '.join(seen[:20])}{', ...' if len(seen) > 20 else ''}); "
                f"name the block modules: teacher.blocks in the config, or blocks=[...] in Python"
            )
    chosen = sorted(chosen, key=lambda n: rec.order[n])
    fallback_act = _model_activation(model)
    return [_make_spec(model, n, rec, fallback_act) for n in chosen]


def describe_blocks(specs: list[BlockSpec]) -> list[dict]:
    """JSON-able summary rows of discovered blocks (for reports and ``lana show``).

    Args:
        specs: blocks as returned by :func:`discover_blocks`.

    Returns:
        One dict per block: name, class, layout, in_shape / out_shape per sample (``[C, H, W]``,
        ``[H, W, C]`` or ``[L, D]`` by layout), stride, act,
        params (parameter count of the teacher block).
    """
    rows = []
    for spec in specs:
        module = spec.module
        rows.append(
            {
                "name": spec.name,
                "class": type(module).__name__ if module is not None else None,
                "layout": spec.layout,
                "in_shape": list(spec.in_shape),
                "out_shape": list(spec.out_shape),
                "stride": spec.stride,
                "act": spec.act,
                "params": sum(p.numel() for p in module.parameters()) if module is not None else 0,
            }
        )
    return rows

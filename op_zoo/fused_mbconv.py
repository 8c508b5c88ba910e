"""Fused-MBConv: the expand 1x1 and depthwise kxk of MBConv fused into one regular kxk conv."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok, residual, se_or_identity
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec


def fused_inverted_residual(spec: BlockSpec, kernel: int, hidden: int, se: bool, act: str,
                            in_channels: int | None = None, stride: int | None = None) -> nn.Module:
    """The fused-MBConv body (kxk conv -> [SE] -> 1x1 project), residual when shapes match.

    Args:
        spec: the block (output channels; shortcut decision).
        kernel: kernel size of the fused conv.
        hidden: channels after the fused conv.
        se: add a squeeze-and-excitation gate.
        act: activation name.
        in_channels / stride: override the input channels and stride (space-to-depth
            variants feed an already-folded tensor); default from ``spec``.

    Returns:
        The block.
    """
    in_ch = spec.in_channels if in_channels is None else in_channels
    body = nn.Sequential(
        ConvBnAct(in_ch, hidden, kernel, spec.stride if stride is None else stride, act=act),
        se_or_identity(se, hidden, in_ch, act),
        ConvBnAct(hidden, spec.out_channels, 1, act=None),
    )
    return residual(body, spec) if in_channels is None else body


@register_grid(lambda k, e, se: f"fused_mbconv_k{k}_e{e}" + ("_se" if se else ""), family="fused_mbconv",
               description=lambda k, e, se: f"fused inverted residual: {k}x{k} conv to {e}x channels"
                                            f"{', SE' if se else ''}, 1x1 project, residual when shapes match",
               source="EfficientNet-EdgeTPU / EfficientNetV2 (Gupta 2019; Tan 2021)",
               grid={"k": [3, 5], "e": [1, 3, 4, 6], "se": [False, True]})
def fused_mbconv(spec: BlockSpec, k: int, e: int, se: bool) -> nn.Module | None:
    """Fused-MBConv with kernel ``k``, expansion ``e`` and optional SE.

    Args:
        spec: the block.
        k / e / se: grid parameters.

    Returns:
        The block, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    return fused_inverted_residual(spec, k, spec.in_channels * e, se, spec.act)

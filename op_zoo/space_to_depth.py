"""Space-to-depth replacements of strided blocks: fold each stride x stride patch into channels,
then run a stride-1 op on the smaller, deeper tensor (dense convs suit accelerators better)."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, SpaceToDepth, geometry_ok
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec
from op_zoo.fused_mbconv import fused_inverted_residual

_SOURCE = "EfficientNet-X space-to-depth (Li 2021, 'Searching for Fast Model Families on Datacenter Accelerators')"


def _folded_channels(spec: BlockSpec) -> int | None:
    """Channels after space-to-depth, or ``None`` for a stride-1 or irregular block."""
    if spec.stride < 2 or not geometry_ok(spec):
        return None
    return spec.in_channels * spec.stride**2


@register_grid("s2d_conv_k{k}", family="space_to_depth",
               description="space-to-depth by the stride, then a {k}x{k} conv-BN-act; strided blocks only",
               source=_SOURCE, grid={"k": [1, 3]})
def s2d_conv(spec: BlockSpec, k: int) -> nn.Module | None:
    """Space-to-depth followed by one conv-BN-act.

    Args:
        spec: the block.
        k: conv kernel size.

    Returns:
        The layers, or ``None`` for stride-1 blocks.
    """
    folded = _folded_channels(spec)
    if folded is None:
        return None
    return nn.Sequential(SpaceToDepth(spec.stride), ConvBnAct(folded, spec.out_channels, k, act=spec.act))


@register_grid("s2d_fused_mbconv_k3_e{e}", family="space_to_depth",
               description="space-to-depth by the stride, then fused-MBConv (3x3 conv to {e}x the input "
                           "channels, 1x1 project); strided blocks only",
               source=_SOURCE, grid={"e": [2, 4]})
def s2d_fused_mbconv(spec: BlockSpec, e: int) -> nn.Module | None:
    """Space-to-depth followed by a stride-1 fused-MBConv body.

    Args:
        spec: the block.
        e: hidden channels as a multiple of the block's input channels.

    Returns:
        The layers, or ``None`` for stride-1 blocks.
    """
    folded = _folded_channels(spec)
    if folded is None:
        return None
    body = fused_inverted_residual(spec, 3, spec.in_channels * e, False, spec.act,
                                   in_channels=folded, stride=1)
    return nn.Sequential(SpaceToDepth(spec.stride), body)

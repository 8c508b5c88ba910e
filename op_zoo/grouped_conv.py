"""Grouped convolutions: ShuffleNet-style grouped conv + channel shuffle, ResNeXt bottlenecks."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ChannelShuffle, ConvBnAct, geometry_ok
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec
from op_zoo.resnet import bottleneck_block


@register_grid("gconv_k{k}_g{g}", family="grouped",
               description="{k}x{k} conv with {g} groups, BN, act, then channel shuffle",
               source="grouped conv + channel shuffle (ShuffleNet, Zhang 2018)",
               grid={"k": [3, 5], "g": [2, 4, 8]})
def grouped_conv(spec: BlockSpec, k: int, g: int) -> nn.Module | None:
    """Grouped conv-BN-act followed by a channel shuffle so that groups mix in the next layer.

    Args:
        spec: the block.
        k / g: kernel size and number of groups.

    Returns:
        The layers, or ``None`` when channels are not divisible by ``g`` (at least 2 per group).
    """
    c_in, c_out = spec.in_channels, spec.out_channels
    if not geometry_ok(spec) or c_in % g or c_out % g or c_in // g < 2 or c_out // g < 2:
        return None
    return nn.Sequential(ConvBnAct(c_in, c_out, k, spec.stride, groups=g, act=spec.act), ChannelShuffle(g))


@register_grid("resnext_bottleneck_g{g}", family="grouped",
               description="ResNeXt bottleneck: 1x1, 3x3 with {g} groups, 1x1; half the output channels inside",
               source="ResNeXt (Xie 2017)", grid={"g": [4, 8, 16]})
def resnext_bottleneck(spec: BlockSpec, g: int) -> nn.Module | None:
    """ResNeXt bottleneck with cardinality ``g``.

    Args:
        spec: the block.
        g: groups of the 3x3 conv.

    Returns:
        The block, or ``None`` when declined.
    """
    return bottleneck_block(spec, 0.5, spec.act, groups=g)

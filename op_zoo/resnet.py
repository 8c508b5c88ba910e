"""Residual blocks of ResNet: basic (two 3x3 convs) and bottleneck (1x1, 3x3, 1x1)."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok, residual, scaled
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec

_SOURCE = "ResNet (He 2016)"


def basic_block(spec: BlockSpec, width: float, act: str, post_act: bool = True) -> nn.Module | None:
    """ResNet basic block: 3x3 conv (strided) -> 3x3 conv, identity or projection shortcut.

    Args:
        spec: the block.
        width: hidden channels as a fraction of the output channels.
        act: activation name.
        post_act: apply the activation after the add (ResNet); False gives one activation only.

    Returns:
        The block, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    hidden = scaled(spec.out_channels, width)
    body = nn.Sequential(
        ConvBnAct(spec.in_channels, hidden, 3, spec.stride, act=act),
        ConvBnAct(hidden, spec.out_channels, 3, act=None),
    )
    return residual(body, spec, project=True, post_act=act if post_act else None)


def bottleneck_block(spec: BlockSpec, width: float, act: str, groups: int = 1,
                     post_act: bool = True) -> nn.Module | None:
    """ResNet / ResNeXt bottleneck: 1x1 reduce -> 3x3 (strided, grouped) -> 1x1 expand.

    Args:
        spec: the block.
        width: hidden channels as a fraction of the output channels.
        act: activation name.
        groups: groups of the 3x3 conv (ResNeXt cardinality); hidden channels must divide.
        post_act: apply the activation after the add (ResNet); False drops that one.

    Returns:
        The block, or ``None`` when declined (geometry, or hidden channels not divisible).
    """
    hidden = scaled(spec.out_channels, width)
    if not geometry_ok(spec) or hidden % groups or (groups > 1 and hidden // groups < 2):
        return None
    body = nn.Sequential(
        ConvBnAct(spec.in_channels, hidden, 1, act=act),
        ConvBnAct(hidden, hidden, 3, spec.stride, groups=groups, act=act),
        ConvBnAct(hidden, spec.out_channels, 1, act=None),
    )
    return residual(body, spec, project=True, post_act=act if post_act else None)


@register_grid("resnet_basic_w{w}", family="resnet",
               description="ResNet basic block, two 3x3 convs with {w}% of the output channels inside",
               source=_SOURCE, grid={"w": [25, 50, 100]})
def resnet_basic(spec: BlockSpec, w: int) -> nn.Module | None:
    """Basic block with hidden width ``w`` percent of the output channels.

    Args:
        spec: the block.
        w: width percentage.

    Returns:
        The block, or ``None`` when declined.
    """
    return basic_block(spec, w / 100, spec.act)


@register_grid("resnet_bottleneck_w{w}", family="resnet",
               description="ResNet bottleneck block (1x1, 3x3, 1x1) with {w}% of the output channels inside",
               source=_SOURCE, grid={"w": [25, 50, 100]})
def resnet_bottleneck(spec: BlockSpec, w: int) -> nn.Module | None:
    """Bottleneck block with hidden width ``w`` percent of the output channels.

    Args:
        spec: the block.
        w: width percentage.

    Returns:
        The block, or ``None`` when declined.
    """
    return bottleneck_block(spec, w / 100, spec.act)

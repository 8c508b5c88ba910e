"""Skips: drop the block (same-shape blocks), or the cheapest possible downsampling (strided ones)."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok
from op_zoo._registry import register_op
from op_zoo._spec import LAYOUTS, BlockSpec


@register_op("identity", family="identity",
             description="skip the block (output = input); same-shape blocks only",
             source="skip op of DNA / LANA (Li 2020; Molchanov 2022)", layouts=LAYOUTS)
def identity(spec: BlockSpec) -> nn.Module | None:
    """``nn.Identity`` for a same-shape block.

    Args:
        spec: the block.

    Returns:
        ``nn.Identity()``, or ``None`` when input and output shapes differ.
    """
    return nn.Identity() if spec.same_shape else None


@register_op("avgpool_conv_k1", family="identity",
             description="cheapest downsampling skip: average pool by the stride, then 1x1 conv-BN; "
                         "strided blocks only",
             source="ResNet-D shortcut (He 2019, 'Bag of Tricks')")
def avgpool_conv(spec: BlockSpec) -> nn.Module | None:
    """Average pooling (ceil mode, so odd sizes give ``ceil(H / stride)``) and a linear 1x1 conv-BN.

    Args:
        spec: the block.

    Returns:
        The layers, or ``None`` for stride-1 or irregular blocks.
    """
    if spec.stride < 2 or not geometry_ok(spec):
        return None
    pool = nn.AvgPool2d(spec.stride, spec.stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, ConvBnAct(spec.in_channels, spec.out_channels, 1, act=None))

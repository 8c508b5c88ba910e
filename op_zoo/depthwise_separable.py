"""Depthwise-separable convolutions: depthwise kxk then pointwise 1x1 (MobileNetV1)."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok, se_or_identity
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec


def depthwise_separable(spec: BlockSpec, kernel: int, se: bool, act: str,
                        act_after_dw: bool = True) -> nn.Module | None:
    """Depthwise kxk conv-BN-act (strided) -> [SE] -> pointwise 1x1 conv-BN-act.

    Args:
        spec: the block.
        kernel: depthwise kernel size.
        se: add a squeeze-and-excitation gate between the two convs.
        act: activation name.
        act_after_dw: keep the activation after the depthwise conv.

    Returns:
        The layers, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    c = spec.in_channels
    return nn.Sequential(
        ConvBnAct(c, c, kernel, spec.stride, groups=c, act=act if act_after_dw else None),
        se_or_identity(se, c, c, act),
        ConvBnAct(c, spec.out_channels, 1, act=act),
    )


@register_grid(lambda k, se: f"dwsep_k{k}" + ("_se" if se else ""), family="dwsep",
               description=lambda k, se: f"depthwise-separable: {k}x{k} depthwise{', SE' if se else ''}, "
                                         "1x1 pointwise, act after each",
               source="MobileNetV1 (Howard 2017)", grid={"k": [3, 5, 7], "se": [False, True]})
def dwsep(spec: BlockSpec, k: int, se: bool) -> nn.Module | None:
    """Depthwise-separable conv with kernel ``k`` and optional SE.

    Args:
        spec: the block.
        k / se: grid parameters.

    Returns:
        The layers, or ``None`` when declined.
    """
    return depthwise_separable(spec, k, se, spec.act)

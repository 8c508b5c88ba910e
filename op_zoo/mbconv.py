"""Inverted residual blocks (MBConv): expand 1x1 -> depthwise kxk -> [SE] -> project 1x1."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok, residual, se_or_identity
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec


def inverted_residual(spec: BlockSpec, kernel: int, expansion: float, se: bool, act: str,
                      act_after_expand: bool = True, act_after_dw: bool = True) -> nn.Module | None:
    """An MBConv block for ``spec``: linear bottleneck with a residual add when shapes match.

    Args:
        spec: the block (channels, stride, geometry).
        kernel: depthwise kernel size (odd).
        expansion: hidden channels = ``expansion * in_channels``; 1 drops the expand conv.
        se: add a squeeze-and-excitation gate after the depthwise conv.
        act: activation name.
        act_after_expand / act_after_dw: keep the activation at that position
            (fewer-activation variants turn one off).

    Returns:
        The block, or ``None`` when the block's geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    in_ch, hidden = spec.in_channels, max(1, int(round(spec.in_channels * expansion)))
    layers = []
    if expansion != 1:
        layers.append(ConvBnAct(in_ch, hidden, 1, act=act if act_after_expand else None))
    layers += [
        ConvBnAct(hidden, hidden, kernel, spec.stride, groups=hidden, act=act if act_after_dw else None),
        se_or_identity(se, hidden, in_ch, act),
        ConvBnAct(hidden, spec.out_channels, 1, act=None),
    ]
    return residual(nn.Sequential(*layers), spec)


@register_grid(lambda k, e, se: f"mbconv_k{k}_e{e}" + ("_se" if se else ""), family="mbconv",
               description=lambda k, e, se: f"inverted residual: {'' if e == 1 else f'1x1 expand x{e}, '}"
                                            f"{k}x{k} depthwise{', SE' if se else ''}, 1x1 project, "
                                            "residual when shapes match",
               source="MobileNetV2 / MnasNet / EfficientNet (Sandler 2018; Tan 2019)",
               grid={"k": [3, 5, 7], "e": [1, 3, 6], "se": [False, True]})
def mbconv(spec: BlockSpec, k: int, e: int, se: bool) -> nn.Module | None:
    """MBConv with kernel ``k``, expansion ``e``, optional SE and the teacher's activation.

    Args:
        spec: the block.
        k / e / se: grid parameters.

    Returns:
        The block, or ``None`` when declined.
    """
    return inverted_residual(spec, k, e, se, spec.act)

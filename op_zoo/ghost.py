"""GhostNet: Ghost modules (half the maps from a conv, half from cheap depthwise ops) and bottlenecks."""
from __future__ import annotations

import math

import torch
from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok, residual, se_or_identity
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec

_SOURCE = "GhostNet (Han 2020)"


class GhostModule(nn.Module):
    """Primary conv to ``ceil(out / ratio)`` maps, cheap depthwise 3x3 for the rest, concatenated.

    Args:
        in_ch / out_ch: channels.
        kernel: primary conv kernel size.
        stride: primary conv stride.
        act: activation name, or ``None`` for a linear module.
        ratio: output maps per primary map.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1,
                 act: str | None = "relu", ratio: int = 2):
        super().__init__()
        self.out_channels = out_ch
        primary = math.ceil(out_ch / ratio)
        self.primary = ConvBnAct(in_ch, primary, kernel, stride, act=act)
        self.cheap = ConvBnAct(primary, primary * (ratio - 1), 3, groups=primary, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.primary(x)
        return torch.cat([x, self.cheap(x)], dim=1)[:, : self.out_channels]


@register_grid("ghost_conv_k{k}", family="ghost",
               description="Ghost module: {k}x{k} conv to half the outputs, depthwise 3x3 for the other half",
               source=_SOURCE, grid={"k": [1, 3]})
def ghost_conv(spec: BlockSpec, k: int) -> nn.Module | None:
    """A Ghost module replacing a conv layer (strided primary conv).

    Args:
        spec: the block.
        k: primary conv kernel size.

    Returns:
        The module, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    return GhostModule(spec.in_channels, spec.out_channels, k, spec.stride, spec.act)


def ghost_bottleneck(spec: BlockSpec, expansion: int, se: bool, act: str) -> nn.Module | None:
    """Ghost bottleneck: Ghost module (expand) -> [depthwise 3x3 if strided] -> [SE] -> linear Ghost module.

    Args:
        spec: the block.
        expansion: hidden channels = ``expansion * in_channels``.
        se: add a squeeze-and-excitation gate.
        act: activation name.

    Returns:
        The block with an identity or projection shortcut, or ``None`` when declined.
    """
    if not geometry_ok(spec):
        return None
    hidden = spec.in_channels * expansion
    body = nn.Sequential(
        GhostModule(spec.in_channels, hidden, act=act),
        ConvBnAct(hidden, hidden, 3, spec.stride, groups=hidden, act=None) if spec.stride > 1 else nn.Identity(),
        se_or_identity(se, hidden, spec.in_channels, act),
        GhostModule(hidden, spec.out_channels, act=None),
    )
    return residual(body, spec, project=True)


@register_grid(lambda e, se: f"ghost_bneck_e{e}" + ("_se" if se else ""), family="ghost",
               description=lambda e, se: f"Ghost bottleneck, {e}x expansion{', SE' if se else ''}, "
                                         "identity or projection shortcut",
               source=_SOURCE, grid={"e": [3, 6], "se": [False, True]})
def ghost_bneck(spec: BlockSpec, e: int, se: bool) -> nn.Module | None:
    """Ghost bottleneck with expansion ``e`` and optional SE.

    Args:
        spec: the block.
        e / se: grid parameters.

    Returns:
        The block, or ``None`` when declined.
    """
    return ghost_bottleneck(spec, e, se, spec.act)

"""Plain convolutions: conv-BN-act layers without a shortcut (VGG style)."""
from __future__ import annotations

from torch import nn

from op_zoo._layers import ConvBnAct, geometry_ok
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec


def plain_convs(spec: BlockSpec, kernel: int, depth: int, act: str | None) -> nn.Module | None:
    """``depth`` conv-BN-act layers, the first one strided and changing channels.

    Args:
        spec: the block.
        kernel: kernel size (odd).
        depth: number of conv layers.
        act: activation name, or ``None`` for linear layers.

    Returns:
        The layers, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    layers = [ConvBnAct(spec.in_channels, spec.out_channels, kernel, spec.stride, act=act)]
    layers += [ConvBnAct(spec.out_channels, spec.out_channels, kernel, act=act) for _ in range(depth - 1)]
    return layers[0] if depth == 1 else nn.Sequential(*layers)


@register_grid(lambda k, n: f"conv_k{k}" + (f"_x{n}" if n > 1 else ""), family="conv",
               description=lambda k, n: f"{['one', 'two', 'three'][n - 1]} {k}x{k} conv-BN-act"
                                        f"{' layer' if n == 1 else ' layers'}, no shortcut",
               source="plain convolution (VGG, Simonyan 2015; LANA dense ops)",
               grid=[{"k": 1, "n": 1}, {"k": 3, "n": 1}, {"k": 5, "n": 1}, {"k": 3, "n": 2}])
def conv(spec: BlockSpec, k: int, n: int) -> nn.Module | None:
    """Plain conv stack with the teacher's activation.

    Args:
        spec: the block.
        k / n: kernel size and number of layers.

    Returns:
        The layers, or ``None`` when declined.
    """
    return plain_convs(spec, k, n, spec.act)

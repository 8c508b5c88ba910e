"""The description of one replaceable teacher block that op builders receive."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class BlockSpec:
    """What an op builder needs to know about the block it may replace.

    Args:
        name: the block's module path in the teacher (e.g. ``"layer2.0"``).
        in_channels / out_channels: channels of the block's input and output tensors.
        in_size / out_size: spatial size ``(H, W)`` of input and output.
        stride: spatial reduction (``in_size[0] // out_size[0]``, 1 when unchanged).
        module: the teacher block itself (builders copy it; they never modify it).
        act: the teacher's activation name (``"relu"``, ``"silu"``, ``"hardswish"``, ...).
    """

    name: str
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    stride: int = 1
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    act: str = "relu"

    @property
    def same_shape(self) -> bool:
        """True when input and output tensors have the same shape (identity possible)."""
        return self.in_channels == self.out_channels and self.in_size == self.out_size

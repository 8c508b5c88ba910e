"""The description of one replaceable teacher block that op builders receive."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

# Per-sample layouts of a block's input and output.
LAYOUTS = ("nchw", "nhwc", "nld")


@dataclass
class BlockSpec:
    """What an op builder needs to know about the block it may replace.

    Args:
        name: the block's module path in the teacher (e.g. ``"layer2.0"``).
        in_channels / out_channels: channels of the block's input and output tensors (the
            token width ``D`` for tokens).
        in_size / out_size: spatial size ``(H, W)`` of input and output; for tokens
            ``(L,)``, the number of tokens (class and distillation tokens included).
        stride: spatial reduction (``in_size[0] // out_size[0]``, 1 when unchanged).
        module: the teacher block itself (builders copy it; they never modify it).
        act: the teacher's activation name (``"relu"``, ``"silu"``, ``"hardswish"``, ...).
        layout: ``"nchw"`` feature maps, ``"nhwc"`` channels-last maps (Swin), or
            ``"nld"`` tokens (ViT, DeiT, Mixer).
    """

    name: str
    in_channels: int
    out_channels: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    stride: int = 1
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    act: str = "relu"
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def same_shape(self) -> bool:
        """True when input and output tensors have the same shape (identity possible)."""
        return self.in_channels == self.out_channels and tuple(self.in_size) == tuple(self.out_size)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The input's shape without the batch dimension, in the block's layout."""
        return _shape(self.layout, self.in_channels, self.in_size)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output's shape without the batch dimension, in the block's layout."""
        return _shape(self.layout, self.out_channels, self.out_size)

    @property
    def in_numel(self) -> int:
        """Elements of one input sample."""
        return self.in_channels * math.prod(self.in_size)


def _shape(layout: str, channels: int, size: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "nchw":
        return (channels, *size)
    return (*size, channels)  # nhwc: (H, W, C); nld: (L, D)

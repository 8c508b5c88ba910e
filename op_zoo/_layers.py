"""Layers and checks shared by the op families (one copy of each, used by all)."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from op_zoo._spec import BlockSpec

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hardswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}


def act_name(name: str | None) -> str:
    """The canonical activation name lana builds for ``name`` (unknown names -> ``"relu"``).

    Args:
        name: an activation name as found in a teacher (any case).

    Returns:
        A key of the activation table, with aliases resolved (``"swish"`` -> ``"silu"``).
    """
    key = (name or "relu").lower().replace("-", "_")
    key = {"swish": "silu", "hard_swish": "hardswish"}.get(key, key)
    return key if key in _ACTS else "relu"


def make_act(name: str | None) -> nn.Module:
    """A fresh activation module (never in-place: candidates share the teacher's input).

    Args:
        name: activation name (see ``act_name``); ``None`` or ``"none"`` gives ``nn.Identity``.

    Returns:
        The activation module.
    """
    if name is None or name == "none":
        return nn.Identity()
    return _ACTS[act_name(name)]()


def geometry_ok(spec: BlockSpec) -> bool:
    """Whether a conv with odd kernel, padding ``k // 2`` and ``spec.stride`` gives ``out_size``.

    Args:
        spec: the block description.

    Returns:
        True when ``out_size == ceil(in_size / stride)`` in both dimensions.
    """
    if spec.stride < 1:
        return False
    return tuple(spec.out_size) == tuple(math.ceil(s / spec.stride) for s in spec.in_size)


def scaled(channels: int, ratio: float) -> int:
    """``round(channels * ratio)``, at least 1."""
    return max(1, int(round(channels * ratio)))


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``act=None`` leaves it linear.

    Args:
        in_ch / out_ch: channels.
        kernel_size: int or ``(kh, kw)``, odd; padding is ``k // 2`` (same / ceil geometry).
        stride: spatial stride.
        groups: conv groups (``in_ch`` for depthwise).
        act: activation name or ``None``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = 1,
                 stride: int = 1, groups: int = 1, act: str | None = "relu"):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, (kh, kw), stride, (kh // 2, kw // 2), groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            act=make_act(act),
        ))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate (Hu 2018), as in MBConv: pool, reduce, act, expand, sigmoid.

    Args:
        channels: channels gated.
        reduced: channels of the bottleneck (EfficientNet: a quarter of the block input).
        act: activation name between the two 1x1 convs.
    """

    def __init__(self, channels: int, reduced: int, act: str = "relu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = make_act(act)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.expand(self.act(self.reduce(gate)))
        return x * torch.sigmoid(gate)


def se_or_identity(use_se: bool, channels: int, block_in: int, act: str) -> nn.Module:
    """An SE gate on ``channels`` reduced to a quarter of ``block_in``, or ``nn.Identity``."""
    return SqueezeExcite(channels, max(1, block_in // 4), act) if use_se else nn.Identity()


class AddShortcut(nn.Module):
    """``act(body(x) + shortcut(x))``: the residual connection every family uses.

    Args:
        body: the main path.
        shortcut: ``nn.Identity`` or a projection with the body's output shape.
        act: activation after the add (``nn.Identity`` for linear-bottleneck blocks).
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def projection(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """ResNet projection shortcut: 1x1 conv with stride, then BatchNorm (no activation)."""
    return ConvBnAct(in_ch, out_ch, 1, stride, act=None)


def residual(body: nn.Module, spec: BlockSpec, *, project: bool = False,
             post_act: str | None = None) -> nn.Module:
    """Wrap ``body`` with a shortcut when the block allows one.

    Args:
        body: main path mapping the block input to its output shape.
        spec: the block description.
        project: when shapes differ, add a projection shortcut (ResNet) instead of none (MBConv).
        post_act: activation after the add (``None``: linear, MBConv style).

    Returns:
        ``AddShortcut`` with an identity or projection shortcut, or ``body`` (followed by
        ``post_act``) when shapes differ and ``project`` is False.
    """
    if spec.same_shape:
        return AddShortcut(body, nn.Identity(), make_act(post_act))
    if project:
        return AddShortcut(body, projection(spec.in_channels, spec.out_channels, spec.stride),
                           make_act(post_act))
    return body if post_act is None else nn.Sequential(body, make_act(post_act))


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class SpaceToDepth(nn.Module):
    """Pad to a multiple of ``block`` (bottom/right), then fold each block x block patch into channels.

    ``(N, C, H, W) -> (N, C * block**2, ceil(H / block), ceil(W / block))``, the same output
    size as a strided conv with padding ``k // 2``.
    """

    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = (self.block - x.size(2) % self.block) % self.block
        pad_w = (self.block - x.size(3) % self.block) % self.block
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [0, pad_w, 0, pad_h])
        return F.pixel_unshuffle(x, self.block)


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding bias-free conv.

    Args:
        weight: conv weight ``(out, in/groups, kh, kw)``.
        bn: the BatchNorm applied to that conv's output.

    Returns:
        ``(weight, bias)`` of the equivalent conv with bias.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def check_output(module: nn.Module, spec: BlockSpec) -> bool:
    """Dry-run ``module`` on zeros of the block's input shape (batch 1, eval, no grad).

    Used by ops that modify a copy of the teacher, whose structure is only guessed.

    Args:
        module: the candidate.
        spec: the block description.

    Returns:
        True when it runs and gives ``(1, out_channels, *out_size)``; the module's
        training flags are restored either way.
    """
    param = next(module.parameters(), None)
    x = torch.zeros(1, spec.in_channels, *spec.in_size,
                    device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
        ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (1, spec.out_channels, *spec.out_size)
    except Exception:  # a guessed structure that does not run is simply declined
        ok = False
    finally:
        for m, mode in modes:
            m.training = mode
    return ok

"""Re-parameterisable multi-branch convolutions: trained with parallel branches, exported as one conv.

Every branch is linear (conv + BN, or BN alone for the identity branch), so in eval mode
their sum equals one conv whose kernel is the sum of the BN-folded, zero-padded branch
kernels. ``RepConv.fuse()`` returns that conv; ``op_zoo.fuse_for_export`` applies it to a
whole model.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from op_zoo._fusion import Reparameterizable
from op_zoo._layers import ConvBnAct, fold_bn, geometry_ok, make_act
from op_zoo._registry import register_grid, register_op
from op_zoo._spec import BlockSpec


class RepConv(Reparameterizable):
    """Sum of a kxk conv-BN, extra conv-BN branches of smaller kernels and an optional identity BN.

    Args:
        in_ch / out_ch: channels.
        kernel: kernel size of the main branch (and of the fused conv).
        stride: stride of every conv branch.
        groups: conv groups (``in_ch`` for depthwise).
        branches: kernel sizes ``(kh, kw)`` of the extra branches, each at most ``kernel``, odd.
        identity: add a BN-only identity branch (needs ``in_ch == out_ch`` and stride 1).
        act: activation after the sum.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 branches: tuple[tuple[int, int], ...] = ((1, 1),), identity: bool = False,
                 act: str | None = "relu"):
        super().__init__()
        if identity and (in_ch != out_ch or stride != 1):
            raise ValueError(f"identity branch needs in_ch == out_ch and stride 1, got {in_ch}->{out_ch}, stride {stride}")
        self.in_ch, self.out_ch, self.kernel, self.stride, self.groups = in_ch, out_ch, kernel, stride, groups
        self.main = ConvBnAct(in_ch, out_ch, kernel, stride, groups, act=None)
        self.extra = nn.ModuleList(ConvBnAct(in_ch, out_ch, k, stride, groups, act=None) for k in branches)
        self.identity = nn.BatchNorm2d(out_ch) if identity else None
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        for branch in self.extra:
            out = out + branch(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    def _branch_kernel(self, weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = fold_bn(weight, bn)
        dh, dw = (self.kernel - w.shape[2]) // 2, (self.kernel - w.shape[3]) // 2
        return F.pad(w, [dw, dw, dh, dh]), b

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The single conv (with bias) + activation equal to this module in eval mode.

        Returns:
            ``nn.Sequential(conv=Conv2d, act=...)``, in the same train/eval mode as ``self``.
        """
        weight, bias = self._branch_kernel(self.main.conv.weight, self.main.bn)
        for branch in self.extra:
            w, b = self._branch_kernel(branch.conv.weight, branch.bn)
            weight, bias = weight + w, bias + b
        if self.identity is not None:
            eye = torch.zeros_like(weight)
            per_group = self.in_ch // self.groups
            centre = self.kernel // 2
            for c in range(self.out_ch):
                eye[c, c % per_group, centre, centre] = 1.0
            w, b = fold_bn(eye, self.identity)
            weight, bias = weight + w, bias + b
        conv = nn.Conv2d(self.in_ch, self.out_ch, self.kernel, self.stride, self.kernel // 2,
                         groups=self.groups, bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return nn.Sequential(OrderedDict(conv=conv, act=copy.deepcopy(self.act))).train(self.training)


@register_op("repvgg_k3", family="rep",
             description="RepVGG block: 3x3 + 1x1 (+ identity BN when shapes match) branches, fused to one 3x3 at export",
             source="RepVGG (Ding 2021)")
def repvgg(spec: BlockSpec) -> nn.Module | None:
    """One RepVGG block.

    Args:
        spec: the block.

    Returns:
        The block, or ``None`` when the geometry is not a plain strided one.
    """
    if not geometry_ok(spec):
        return None
    return RepConv(spec.in_channels, spec.out_channels, 3, spec.stride, identity=spec.same_shape, act=spec.act)


@register_op("repvgg_k3_x2", family="rep",
             description="two RepVGG blocks (the first strided), each fused to one 3x3 conv at export",
             source="RepVGG (Ding 2021)")
def repvgg_x2(spec: BlockSpec) -> nn.Module | None:
    """Two stacked RepVGG blocks, the shape of a ResNet basic block once fused.

    Args:
        spec: the block.

    Returns:
        The blocks, or ``None`` when declined.
    """
    first = repvgg(spec)
    if first is None:
        return None
    return nn.Sequential(first, RepConv(spec.out_channels, spec.out_channels, 3, identity=True, act=spec.act))


@register_grid("acnet_k{k}", family="rep",
               description="asymmetric conv block: {k}x{k} + 1x{k} + {k}x1 branches, fused to one {k}x{k} at export",
               source="ACNet (Ding 2019)", grid={"k": [3, 5]})
def acnet(spec: BlockSpec, k: int) -> nn.Module | None:
    """ACNet block with kernel ``k``.

    Args:
        spec: the block.
        k: kernel size.

    Returns:
        The block, or ``None`` when declined.
    """
    if not geometry_ok(spec):
        return None
    return RepConv(spec.in_channels, spec.out_channels, k, spec.stride, branches=((1, k), (k, 1)), act=spec.act)


@register_grid("mobileone_k{k}", family="rep",
               description="MobileOne block: re-parameterisable {k}x{k} depthwise then 1x1 pointwise, "
                           "each fused to one conv at export",
               source="MobileOne (Vasu 2023)", grid={"k": [3, 5, 7]})
def mobileone(spec: BlockSpec, k: int) -> nn.Module | None:
    """MobileOne depthwise-separable block (depthwise: kxk + 1x1 + identity; pointwise: 1x1 + identity).

    Args:
        spec: the block.
        k: depthwise kernel size.

    Returns:
        The block, or ``None`` when declined.
    """
    if not geometry_ok(spec):
        return None
    c, o = spec.in_channels, spec.out_channels
    return nn.Sequential(
        RepConv(c, c, k, spec.stride, groups=c, identity=spec.stride == 1, act=spec.act),
        RepConv(c, o, 1, branches=(), identity=c == o, act=spec.act),
    )

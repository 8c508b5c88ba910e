"""Fewer-activation variants: the same blocks with fewer non-linearities, or ReLU in place of
SiLU / hard-swish / GELU. Some accelerators run these much faster (activations are not free,
and ReLU fuses into the conv on most runtimes)."""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from op_zoo._layers import act_name
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec
from op_zoo.conv import plain_convs
from op_zoo.depthwise_separable import depthwise_separable
from op_zoo.fused_mbconv import fused_mbconv
from op_zoo.ghost import ghost_bottleneck
from op_zoo.mbconv import inverted_residual
from op_zoo.resnet import basic_block, bottleneck_block

_SOURCE = "Restructurable Activation Networks (Bhardwaj 2022); EfficientNet-EdgeTPU ReLU variants (Gupta 2019)"


def _se_suffix(se: bool) -> str:
    return "_se" if se else ""


def _already_relu(spec: BlockSpec) -> bool:
    return act_name(spec.act) in ("relu", "relu6")


@register_grid(lambda k, e, se: f"mbconv_k{k}_e{e}{_se_suffix(se)}_1act", family="fewer_act",
               description=lambda k, e, se: f"MBConv k{k} e{e}{' SE' if se else ''} with one activation "
                                            "(after the expand conv; linear depthwise)",
               source=_SOURCE, grid={"k": [3, 5, 7], "e": [3, 6], "se": [False, True]})
def mbconv_one_act(spec: BlockSpec, k: int, e: int, se: bool) -> nn.Module | None:
    """MBConv without the activation after the depthwise conv.

    Args:
        spec: the block.
        k / e / se: kernel, expansion, squeeze-excitation.

    Returns:
        The block, or ``None`` when declined.
    """
    return inverted_residual(spec, k, e, se, spec.act, act_after_dw=False)


@register_grid(lambda k, e, se: f"mbconv_k{k}_e{e}{_se_suffix(se)}_relu", family="fewer_act",
               description=lambda k, e, se: f"MBConv k{k} e{e}{' SE' if se else ''} with ReLU in place of the "
                                            "teacher's activation; teachers not already using ReLU",
               source=_SOURCE, grid={"k": [3, 5, 7], "e": [3, 6], "se": [False, True]})
def mbconv_relu(spec: BlockSpec, k: int, e: int, se: bool) -> nn.Module | None:
    """MBConv with ReLU activations.

    Args:
        spec: the block.
        k / e / se: kernel, expansion, squeeze-excitation.

    Returns:
        The block, or ``None`` when the teacher already uses ReLU (it would duplicate ``mbconv_*``).
    """
    return None if _already_relu(spec) else inverted_residual(spec, k, e, se, "relu")


@register_grid("fused_mbconv_k{k}_e{e}_relu", family="fewer_act",
               description="fused-MBConv k{k} e{e} with ReLU in place of the teacher's activation; "
                           "teachers not already using ReLU",
               source=_SOURCE, grid={"k": [3, 5], "e": [3, 6]})
def fused_mbconv_relu(spec: BlockSpec, k: int, e: int) -> nn.Module | None:
    """Fused-MBConv with ReLU activations.

    Args:
        spec: the block.
        k / e: kernel and expansion.

    Returns:
        The block, or ``None`` when the teacher already uses ReLU.
    """
    if _already_relu(spec):
        return None
    return fused_mbconv(replace(spec, act="relu"), k, e, False)


@register_grid("ghost_bneck_e{e}_relu", family="fewer_act",
               description="Ghost bottleneck e{e} with ReLU in place of the teacher's activation; "
                           "teachers not already using ReLU",
               source=_SOURCE, grid={"e": [3, 6]})
def ghost_bneck_relu(spec: BlockSpec, e: int) -> nn.Module | None:
    """Ghost bottleneck with ReLU activations.

    Args:
        spec: the block.
        e: expansion.

    Returns:
        The block, or ``None`` when the teacher already uses ReLU.
    """
    return None if _already_relu(spec) else ghost_bottleneck(spec, e, False, "relu")


@register_grid("dwsep_k{k}_1act", family="fewer_act",
               description="depthwise-separable k{k} with one activation (linear depthwise, act after the pointwise)",
               source=_SOURCE + "; Xception (Chollet 2017)", grid={"k": [3, 5, 7]})
def dwsep_one_act(spec: BlockSpec, k: int) -> nn.Module | None:
    """Depthwise-separable conv without the activation between depthwise and pointwise.

    Args:
        spec: the block.
        k: depthwise kernel size.

    Returns:
        The layers, or ``None`` when declined.
    """
    return depthwise_separable(spec, k, False, spec.act, act_after_dw=False)


@register_grid("resnet_basic_w{w}_1act", family="fewer_act",
               description="ResNet basic block ({w}% width) with one activation (none after the add)",
               source=_SOURCE, grid={"w": [50, 100]})
def resnet_basic_one_act(spec: BlockSpec, w: int) -> nn.Module | None:
    """Basic block without the activation after the residual add.

    Args:
        spec: the block.
        w: width percentage.

    Returns:
        The block, or ``None`` when declined.
    """
    return basic_block(spec, w / 100, spec.act, post_act=False)


@register_grid("resnet_bottleneck_w{w}_2act", family="fewer_act",
               description="ResNet bottleneck block ({w}% width) with two activations (none after the add)",
               source=_SOURCE, grid={"w": [25, 50]})
def resnet_bottleneck_fewer_act(spec: BlockSpec, w: int) -> nn.Module | None:
    """Bottleneck block without the activation after the residual add.

    Args:
        spec: the block.
        w: width percentage.

    Returns:
        The block, or ``None`` when declined.
    """
    return bottleneck_block(spec, w / 100, spec.act, post_act=False)


@register_grid("conv_k{k}_linear", family="fewer_act",
               description="one {k}x{k} conv-BN without activation (fully linear block)",
               source=_SOURCE, grid={"k": [1, 3]})
def conv_linear(spec: BlockSpec, k: int) -> nn.Module | None:
    """A linear conv-BN.

    Args:
        spec: the block.
        k: kernel size.

    Returns:
        The layer, or ``None`` when declined.
    """
    return plain_convs(spec, k, 1, None)

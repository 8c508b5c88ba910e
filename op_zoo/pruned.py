"""Channel-pruned copies of the teacher block, initialised from the teacher's weights.

The internal channels of the block (the ones neither its input nor its output sees) are
ranked by the L1 norm of their BN-folded producer filters, and the weakest are removed:
ResNet basic (conv1 -> conv2), bottleneck (conv1 -> conv2 -> conv3) and MBConv-like blocks
(expand 1x1 -> depthwise -> [SE] -> project 1x1; also fused-MBConv) are recognised from
their convolutions. Other structures are declined.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from op_zoo._layers import scaled
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec
from op_zoo._surgery import Leaf, accept_if_runs, bn_after, leaves, teacher_copy_for_surgery


@dataclass
class ChannelGroup:
    """Internal channels produced by one conv and consumed by another, with what they pass through."""

    producer: int                                 # leaf index of the conv that creates the channels
    consumer: int                                 # leaf index of the conv that reads them
    depthwise: list[int] = field(default_factory=list)
    se_reduce: int | None = None
    se_expand: int | None = None


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels > 1


def find_channel_groups(all_leaves: list[Leaf], spec: BlockSpec) -> list[ChannelGroup] | None:
    """Find prunable channel groups in a block made of a plain chain of convs.

    Args:
        all_leaves: the block's layers (see ``leaves``).
        spec: the block description (its input and output channels).

    Returns:
        The groups, or ``None`` when the main path is not a single chain of plain/depthwise
        convs from the block input to the block output (or has no prunable group).
    """
    main = [i for i, leaf in enumerate(all_leaves)
            if isinstance(leaf.module, nn.Conv2d) and not leaf.in_shortcut and not leaf.in_se]
    convs = [all_leaves[i].module for i in main]
    if not 2 <= len(convs) <= 4 or type(convs[0]) is not nn.Conv2d:
        return None
    if convs[0].in_channels != spec.in_channels or convs[-1].out_channels != spec.out_channels:
        return None
    if any(b.in_channels != a.out_channels or type(b) is not nn.Conv2d for a, b in zip(convs, convs[1:])):
        return None
    if any(c.groups != 1 and not _is_depthwise(c) for c in convs):
        return None
    se = [i for i, leaf in enumerate(all_leaves) if leaf.in_se and isinstance(leaf.module, (nn.Conv2d, nn.Linear))]
    groups, k = [], 0
    while k < len(main) - 1:
        if convs[k].groups != 1:
            k += 1
            continue
        j = k + 1
        while j < len(main) and _is_depthwise(convs[j]):
            j += 1
        if j == len(main):
            break
        group = ChannelGroup(main[k], main[j], main[k + 1:j])
        inside = [i for i in se if main[k] < i < main[j]]
        if inside:
            if len(inside) != 2:
                return None
            group.se_reduce, group.se_expand = inside
        groups.append(group)
        k = j
    return groups or None


def _keep_slice(param: torch.Tensor, idx: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, idx).clone())


def _slice_out(layer: nn.Module, idx: torch.Tensor) -> None:
    layer.weight = _keep_slice(layer.weight, idx, 0)
    if layer.bias is not None:
        layer.bias = _keep_slice(layer.bias, idx, 0)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(idx)
    else:
        layer.out_channels = len(idx)
        if layer.groups > 1:  # depthwise: channels are both input and output
            layer.in_channels = layer.groups = len(idx)


def _slice_in(layer: nn.Module, idx: torch.Tensor) -> None:
    layer.weight = _keep_slice(layer.weight, idx, 1)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


def _slice_bn(bn: nn.BatchNorm2d | None, idx: torch.Tensor) -> None:
    if bn is None:
        return
    if bn.affine:
        bn.weight, bn.bias = _keep_slice(bn.weight, idx, 0), _keep_slice(bn.bias, idx, 0)
    if bn.track_running_stats:
        bn.running_mean = bn.running_mean.index_select(0, idx).clone()
        bn.running_var = bn.running_var.index_select(0, idx).clone()
    bn.num_features = len(idx)


def filter_importance(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """L1 norm of each output filter after folding the following BatchNorm's scale.

    Args:
        conv: the conv producing the channels.
        bn: the BatchNorm after it, or ``None``.

    Returns:
        One importance value per output channel.
    """
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    if bn is not None and bn.affine and bn.track_running_stats:
        norms = norms * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return norms


def prune_group(all_leaves: list[Leaf], group: ChannelGroup, keep: int) -> None:
    """Keep the ``keep`` most important channels of one group, slicing every layer they pass through."""
    producer = all_leaves[group.producer].module
    bn = bn_after(all_leaves, group.producer)
    idx = filter_importance(producer, bn).topk(keep).indices.sort().values
    _slice_out(producer, idx)
    _slice_bn(bn, idx)
    for d in group.depthwise:
        dw_bn = bn_after(all_leaves, d)  # found before slicing: it matches the conv's old width
        _slice_out(all_leaves[d].module, idx)
        _slice_bn(dw_bn, idx)
    if group.se_reduce is not None:
        _slice_in(all_leaves[group.se_reduce].module, idx)
        _slice_out(all_leaves[group.se_expand].module, idx)
    _slice_in(all_leaves[group.consumer].module, idx)


@register_grid("pruned_keep{r}", family="pruned",
               description="teacher block with {r}% of its internal channels kept (L1-norm importance), "
                           "initialised from the teacher; ResNet and MBConv-like blocks",
               source="L1-norm filter pruning (Li 2017); SMCP (Humble 2022); PruNet (Khetan 2020)",
               grid={"r": [25, 40, 50, 60, 75]})
def pruned(spec: BlockSpec, r: int) -> nn.Module | None:
    """A copy of the teacher with ``r`` percent of every internal channel group kept.

    Args:
        spec: the block; ``spec.module`` must be a recognised structure.
        r: percentage of internal channels kept.

    Returns:
        The pruned copy, or ``None`` when the structure is not recognised or nothing is pruned.
    """
    model = teacher_copy_for_surgery(spec)
    if model is None:
        return None
    all_leaves = leaves(model)
    groups = find_channel_groups(all_leaves, spec)
    if groups is None:
        return None
    pruned_any = False
    for group in groups:
        width = all_leaves[group.producer].module.out_channels
        keep = scaled(width, r / 100)
        if keep < width:
            prune_group(all_leaves, group, keep)
            pruned_any = True
    return accept_if_runs(model, spec) if pruned_any else None

"""Low-rank factorised copies of the teacher block, initialised by truncated SVD.

Each dense conv ``W`` (out x in x k x k) becomes a k x k conv to ``r`` channels followed by a
1x1 conv back to ``out``, with ``W ~= U_r S_r V_r^T`` split as ``sqrt(S_r)`` on both sides,
where that saves multiply-accumulates. The rest of the teacher is kept as it is.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from op_zoo._layers import scaled
from op_zoo._registry import register_grid
from op_zoo._spec import BlockSpec
from op_zoo._surgery import accept_if_runs, leaves, teacher_copy_for_surgery


@torch.no_grad()
def factorise_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Split a dense conv into ``kxk conv -> rank`` and ``1x1 conv -> out`` by truncated SVD.

    Args:
        conv: a plain ``nn.Conv2d`` with ``groups == 1``.
        rank: channels between the two convs.

    Returns:
        ``nn.Sequential(reduce=..., restore=...)``, the best rank-``rank`` approximation of ``conv``.
    """
    out_ch, in_ch, kh, kw = conv.weight.shape
    u, s, vh = torch.linalg.svd(conv.weight.detach().reshape(out_ch, -1).float(), full_matrices=False)
    root = s[:rank].sqrt()
    reduce = nn.Conv2d(in_ch, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False)
    restore = nn.Conv2d(rank, out_ch, 1, bias=conv.bias is not None)
    reduce.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, in_ch, kh, kw))
    restore.weight.copy_((u[:, :rank] * root).reshape(out_ch, rank, 1, 1))
    if conv.bias is not None:
        restore.bias.copy_(conv.bias)
    return nn.Sequential(OrderedDict(reduce=reduce, restore=restore)).to(conv.weight)


def factorised_rank(conv: nn.Conv2d, fraction: float) -> int | None:
    """The rank ``fraction`` of full rank, or ``None`` when factorising would not save MACs."""
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    out_ch, in_ch, kh, kw = conv.weight.shape
    rank = scaled(min(out_ch, in_ch * kh * kw), fraction)
    return rank if rank * (in_ch * kh * kw + out_ch) < out_ch * in_ch * kh * kw else None


@register_grid("lowrank_r{r}", family="low_rank",
               description="teacher block with each dense conv factorised by SVD to rank {r}% of full "
                           "(kxk conv to r channels + 1x1 conv)",
               source="low-rank conv factorisation (Jaderberg 2014; Zhang 2016; Tai 2016)",
               grid={"r": [25, 50, 75]})
def low_rank(spec: BlockSpec, r: int) -> nn.Module | None:
    """A copy of the teacher with its dense convs factorised at ``r`` percent rank.

    Args:
        spec: the block; ``spec.module`` must have at least one conv worth factorising.
        r: rank as a percentage of ``min(out, in * k * k)``.

    Returns:
        The factorised copy, or ``None`` when no conv is worth factorising.
    """
    model = teacher_copy_for_surgery(spec)
    if model is None:
        return None
    replaced = 0
    for leaf in leaves(model):
        if leaf.in_se or not isinstance(leaf.module, nn.Conv2d):
            continue  # squeeze-excite convs run on 1x1 maps: nothing to save
        rank = factorised_rank(leaf.module, r / 100)
        if rank is None:
            continue
        factorised = factorise_conv(leaf.module, rank)
        if leaf.name:
            model.set_submodule(leaf.name, factorised)
        else:  # the teacher block is a single conv
            model = factorised
        replaced += 1
    return accept_if_runs(model, spec) if replaced else None

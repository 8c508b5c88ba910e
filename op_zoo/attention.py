"""Attention ops for token blocks: fewer heads, attention as one linear map, or no attention.

Each candidate is a copy of the teacher block with its attention replaced, so the block's
norms, MLP, layer scale, class / distillation tokens and Swin's windows stay as they were.
"""
from __future__ import annotations

import torch
from torch import nn

from op_zoo._registry import register_grid, register_op
from op_zoo._spec import BlockSpec
from op_zoo._tokens import (
    LinearMixer,
    ZeroMixer,
    attention_path,
    find_mlp,
    fresh_copy,
    norm_feeding,
    prune_heads,
    put_mixer,
    take_attention,
)

TOKEN_LAYOUTS = ("nld", "nhwc")
HEAD_KEEPS = [25, 50, 75]


@register_grid("attn_heads{keep}", family="attention",
               description="the teacher block with its {keep} % most important attention heads "
                           "(value-path norm), weights copied",
               source="head pruning (Michel 2019, 'Are Sixteen Heads Really Better than One?'; NViT, Yang 2023)",
               grid={"keep": HEAD_KEEPS}, layouts=TOKEN_LAYOUTS)
def fewer_heads(spec: BlockSpec, keep: int) -> nn.Module | None:
    """The teacher block keeping ``keep`` % of its heads (at least one, fewer than all).

    Args:
        spec: a token block with recognised attention.
        keep: percentage of heads to keep.

    Returns:
        The block copy, or None when there is no recognised attention, the percentage
        keeps all heads or none, or it keeps as many as the next smaller percentage.
    """
    path = attention_path(spec.module)
    if path is None or not spec.same_shape:
        return None
    attn = getattr(spec.module, path)
    heads = round(attn.num_heads * keep / 100)
    if heads < 1 or heads >= attn.num_heads:
        return None
    if keep > HEAD_KEEPS[0] and heads == round(attn.num_heads * HEAD_KEEPS[HEAD_KEEPS.index(keep) - 1] / 100):
        return None  # e.g. 3 heads: 50 % and 75 % both keep 2; the smaller percentage builds it
    block = fresh_copy(spec.module)
    setattr(block, path, prune_heads(take_attention(block, path), heads))
    return block if _runs(block, spec) else None


def _runs(block: nn.Module, spec: BlockSpec) -> bool:
    """Whether a pruned copy runs at the block's input shape and keeps its output shape: an
    attention that takes its head width from the input (torchvision's Swin: ``C // num_heads``)
    cannot lose heads this way."""
    training = block.training
    try:
        with torch.no_grad():
            out = block.eval()(torch.zeros(1, *spec.in_shape))
    except RuntimeError:
        return False
    finally:
        block.train(training)
    return isinstance(out, torch.Tensor) and tuple(out.shape[1:]) == tuple(spec.out_shape)


@register_op("attn_linear", family="attention",
             description="attention replaced by one linear map per token, initialised as its value path proj(v(x))",
             source="attention-to-linear replacement of LANA's transformer space (Molchanov 2022); "
                    "Puzzle 'linear attention' (Bercovich 2024)",
             layouts=TOKEN_LAYOUTS)
def attention_linear(spec: BlockSpec) -> nn.Module | None:
    """The teacher block with attention replaced by :class:`LinearMixer`.

    Args:
        spec: a token block with recognised attention.

    Returns:
        The block copy, or None without recognised attention.
    """
    path = attention_path(spec.module)
    if path is None or not spec.same_shape:
        return None
    block = fresh_copy(spec.module)
    put_mixer(block, path, LinearMixer(take_attention(block, path)))
    return block


@register_op("attn_removed", family="attention",
             description="attention removed, the MLP kept (the block's residual carries the input)",
             source="Puzzle 'no-op attention' (Bercovich 2024); layer dropping (Fan 2020)",
             layouts=TOKEN_LAYOUTS)
def attention_removed(spec: BlockSpec) -> nn.Module | None:
    """The teacher block with attention contributing nothing (its MLP still runs).

    Args:
        spec: a token block with recognised attention and an MLP.

    Returns:
        The block copy, or None without recognised attention and MLP.
    """
    path = attention_path(spec.module)
    if path is None or find_mlp(spec.module) is None or not spec.same_shape:
        return None
    block = fresh_copy(spec.module)
    put_mixer(block, path, ZeroMixer())
    if norm := norm_feeding(block, path, "attn"):
        setattr(block, norm, nn.Identity())  # it fed attention only; left in, its weights would get no gradient
    return block

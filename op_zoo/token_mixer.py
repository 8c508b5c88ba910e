"""Cheap token mixers in place of attention: PoolFormer's pooling over the token grid."""
from __future__ import annotations

from torch import nn

from op_zoo._registry import register_op
from op_zoo._spec import BlockSpec
from op_zoo._tokens import PoolMixer, attention_path, attention_tokens, fresh_copy, put_mixer, token_grid


@register_op("token_pool", family="token_mixer",
             description="attention replaced by 3x3 average pooling over the token grid minus the input "
                         "(class/distillation tokens: mean of all tokens)",
             source="PoolFormer / MetaFormer (Yu 2022)", layouts=("nld", "nhwc"))
def token_pool(spec: BlockSpec) -> nn.Module | None:
    """The teacher block with its attention replaced by :class:`PoolMixer`.

    Args:
        spec: a token block with timm-style attention whose tokens (or windows) form a
            square grid after at most 8 prefix tokens.

    Returns:
        The block copy, or None otherwise.
    """
    path = attention_path(spec.module)
    if path is None or not spec.same_shape:
        return None
    tokens = attention_tokens(spec, getattr(spec.module, path))
    grid = token_grid(tokens) if tokens else None
    if grid is None:
        return None
    block = fresh_copy(spec.module)
    put_mixer(block, path, PoolMixer(*grid))
    return block

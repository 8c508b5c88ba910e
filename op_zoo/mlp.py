"""MLP ops for token blocks (and any block with a two-linear MLP, e.g. ConvNeXt): a
smaller hidden width (pruned copies of both linears), a low-rank MLP, or no MLP."""
from __future__ import annotations

from torch import nn

from op_zoo._registry import register_grid, register_op
from op_zoo._spec import LAYOUTS, BlockSpec
from op_zoo._tokens import ZeroMixer, attention_path, find_mlp, fresh_copy, keep_columns, keep_rows, low_rank, norm_feeding, replace


@register_grid("mlp_keep{keep}", family="mlp",
               description="the teacher block with its MLP hidden width cut to {keep} % (units ranked by "
                           "|fc1 row| x |fc2 column|), weights copied",
               source="MLP width pruning (NViT, Yang 2023; Minitron, Muralidharan 2024)",
               grid={"keep": [25, 50, 75]}, layouts=LAYOUTS)
def smaller_mlp(spec: BlockSpec, keep: int) -> nn.Module | None:
    """The teacher block with a narrower MLP.

    Args:
        spec: a block with a two-linear MLP (see ``find_mlp``).
        keep: percentage of hidden units to keep.

    Returns:
        The block copy, or None without such an MLP.
    """
    found = find_mlp(spec.module)
    if found is None:
        return None
    _, fc1_path, fc2_path = found
    fc1, fc2 = spec.module.get_submodule(fc1_path), spec.module.get_submodule(fc2_path)
    hidden = max(1, round(fc1.out_features * keep / 100))
    if hidden >= fc1.out_features:
        return None
    score = fc1.weight.detach().norm(dim=1) * fc2.weight.detach().norm(dim=0)
    units = score.argsort(descending=True)[:hidden].sort().values
    block = fresh_copy(spec.module)
    replace(block, fc1_path, keep_rows(fc1, units))
    replace(block, fc2_path, keep_columns(fc2, units))
    return block


@register_grid("mlp_lowrank{keep}", family="mlp",
               description="the teacher block with both MLP linears factorised to {keep} % of their "
                           "smaller side (truncated SVD)",
               source="low-rank factorisation (Denton 2014; Jaderberg 2014)",
               grid={"keep": [25, 50]}, layouts=LAYOUTS)
def low_rank_mlp(spec: BlockSpec, keep: int) -> nn.Module | None:
    """The teacher block with each MLP linear ``W`` replaced by ``U_r (S_r V_r^T)``.

    Args:
        spec: a block with a two-linear MLP.
        keep: rank as a percentage of ``min(in, out)`` of each linear.

    Returns:
        The block copy, or None without such an MLP.
    """
    found = find_mlp(spec.module)
    if found is None:
        return None
    block = fresh_copy(spec.module)
    for path in found[1:]:
        linear = spec.module.get_submodule(path)
        rank = max(1, round(min(linear.in_features, linear.out_features) * keep / 100))
        replace(block, path, low_rank(linear, rank))
    return block


@register_op("mlp_removed", family="mlp",
             description="the MLP removed, attention kept (the block's residual carries the input)",
             source="Puzzle 'no-op FFN' (Bercovich 2024); layer dropping (Fan 2020)",
             layouts=("nld", "nhwc"))
def mlp_removed(spec: BlockSpec) -> nn.Module | None:
    """The teacher block whose MLP contributes nothing (its attention still runs).

    Args:
        spec: a token block with timm-style attention and an MLP.

    Returns:
        The block copy, or None without both.
    """
    found = find_mlp(spec.module)
    path = attention_path(spec.module)
    if found is None or path is None or not spec.same_shape:
        return None
    block = fresh_copy(spec.module)
    replace(block, found[0], ZeroMixer())
    if norm := norm_feeding(block, path, "mlp"):
        setattr(block, norm, nn.Identity())  # it fed the MLP only; left in, its weights would get no gradient
    return block

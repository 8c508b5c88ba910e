"""Shared machinery of the token families: find a transformer block's attention and MLP,
and the small modules that stand in for attention.

A token block is recognised by its parts, not its class: an attention submodule named
``attn`` in timm's form (a fused ``qkv`` linear, a ``proj`` linear, ``num_heads``; ViT,
DeiT, Swin's window attention) or torchvision's ``self_attention`` (an
``nn.MultiheadAttention`` called as self-attention: its candidates hold it as
:class:`SelfAttention`, the same weights in timm's form), and an MLP submodule (``mlp`` or ``mlp_channels``) that
holds exactly two linear layers (timm's ``Mlp``, torchvision's ``MLPBlock``). Candidates
are copies of the teacher block with one part replaced, so the block's own forward (class
and distillation tokens, Swin's windows and shifts, layer scale) keeps working.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_ATTN_PARTS = {"qkv", "proj", "q_norm", "k_norm", "norm", "attn_drop", "proj_drop", "softmax"}
_ATTN_PARAMS = {"relative_position_bias_table"}


def find_attention(block: nn.Module | None) -> nn.Module | None:
    """The block's timm-style self-attention (``block.attn``), or None when it has none.

    Only attention made of a fused ``qkv`` linear and a ``proj`` linear (plus optional
    per-head q/k norms and a relative position bias table) is recognised: other kinds
    (talking heads, gated, attention with extra projections) are left alone.

    Args:
        block: the teacher block.

    Returns:
        The attention module, or None.
    """
    attn = getattr(block, "attn", None)
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(getattr(attn, "num_heads", None), int)):
        return None
    heads = attn.num_heads
    if qkv.out_features % (3 * heads) or proj.in_features * 3 != qkv.out_features:
        return None
    if getattr(attn, "gate", None) is not None:
        return None
    for name, child in attn.named_children():
        if name not in _ATTN_PARTS and any(True for _ in child.parameters()):
            return None
    if name_norm := getattr(attn, "norm", None):
        if any(True for _ in name_norm.parameters()):
            return None
    if any(name not in _ATTN_PARAMS for name, _ in attn.named_parameters(recurse=False)):
        return None
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None and table.shape[-1] != heads:
        return None
    return attn


# where a block keeps its attention, and the norms that feed only attention / only the MLP
_NORMS = {"attn": ("norm1", "norm2"), "self_attention": ("ln_1", "ln_2")}


def attention_path(block: nn.Module | None) -> str | None:
    """The name of the block's recognised attention: ``attn`` (timm's form, see
    :func:`find_attention`), ``self_attention`` (torchvision's ``nn.MultiheadAttention`` with
    ``batch_first``, one embedding size for q/k/v and no extra key/value biases), or None."""
    if find_attention(block) is not None:
        return "attn"
    mha = getattr(block, "self_attention", None)
    if (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.in_proj_weight is not None and mha.bias_k is None and not mha.add_zero_attn):
        return "self_attention"
    return None


def take_attention(block: nn.Module, path: str) -> nn.Module:
    """The attention of ``block`` (a candidate's own copy) in timm's form; torchvision's
    ``nn.MultiheadAttention`` is replaced in place by the equivalent :class:`SelfAttention`."""
    attn = getattr(block, path)
    if isinstance(attn, nn.MultiheadAttention):
        attn = SelfAttention.from_mha(attn)
        setattr(block, path, attn)
    return attn


def put_mixer(block: nn.Module, path: str, mixer: nn.Module) -> None:
    """``mixer`` in place of the block's attention (called the way the block calls its attention)."""
    setattr(block, path, mixer if path == "attn" else TupleOut(mixer))


def norm_feeding(block: nn.Module, path: str, part: str) -> str | None:
    """The block's norm that feeds only its ``part`` (``attn`` or ``mlp``), if it has one."""
    name = _NORMS[path][0 if part == "attn" else 1]
    return name if isinstance(getattr(block, name, None), nn.Module) else None


def find_mlp(block: nn.Module | None) -> tuple[str, str, str] | None:
    """Where the block's MLP and its two linear layers are.

    Args:
        block: the teacher block.

    Returns:
        ``(mlp path, first linear path, second linear path)`` relative to the block, or
        None when the block has no ``mlp`` / ``mlp_channels`` made of exactly two linears
        (hidden width shared) and nothing else with parameters.
    """
    for path in ("mlp", "mlp_channels"):
        mlp = getattr(block, path, None)
        if not isinstance(mlp, nn.Module):
            continue
        linears = [(n, m) for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]
        holders = [n for n, m in mlp.named_modules() if any(True for _ in m.parameters(recurse=False))]
        if len(linears) != 2 or len(holders) != 2:
            continue
        (n1, fc1), (n2, fc2) = linears
        if fc1.out_features == fc2.in_features:
            return path, f"{path}.{n1}", f"{path}.{n2}"
    return None


def replace(module: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``path`` inside ``module`` (in place)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    parent._modules[leaf] = new


def fresh_copy(block: nn.Module) -> nn.Module:
    """A trainable deep copy of a teacher block (the teacher may be frozen)."""
    out = copy.deepcopy(block)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """A linear layer with only the given output units of ``linear`` (weights copied)."""
    out = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows])
    return out.to(linear.weight)


def keep_columns(linear: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    """A linear layer reading only the given inputs of ``linear`` (weights and bias copied)."""
    out = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight[:, cols])
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out.to(linear.weight)


def low_rank(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``linear`` factorised as two linears through ``rank`` units (truncated SVD)."""
    u, s, vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second).to(linear.weight)


def head_importance(attn: nn.Module) -> torch.Tensor:
    """Per-head importance: the norm of the head's value rows times its output columns.

    Args:
        attn: a recognised attention (see :func:`find_attention`).

    Returns:
        One non-negative score per head.
    """
    heads, width = attn.num_heads, attn.proj.in_features
    head_dim = width // heads
    value = attn.qkv.weight.detach()[2 * width:].reshape(heads, head_dim, -1)
    out = attn.proj.weight.detach().reshape(attn.proj.out_features, heads, head_dim)
    return value.flatten(1).norm(dim=1) * out.transpose(0, 1).flatten(1).norm(dim=1)


def prune_heads(attn: nn.Module, keep: int) -> nn.Module:
    """A copy of ``attn`` keeping its ``keep`` most important heads, weights copied.

    Args:
        attn: a recognised attention.
        keep: heads to keep (1 to ``num_heads``).

    Returns:
        The pruned copy (same class, so the block's forward calls it as before).
    """
    heads, width = attn.num_heads, attn.proj.in_features
    head_dim = width // heads
    kept = head_importance(attn).argsort(descending=True)[:keep].sort().values
    units = (kept[:, None] * head_dim + torch.arange(head_dim, device=kept.device)[None, :]).flatten()
    rows = torch.cat([units + part * width for part in range(3)])
    out = copy.deepcopy(attn)
    out.qkv, out.proj = keep_rows(attn.qkv, rows), keep_columns(attn.proj, units)
    out.num_heads = keep
    if hasattr(out, "attn_dim"):
        out.attn_dim = keep * head_dim
    if getattr(attn, "relative_position_bias_table", None) is not None:
        out.relative_position_bias_table = nn.Parameter(attn.relative_position_bias_table.detach()[:, kept].clone())
    return out


class ZeroMixer(nn.Module):
    """Attention or MLP removed: contributes nothing to the residual stream."""

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.zeros_like(x)


class LinearMixer(nn.Module):
    """Attention replaced by one linear map of each token (initialised as attention's value
    path ``proj(v(x))``, i.e. what attention computes when every token attends to itself)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        width = attn.proj.in_features
        w_v, w_o = attn.qkv.weight.detach()[2 * width:], attn.proj.weight.detach()
        self.linear = nn.Linear(w_v.shape[1], w_o.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(w_o @ w_v)
            b_v = attn.qkv.bias.detach()[2 * width:] if attn.qkv.bias is not None else w_v.new_zeros(width)
            b_o = attn.proj.bias.detach() if attn.proj.bias is not None else w_o.new_zeros(w_o.shape[0])
            self.linear.bias.copy_(w_o @ b_v + b_o)
        self.linear.to(w_o)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.linear(x)


def token_grid(tokens: int) -> tuple[int, int] | None:
    """``(prefix tokens, grid side)`` when ``tokens`` is a square grid after up to 8 prefix
    tokens (class, distillation, register tokens), else None."""
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    return (prefix, side) if side > 1 and prefix <= 8 else None


class PoolMixer(nn.Module):
    """PoolFormer's token mixer, ``avgpool3x3(x) - x`` over the token grid; prefix tokens
    (class, distillation) get the mean of all tokens minus themselves."""

    def __init__(self, prefix: int, side: int) -> None:
        super().__init__()
        self.prefix, self.side = prefix, side

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, tokens, width = x.shape
        grid = x[:, self.prefix:].transpose(1, 2).reshape(batch, width, self.side, self.side)
        pooled = F.avg_pool2d(grid, 3, 1, 1, count_include_pad=False) - grid
        pooled = pooled.reshape(batch, width, self.side * self.side).transpose(1, 2)
        if self.prefix == 0:
            return pooled
        head = x.mean(dim=1, keepdim=True) - x[:, :self.prefix]
        return torch.cat([head, pooled], dim=1)


def attention_tokens(spec, attn: nn.Module) -> int | None:
    """How many tokens the attention sees: the window area for windowed attention, the
    block's token count for (N, L, D) blocks."""
    area = getattr(attn, "window_area", None)
    if isinstance(area, int):
        return area
    if spec.layout == "nld":
        return spec.in_size[0]
    return None


class SelfAttention(nn.Module):
    """torchvision's self-attention (``nn.MultiheadAttention(x, x, x)``) in timm's form: one
    fused ``qkv`` linear, ``proj``, ``num_heads``, so heads can be pruned like timm's.

    Called as the block calls ``nn.MultiheadAttention`` and returns ``(output, None)``; keys
    and values are the query (self-attention: the only way the blocks it serves call it).
    Masks are refused: ``nn.MultiheadAttention``'s mask convention differs from
    ``scaled_dot_product_attention``'s.
    """

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.qkv, self.proj, self.num_heads, self.dropout = qkv, proj, num_heads, dropout

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SelfAttention":
        """The same weights as ``mha`` (q, k, v rows of ``in_proj_weight``; ``out_proj``)."""
        width = mha.embed_dim
        qkv = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
        proj = nn.Linear(width, width, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            qkv.weight.copy_(mha.in_proj_weight)
            proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                proj.bias.copy_(mha.out_proj.bias)
        return cls(qkv.to(mha.in_proj_weight), proj.to(mha.in_proj_weight), mha.num_heads, float(mha.dropout))

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if key_padding_mask is not None or attn_mask is not None:
            raise RuntimeError("lana's SelfAttention takes no masks (the teacher's attention was unmasked)")
        batch, tokens, _ = query.shape
        q, k, v = self.qkv(query).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1)), None


class TupleOut(nn.Module):
    """A mixer called as ``nn.MultiheadAttention`` is: ``(mixer(query), None)``."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.mixer = mixer

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.mixer(query), None

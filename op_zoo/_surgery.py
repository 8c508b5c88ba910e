"""Helpers for ops that modify a copy of the teacher block (pruning, low-rank factorisation)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from op_zoo._layers import check_output
from op_zoo._registry import copy_teacher
from op_zoo._spec import BlockSpec

_SHORTCUT_NAMES = {"downsample", "shortcut", "skip", "conv_shortcut", "residual"}
_SE_CLASS = re.compile(r"squeeze|^se(module|layer)?$|^effectivese", re.IGNORECASE)
_SE_NAMES = {"se", "attn", "se_layer", "squeeze_excite"}


@dataclass
class Leaf:
    """A conv, linear or batch-norm layer of a teacher copy, in registration (= forward) order."""

    name: str
    module: nn.Module
    in_shortcut: bool
    in_se: bool


def leaves(root: nn.Module) -> list[Leaf]:
    """Conv2d, Linear and BatchNorm2d layers of ``root``, tagged shortcut / squeeze-excite.

    Args:
        root: the teacher copy.

    Returns:
        The layers in ``named_modules`` order, which is forward order for ResNet and MBConv blocks.
    """
    se_prefixes = [n + "." for n, m in root.named_modules()
                   if n and (_SE_CLASS.search(type(m).__name__) or n.split(".")[-1] in _SE_NAMES)]
    found = []
    for name, module in root.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            parts = name.split(".")
            found.append(Leaf(name, module,
                              in_shortcut=any(p in _SHORTCUT_NAMES for p in parts),
                              in_se=any((name + ".").startswith(p) for p in se_prefixes)))
    return found


def bn_after(all_leaves: list[Leaf], index: int) -> nn.BatchNorm2d | None:
    """The BatchNorm normalising the output of the conv at ``index`` (next leaf, matching channels)."""
    conv = all_leaves[index].module
    if index + 1 < len(all_leaves):
        nxt = all_leaves[index + 1].module
        if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == conv.out_channels:
            return nxt
    return None


def teacher_copy_for_surgery(spec: BlockSpec) -> nn.Module | None:
    """A trainable deep copy of the teacher block, or ``None`` when there is none."""
    model = copy_teacher(spec)
    if model is not None:
        model.requires_grad_(True)
    return model


def accept_if_runs(model: nn.Module, spec: BlockSpec) -> nn.Module | None:
    """``model`` when a dry run gives the block's output shape, else ``None`` (op declines)."""
    return model if check_output(model, spec) else None

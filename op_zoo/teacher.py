"""Keep-teacher: the teacher block itself, the zero-cost-in-accuracy candidate of every block."""
from __future__ import annotations

from torch import nn

from op_zoo._registry import TEACHER_OP, copy_teacher, register_op
from op_zoo._spec import LAYOUTS, BlockSpec


@register_op(TEACHER_OP, family="teacher",
             description="the teacher block unchanged (deep copy); always a candidate",
             source="LANA keep-teacher op (Molchanov 2022)", layouts=LAYOUTS)
def keep_teacher(spec: BlockSpec) -> nn.Module | None:
    """A deep copy of the teacher block.

    Args:
        spec: the block; ``spec.module`` must be set.

    Returns:
        The copy, or ``None`` when the spec carries no teacher module.
    """
    return copy_teacher(spec)

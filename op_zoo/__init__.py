"""lana's op zoo: a registry of candidate replacement ops, one file per op family.

Importing this package imports every family file, which fills the registry (as timm's
``register_model``). User ops are registered the same way from the user's own module,
named in the config's ``ops.modules`` (see ``import_op_modules`` and docs/ops.md).
"""
from op_zoo._counting import count_macs, count_params
from op_zoo._fusion import Reparameterizable, fuse_for_export
from op_zoo._layers import ConvBnAct, act_name, geometry_ok, make_act
from op_zoo._registry import (
    TEACHER_OP,
    OpDef,
    build_candidates,
    build_op,
    copy_teacher,
    get_op,
    import_op_modules,
    list_ops,
    register_grid,
    register_op,
    select_ops,
)
from op_zoo._spec import BlockSpec

# Family files: importing them registers their ops.
from op_zoo import (  # noqa: E402,F401  isort: skip
    teacher,
    identity,
    mbconv,
    fused_mbconv,
    conv,
    resnet,
    depthwise_separable,
    grouped_conv,
    ghost,
    rep,
    space_to_depth,
    fewer_act,
    pruned,
    low_rank,
    attention,
    mlp,
    token_mixer,
)

__all__ = [
    "BlockSpec",
    "ConvBnAct",
    "OpDef",
    "Reparameterizable",
    "TEACHER_OP",
    "act_name",
    "build_candidates",
    "build_op",
    "copy_teacher",
    "count_macs",
    "count_params",
    "fuse_for_export",
    "geometry_ok",
    "get_op",
    "import_op_modules",
    "list_ops",
    "make_act",
    "register_grid",
    "register_op",
    "select_ops",
]

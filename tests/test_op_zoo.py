"""The op zoo's registry API, counting helpers and the teacher-derived and fused families.

The per-op contract (shapes, backward, TorchScript, fusion) is in test_op_zoo_contract.py.
"""
from __future__ import annotations

import fnmatch
import re
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as TvInvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

import op_zoo
from lana.errors import ConfigError, UnknownOpError
from op_zoo import (
    BlockSpec,
    _registry,
    build_candidates,
    count_macs,
    count_params,
    fuse_for_export,
    get_op,
    list_ops,
)
from op_zoo.low_rank import factorise_conv
from op_zoo.rep import RepConv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def isolated_registry(monkeypatch):
    """A copy of the registry for tests that register ops; the real one is restored after."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


def resnet_spec(cin: int, cout: int, stride: int, size: int, block=BasicBlock) -> BlockSpec:
    torch.manual_seed(0)
    expansion = block.expansion
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    teacher = block(cin, cout // expansion, stride, shortcut).eval()
    out = -(-size // stride)
    return BlockSpec("layer", cin, cout, (size, size), (out, out), stride, teacher, "relu")


def spec_for(teacher: nn.Module, cin: int, cout: int, stride: int, size: int, act: str) -> BlockSpec:
    out = -(-size // stride)
    return BlockSpec("block", cin, cout, (size, size), (out, out), stride, teacher.eval(), act)


# --- registry -------------------------------------------------------------------------

def test_listing_is_sorted_described_and_filterable() -> None:
    ops = list_ops()
    names = [op.name for op in ops]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert len(ops) >= 100
    for op in ops:
        assert re.fullmatch(r"[a-z0-9_]+", op.name)
        assert op.family and op.source and op.description and "\n" not in op.description
    assert [op.name for op in list_ops("mbconv_k3_e6*")] == [
        "mbconv_k3_e6", "mbconv_k3_e6_1act", "mbconv_k3_e6_relu", "mbconv_k3_e6_se",
        "mbconv_k3_e6_se_1act", "mbconv_k3_e6_se_relu"]
    assert len(list_ops("mbconv_k?_e?")) + len(list_ops("mbconv_k?_e?_se")) == 18
    assert list_ops("no_such_op*") == []


def test_get_op_unknown_names_close_matches() -> None:
    assert get_op("repvgg_k3").family == "rep"
    with pytest.raises(UnknownOpError, match="mbconv_k3_e6") as err:
        get_op("mbconv_k3_e5")
    assert "lana ops" in str(err.value)


def test_duplicate_and_invalid_registration_refused(isolated_registry) -> None:
    @op_zoo.register_op("zoo_test_op", family="test", description="d", source="s")
    def build(spec):
        return nn.Identity()

    with pytest.raises(ConfigError, match="already registered"):
        op_zoo.register_op("zoo_test_op", family="test", description="d", source="s")(build)
    with pytest.raises(ConfigError, match="already registered"):
        op_zoo.register_op("teacher", family="test", description="d", source="s")(build)
    with pytest.raises(ConfigError, match="invalid"):
        op_zoo.register_op("Bad Name", family="test", description="d", source="s")(build)


class _PickyError(Exception):
    """An exception type that cannot be built from one message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


@pytest.mark.parametrize("has_add_note", [True, False])
@pytest.mark.parametrize("make_error", [partial(ValueError, "bad shape"), partial(_PickyError, 7, "bad shape")])
def test_builder_bug_names_op_and_block(isolated_registry, monkeypatch, has_add_note, make_error) -> None:
    # False simulates Python 3.10, which has no BaseException.add_note
    monkeypatch.setattr(_registry, "_HAS_ADD_NOTE", has_add_note)
    error = make_error()

    @op_zoo.register_op("zoo_buggy_op", family="test", description="d", source="s")
    def build(spec):
        raise error

    with pytest.raises(Exception) as info:
        build_candidates(resnet_spec(8, 8, 1, 6), include=["zoo_buggy_op"])
    note = "while building op 'zoo_buggy_op' for block 'layer'"
    shown = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert note in shown and "bad shape" in shown
    if has_add_note:
        assert info.value is error
    else:
        assert info.value.__cause__ is error
        assert isinstance(info.value, ValueError if isinstance(error, ValueError) else RuntimeError)


def test_register_grid_names_every_point(isolated_registry) -> None:
    @op_zoo.register_grid(lambda k, se: f"zoo_grid_k{k}" + ("_se" if se else ""), family="test",
                          description="k{k}", source="s", grid={"k": [3, 5], "se": [False, True]})
    def build(spec, k, se):
        return nn.Conv2d(spec.in_channels, spec.out_channels, k, padding=k // 2)

    ops = list_ops("zoo_grid_*")
    assert [op.name for op in ops] == ["zoo_grid_k3", "zoo_grid_k3_se", "zoo_grid_k5", "zoo_grid_k5_se"]
    assert ops[2].params == {"k": 5, "se": False} and ops[2].description == "k5"
    assert ops[2].build(resnet_spec(8, 8, 1, 6)).kernel_size == (5, 5)


def test_include_exclude_patterns_and_teacher_always_kept() -> None:
    spec = resnet_spec(16, 16, 1, 8)
    got = build_candidates(spec, include=("mbconv_k3_*",), exclude=("*_se",))
    expected = {op.name for op in list_ops("mbconv_k3_*")
                if not fnmatch.fnmatchcase(op.name, "*_se") and op.build(spec) is not None}
    assert set(got) == expected | {"teacher"}
    assert "mbconv_k3_e6_1act" in got and "mbconv_k3_e6_se" not in got
    assert "mbconv_k3_e6_relu" not in got  # declined: the teacher already uses ReLU
    assert list(build_candidates(spec, include="identity")) == ["teacher", "identity"]
    assert list(build_candidates(spec, exclude=("*",))) == ["teacher"]
    assert list(build_candidates(spec, include=["teacher"], exclude=["teacher"])) == ["teacher"]
    with pytest.raises(UnknownOpError, match="'mbconv_k4_\\*'.*did you mean"):
        build_candidates(spec, include=["mbconv_k4_*"])


@pytest.mark.parametrize("cin,cout,stride", [(64, 64, 1), (64, 128, 2)])
def test_typical_resnet_block_gets_over_100_candidates(cin: int, cout: int, stride: int) -> None:
    """The figure quoted in docs/ops.md: a BasicBlock at 14x14, stride 1 and stride 2."""
    spec = resnet_spec(cin, cout, stride, 14)
    candidates = build_candidates(spec)
    assert len(candidates) >= 100
    assert ("identity" in candidates) == (stride == 1)
    assert ("s2d_conv_k3" in candidates) == (stride == 2)
    assert {"pruned_keep50", "lowrank_r50", "repvgg_k3", "ghost_bneck_e3"} <= set(candidates)


def test_irregular_geometry_declined_by_from_scratch_ops() -> None:
    """A block whose output size is not ceil(in / stride): only teacher-derived ops can match it."""
    teacher = nn.Sequential(nn.Conv2d(8, 8, 3, 2, padding=0), nn.BatchNorm2d(8), nn.ReLU())
    spec = BlockSpec("stem", 8, 8, (7, 7), (3, 3), 2, teacher.eval(), "relu")
    candidates = build_candidates(spec)
    assert set(candidates) == {"teacher", "lowrank_r25", "lowrank_r50", "lowrank_r75"}
    for module in candidates.values():
        assert module(torch.randn(2, 8, 7, 7)).shape == (2, 8, 3, 3)


def test_no_teacher_module_means_no_teacher_derived_ops() -> None:
    spec = BlockSpec("x", 8, 8, (6, 6), (6, 6), 1, None, "relu")
    candidates = build_candidates(spec)
    assert "teacher" not in candidates and not any(n.startswith(("pruned", "lowrank")) for n in candidates)
    assert "mbconv_k3_e6" in candidates


# --- user ops -------------------------------------------------------------------------

USER_MODULE = '''
from torch import nn
from op_zoo import BlockSpec, register_op

@register_op("zoo_user_conv", family="user", description="user conv", source="tests")
def build(spec: BlockSpec):
    if spec.stride != 1:
        return None
    return nn.Conv2d(spec.in_channels, spec.out_channels, 3, padding=1)
'''


def test_import_op_modules_registers_user_ops(isolated_registry, tmp_path, monkeypatch) -> None:
    (tmp_path / "zoo_user_ops.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zoo_user_ops", raising=False)
    try:
        assert op_zoo.import_op_modules(["zoo_user_ops"]) == ["zoo_user_conv"]
        assert op_zoo.import_op_modules(["zoo_user_ops"]) == []  # imported once, registered once
        got = build_candidates(resnet_spec(8, 8, 1, 6), include=["zoo_user_*"])
        assert list(got) == ["teacher", "zoo_user_conv"]
    finally:
        sys.modules.pop("zoo_user_ops", None)


def test_import_op_modules_by_file_path(isolated_registry, tmp_path) -> None:
    path = tmp_path / "zoo_file_ops.py"
    path.write_text(USER_MODULE.replace("zoo_user_conv", "zoo_file_conv"))
    try:
        assert op_zoo.import_op_modules(str(path)) == ["zoo_file_conv"]
    finally:
        sys.modules.pop("lana_user_ops_zoo_file_ops", None)


def test_docs_worked_example_registers_working_ops(isolated_registry, tmp_path) -> None:
    """The user-op example in docs/ops.md, run as written."""
    doc = (Path(__file__).parents[1] / "docs" / "ops.md").read_text()
    code = re.search(r"```python\n(# my_ops\.py\n.*?)```", doc, re.S).group(1)
    (tmp_path / "my_ops.py").write_text(code)
    try:
        names = op_zoo.import_op_modules([str(tmp_path / "my_ops.py")])
    finally:
        sys.modules.pop("lana_user_ops_my_ops", None)
    assert names == ["dilated_dwsep_k3_d2", "my_pool_conv_k1", "my_pool_conv_k3"]
    for spec in (resnet_spec(8, 8, 1, 7), resnet_spec(8, 16, 2, 7)):
        candidates = build_candidates(spec, include=names)
        assert list(candidates) == ["teacher", *names]
        for module in candidates.values():
            assert module(torch.randn(2, 8, 7, 7)).shape == (2, spec.out_channels, *spec.out_size)


def test_import_op_modules_failures_are_config_errors(tmp_path) -> None:
    broken = USER_MODULE.replace("zoo_user_conv", "zoo_broken_conv") + "raise RuntimeError('boom')\n"
    (tmp_path / "zoo_broken_ops.py").write_text(broken)
    with pytest.raises(ConfigError, match="zoo_broken_ops.*RuntimeError: boom"):
        op_zoo.import_op_modules([str(tmp_path / "zoo_broken_ops.py")])
    assert "lana_user_ops_zoo_broken_ops" not in sys.modules
    assert list_ops("zoo_broken_*") == []  # nothing half-registered is left behind


def test_import_op_modules_missing_module_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot import op module 'no_such_pkg.ops'.*PYTHONPATH"):
        op_zoo.import_op_modules(["no_such_pkg.ops"])
    with pytest.raises(ConfigError, match="no such file"):
        op_zoo.import_op_modules(["/nonexistent/ops.py"])


# --- counting -------------------------------------------------------------------------

def test_count_macs_exact_and_side_effect_free() -> None:
    model = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                          nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.Flatten(), nn.Linear(16 * 16, 10))
    model.train()
    expected = 16 * 4 * 4 * 8 * 9 + 16 * 4 * 4 * 9 + 10 * 256
    assert count_macs(model, (8, 7, 7)) == expected
    assert count_macs(model, (4, 8, 7, 7)) == expected  # batch dimension ignored
    assert model.training and model[1].num_batches_tracked.item() == 0
    assert count_params(model) == 8 * 16 * 9 + 32 + 16 * 9 + 16 + 2560 + 10
    assert count_macs(nn.Identity(), (8, 4, 4)) == 0


def test_act_names() -> None:
    assert op_zoo.act_name("Swish") == "silu" and op_zoo.act_name("hard_swish") == "hardswish"
    assert op_zoo.act_name("leaky_relu") == "relu" and op_zoo.act_name(None) == "relu"
    assert isinstance(op_zoo.make_act("gelu"), nn.GELU) and not op_zoo.make_act("relu").inplace


# --- teacher-derived ops --------------------------------------------------------------

PRUNABLE = {
    "tv_basic": lambda: resnet_spec(16, 16, 1, 6),
    "tv_basic_down": lambda: resnet_spec(8, 16, 2, 7),
    "tv_bottleneck": lambda: resnet_spec(32, 64, 2, 6, Bottleneck),
    "tv_mbv2": lambda: spec_for(TvInvertedResidual(8, 8, 1, 6), 8, 8, 1, 6, "relu6"),
    "timm_ir_se": lambda: spec_for(TimmInvertedResidual(8, 16, 5, 2, exp_ratio=4, act_layer=nn.SiLU,
                                                        se_layer=partial(SqueezeExcite, rd_ratio=0.25)),
                                   8, 16, 2, 7, "silu"),
}


def masked_teacher(spec: BlockSpec, pruned: nn.Module) -> nn.Module:
    """The teacher with the pruned-away channels silenced (their BN scale and shift set to 0):
    it must compute exactly what the pruned copy computes."""
    import copy
    teacher = copy.deepcopy(spec.module)
    t_bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    p_bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    for tb, pb in zip(t_bns, p_bns):
        if tb.num_features != pb.num_features:
            kept = [(tb.running_mean == v).nonzero()[0].item() for v in pb.running_mean]
            drop = sorted(set(range(tb.num_features)) - set(kept))
            with torch.no_grad():
                tb.weight[drop] = 0
                tb.bias[drop] = 0
    return teacher


@pytest.mark.parametrize("name", sorted(PRUNABLE))
def test_pruned_copy_equals_teacher_with_dropped_channels_silenced(name: str) -> None:
    spec = PRUNABLE[name]()
    gen = torch.Generator().manual_seed(3)
    for m in spec.module.modules():  # distinct running means identify the kept channels
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    for keep in (25, 50, 75):
        pruned = get_op(f"pruned_keep{keep}").build(spec)
        assert pruned is not None, f"{name}: structure not recognised"
        assert count_params(pruned) < count_params(spec.module)
        x = torch.randn(2, spec.in_channels, *spec.in_size)
        with torch.no_grad():
            torch.testing.assert_close(pruned.eval()(x), masked_teacher(spec, pruned).eval()(x))


def test_pruning_keeps_the_largest_filters() -> None:
    spec = resnet_spec(16, 16, 1, 6)
    conv1, bn1 = spec.module.conv1, spec.module.bn1
    norms = conv1.weight.abs().flatten(1).sum(1) * bn1.weight.abs() / torch.sqrt(bn1.running_var + bn1.eps)
    kept = norms.topk(4).indices.sort().values
    pruned = get_op("pruned_keep25").build(spec)
    assert torch.equal(pruned.conv1.weight, conv1.weight[kept])
    assert torch.equal(pruned.conv2.weight, spec.module.conv2.weight[:, kept])


@pytest.mark.parametrize("teacher", [
    TvInvertedResidual(8, 8, 1, 1),                        # no expansion: no internal channels
    nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),  # one conv
    Bottleneck(32, 8, groups=4, base_width=64),            # grouped (ResNeXt) middle conv
], ids=["mbv2_e1", "single_conv", "resnext"])
def test_pruning_declines_unrecognised_structures(teacher: nn.Module) -> None:
    c = next(teacher.parameters()).shape[1]
    out = c if not isinstance(teacher, Bottleneck) else 32
    assert get_op("pruned_keep50").build(spec_for(teacher, c, out, 1, 6, "relu")) is None


def test_low_rank_factorisation_is_exact_at_full_rank_and_improves_with_rank() -> None:
    conv = nn.Conv2d(8, 12, 3, 2, 1, bias=True)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(factorise_conv(conv, 12)(x), conv(x), rtol=1e-4, atol=1e-4)
        spec = resnet_spec(32, 32, 1, 6)
        teacher = spec.module
        x = torch.randn(2, 32, 6, 6)
        errors = [(get_op(f"lowrank_r{r}").build(spec).eval()(x) - teacher(x)).abs().mean() for r in (25, 50, 75)]
    assert errors[0] > errors[1] > errors[2]
    assert isinstance(get_op("lowrank_r50").build(spec).conv1, nn.Sequential)


# --- export fusion ----------------------------------------------------------------------

def test_fuse_for_export_walks_a_model_and_calls_timm_style_reparameterize() -> None:
    class TimmStyle(nn.Module):
        def __init__(self):
            super().__init__()
            self.fused = False

        def reparameterize(self):
            self.fused = True

        def forward(self, x):
            return x

    model = nn.Sequential(RepConv(8, 8, 3, identity=True), nn.Sequential(TimmStyle(), RepConv(8, 4, 3)))
    fused = fuse_for_export(model)
    assert fused is model and model[1][0].fused
    assert isinstance(model[0].conv, nn.Conv2d) and isinstance(model[1][1].conv, nn.Conv2d)
    root = RepConv(8, 8, 3, groups=8, identity=True)
    assert isinstance(fuse_for_export(root).conv, nn.Conv2d)

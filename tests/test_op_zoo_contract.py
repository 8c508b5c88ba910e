"""The contract every registered op must meet, checked for every op in the registry.

A new op is tested here the moment it is registered (timm style): output shape for a
same-shape block, a strided block with a channel change and an odd spatial size;
backward; TorchScript equal to eager; export fusion equal to the branched module;
parameter and MAC counts; structure determinism; activation following the teacher.
"""
from __future__ import annotations

import copy
import functools
from functools import partial

import pytest
import torch
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block as VitBlock
from torch import nn
from torchvision.models.resnet import BasicBlock

import op_zoo
from op_zoo import (
    BlockSpec,
    Reparameterizable,
    build_candidates,
    count_macs,
    count_params,
    fuse_for_export,
)

SPEC_IDS = ("same", "down", "odd", "tokens", "windows")


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def make_spec(kind: str) -> BlockSpec:
    """Tiny blocks with real teachers: ResNet basic (same shape; strided 8->16), a timm
    SiLU MBConv with SE on an odd size (7x7 -> 4x4), a ViT block on 1 class + 16 patch
    tokens (N, L, D), and a shifted-window Swin block on an (N, H, W, C) map."""
    torch.manual_seed(0)
    if kind == "tokens":
        block = VitBlock(32, num_heads=4, init_values=0.1)
        return BlockSpec("blocks.1", 32, 32, (17,), (17,), 1, block.eval(), "gelu", layout="nld")
    if kind == "windows":
        block = SwinTransformerBlock(16, (8, 8), num_heads=4, window_size=4, shift_size=2)
        return BlockSpec("layers.0.blocks.1", 16, 16, (8, 8), (8, 8), 1, block.eval(), "gelu", layout="nhwc")
    if kind == "same":
        return BlockSpec("layer1.0", 64, 64, (8, 8), (8, 8), 1, BasicBlock(64, 64).eval(), "relu")
    if kind == "down":
        shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        return BlockSpec("layer2.0", 8, 16, (8, 8), (4, 4), 2, BasicBlock(8, 16, 2, shortcut).eval(), "relu")
    teacher = InvertedResidual(8, 16, 3, stride=2, exp_ratio=6, act_layer=nn.SiLU,
                               se_layer=partial(SqueezeExcite, rd_ratio=0.25))
    return BlockSpec("blocks.2.0", 8, 16, (7, 7), (4, 4), 2, teacher.eval(), "silu")


@functools.cache
def accepting_specs(op_name: str) -> tuple[str, ...]:
    op = op_zoo.get_op(op_name)
    return tuple(kind for kind in SPEC_IDS if op.build(make_spec(kind)) is not None)


def build_or_skip(op_name: str, kind: str) -> nn.Module:
    torch.manual_seed(0)
    module = op_zoo.get_op(op_name).build(make_spec(kind))
    if module is None:
        pytest.skip(f"{op_name} declines the {kind!r} block")
    return module


def randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so fusion errors cannot hide."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


ALL_OPS = [op.name for op in op_zoo.list_ops()]


@pytest.mark.parametrize("kind", SPEC_IDS)
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_shape_and_backward(op_name: str, kind: str) -> None:
    spec = make_spec(kind)
    module = build_or_skip(op_name, kind).train()
    x = torch.randn(2, *spec.in_shape, requires_grad=True)
    out = module(x)
    assert tuple(out.shape) == (2, *spec.out_shape)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    params = [p for p in module.parameters() if p.requires_grad]
    if op_name != op_zoo.TEACHER_OP:  # surgery copies of a frozen teacher must still train
        assert all(p.requires_grad for p in module.parameters())
    assert all(p.grad is not None for p in params), "some parameters got no gradient"


@pytest.mark.parametrize("kind", SPEC_IDS)
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_counts_and_deterministic_structure(op_name: str, kind: str) -> None:
    spec = make_spec(kind)
    module = build_or_skip(op_name, kind)
    assert count_params(module) == sum(p.numel() for p in module.parameters())
    macs = count_macs(module, spec.in_shape)
    has_layers = any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())
    assert (macs > 0) == has_layers
    again = op_zoo.get_op(op_name).build(spec)
    assert {k: v.shape for k, v in module.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
    again.load_state_dict(module.state_dict())  # lana reloads saved candidates into rebuilt ones


@pytest.mark.parametrize("op_name", ALL_OPS)
def test_every_op_is_exercised(op_name: str) -> None:
    assert accepting_specs(op_name), f"{op_name} declines every test block, so nothing tests it"


def eval_input(module: nn.Module, spec: BlockSpec) -> torch.Tensor:
    randomise_bn(module)
    module.eval()
    return torch.randn(2, *spec.in_shape, generator=torch.Generator().manual_seed(2))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_torchscript_matches_eager(op_name: str) -> None:
    """Scripting is the slow check: done on one block per op (the last test block it accepts)."""
    kinds = accepting_specs(op_name)
    if not kinds:
        pytest.skip("declines every test block")
    module = build_or_skip(op_name, kinds[-1])
    x = eval_input(module, make_spec(kinds[-1]))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(module)(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_export_fusion_matches_branched(op_name: str) -> None:
    """``fuse_for_export`` computes the same function and leaves no multi-branch module;
    ops with re-parameterisable parts are checked on every block they accept (identity
    branches exist only on same-shape blocks), and their fused form must script."""
    for kind in accepting_specs(op_name):
        module = build_or_skip(op_name, kind)
        has_branches = any(isinstance(m, Reparameterizable) for m in module.modules())
        x = eval_input(module, make_spec(kind))
        with torch.no_grad():
            branched = module(x)
            fused = fuse_for_export(copy.deepcopy(module))
            assert not any(isinstance(m, Reparameterizable) for m in fused.modules())
            torch.testing.assert_close(fused(x), branched, rtol=1e-4, atol=1e-4)
            if not has_branches:
                return  # nothing was fused: one block is enough
            assert count_params(fused) < count_params(module)
            torch.testing.assert_close(torch.jit.script(fused)(x), branched, rtol=1e-4, atol=1e-4)


_FOLLOWS_TEACHER_MODULE = {"teacher", "pruned", "low_rank", "attention", "mlp", "token_mixer"}
_ACT_TYPES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)


@pytest.mark.parametrize("op_name", ALL_OPS)
def test_activation_follows_teacher(op_name: str) -> None:
    """On a SiLU block, built ops use SiLU only; ReLU variants use ReLU only."""
    op = op_zoo.get_op(op_name)
    if op.family in _FOLLOWS_TEACHER_MODULE:
        pytest.skip("copies the teacher's own activations")
    module = build_or_skip(op_name, "odd")
    acts = {type(m) for m in module.modules() if isinstance(m, _ACT_TYPES)}
    expected = {nn.ReLU} if op_name.endswith("_relu") else {nn.SiLU}
    assert acts <= expected, f"{op_name} uses {acts} on a SiLU block"
    assert not any(getattr(m, "inplace", False) for m in module.modules()), "in-place act would corrupt the shared input"


@pytest.mark.parametrize("kind", SPEC_IDS)
def test_building_leaves_teacher_untouched(kind: str) -> None:
    spec = make_spec(kind)
    before = {k: v.clone() for k, v in spec.module.state_dict().items()}
    candidates = build_candidates(spec)
    after = spec.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(iter(candidates)) == op_zoo.TEACHER_OP
    assert candidates[op_zoo.TEACHER_OP] is not spec.module

"""The token families (attention, mlp, token_mixer) through the op registry: each candidate
starts from the teacher block's own weights and computes what it says it computes; conv
families decline token blocks; candidates time, script and export at the token shape.

(The registry-wide contract — shapes, backward, TorchScript, counts — runs these ops on a
ViT block and a Swin block in tests/test_op_zoo_contract.py.)
"""
from __future__ import annotations

import copy

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block as VitBlock
from torch import nn

import op_zoo
from lana.config import LatencyConfig
from lana.export.pt2 import export_program
from lana.export.torchscript import to_torchscript
from lana.latency.measure import time_module
from op_zoo import BlockSpec, build_candidates
from op_zoo._tokens import PoolMixer, find_attention, find_mlp, token_grid

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN_OPS = {"teacher", "identity", "attn_heads25", "attn_heads50", "attn_heads75", "attn_linear", "attn_removed",
             "mlp_keep25", "mlp_keep50", "mlp_keep75", "mlp_lowrank25", "mlp_lowrank50", "mlp_removed", "token_pool"}


def vit_spec(tokens: int = 17, prefix_note: str = "blocks.0") -> BlockSpec:
    torch.manual_seed(0)
    block = VitBlock(32, num_heads=4, init_values=0.5).eval()
    return BlockSpec(prefix_note, 32, 32, (tokens,), (tokens,), 1, block, "gelu", layout="nld")


def swin_spec() -> BlockSpec:
    torch.manual_seed(0)
    block = SwinTransformerBlock(16, (8, 8), num_heads=4, window_size=4, shift_size=2).eval()
    return BlockSpec("layers.0.blocks.1", 16, 16, (8, 8), (8, 8), 1, block, "gelu", layout="nhwc")


def test_token_blocks_get_the_token_families_only():
    names = set(build_candidates(vit_spec()))
    assert names == TOKEN_OPS
    swin = set(build_candidates(swin_spec()))
    assert {"attn_heads25", "attn_heads50", "token_pool", "mlp_keep50", "attn_removed"} <= swin <= TOKEN_OPS
    for name in names - {"teacher", "identity"}:
        assert op_zoo.get_op(name).family in {"attention", "mlp", "token_mixer"}
        assert "nchw" not in op_zoo.get_op(name).layouts or op_zoo.get_op(name).family == "mlp"


def _zero_heads(attn: nn.Module, dropped: list[int]) -> nn.Module:
    out = copy.deepcopy(attn)
    head_dim = attn.proj.in_features // attn.num_heads
    with torch.no_grad():
        for h in dropped:
            out.proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
    return out


@pytest.mark.parametrize("make, shape", [(vit_spec, (3, 17, 32)), (swin_spec, (12, 16, 16))])
def test_fewer_heads_keep_the_most_important_heads_exactly(make, shape):
    """Pruning heads equals the teacher's attention with the dropped heads silenced."""
    spec = make()
    teacher_attn = find_attention(spec.module)
    width = teacher_attn.proj.in_features
    head_dim = width // teacher_attn.num_heads
    with torch.no_grad():  # head 1 the weakest by far
        teacher_attn.qkv.weight[2 * width + head_dim:2 * width + 2 * head_dim] *= 0.01
    assert int(op_zoo._tokens.head_importance(teacher_attn).argmin()) == 1
    pruned = op_zoo.get_op("attn_heads75").build(spec).attn.eval()
    assert pruned.num_heads == 3 and pruned.qkv.out_features == 9 * head_dim
    x = torch.randn(*shape)
    kwargs = {} if spec.layout == "nld" else {"mask": None}
    with torch.no_grad():
        torch.testing.assert_close(pruned(x, **kwargs), _zero_heads(teacher_attn, [1])(x, **kwargs), rtol=1e-5, atol=1e-5)


def test_smaller_mlp_keeps_the_strongest_units_exactly():
    spec = vit_spec()
    _, fc1_path, fc2_path = find_mlp(spec.module)
    block = op_zoo.get_op("mlp_keep50").build(spec).eval()
    assert block.mlp.fc1.out_features == 64 and block.mlp.fc2.in_features == 64
    reference = copy.deepcopy(spec.module)
    fc1, fc2 = reference.get_submodule(fc1_path), reference.get_submodule(fc2_path)
    score = fc1.weight.norm(dim=1) * fc2.weight.norm(dim=0)
    with torch.no_grad():
        fc2.weight[:, score.argsort()[:64]] = 0
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-5)


def test_low_rank_mlp_at_full_rank_is_the_teacher():
    spec = vit_spec()
    block = op_zoo.get_op("mlp_lowrank50").build(spec)
    assert isinstance(block.mlp.fc1, nn.Sequential) and block.mlp.fc1[0].out_features == 16
    full = op_zoo._tokens.low_rank(spec.module.mlp.fc1, 32)
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(full(x), spec.module.mlp.fc1(x), rtol=1e-4, atol=1e-4)


def test_linear_mixer_is_attention_on_one_token():
    """With one token, attention is exactly its value path: the linear map's starting point."""
    spec = vit_spec()
    linear = op_zoo.get_op("attn_linear").build(spec).attn
    x = torch.randn(4, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), spec.module.attn(x), rtol=1e-5, atol=1e-5)


def test_removed_parts_leave_the_other_branch():
    spec = vit_spec()
    x = torch.randn(2, 17, 32)
    teacher = spec.module
    with torch.no_grad():
        mlp_only = op_zoo.get_op("attn_removed").build(spec).eval()(x)
        torch.testing.assert_close(mlp_only, x + teacher.ls2(teacher.mlp(teacher.norm2(x))))
        attn_only = op_zoo.get_op("mlp_removed").build(spec).eval()(x)
        torch.testing.assert_close(attn_only, x + teacher.ls1(teacher.attn(teacher.norm1(x))))


@pytest.mark.parametrize("tokens, grid", [(17, (1, 4)), (18, (2, 4)), (16, (0, 4)), (49, (0, 7)), (3, None)])
def test_token_grid_counts_class_and_distillation_tokens(tokens, grid):
    assert token_grid(tokens) == grid


def test_pool_mixer_on_class_and_distillation_tokens():
    mixer = PoolMixer(2, 4)
    x = torch.randn(2, 18, 8)
    out = mixer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, :2], x.mean(1, keepdim=True) - x[:, :2])
    flat = torch.ones(1, 18, 8)
    assert torch.allclose(mixer(flat)[:, 2:], torch.zeros(1, 16, 8), atol=1e-6)  # pooling a constant changes nothing
    assert op_zoo.get_op("token_pool").build(vit_spec(tokens=34)) is None  # 25 + 9 prefix tokens: not a grid, declined


def test_mlp_family_also_serves_convnext_blocks():
    from timm.models.convnext import ConvNeXtBlock

    torch.manual_seed(0)
    spec = BlockSpec("stages.0.blocks.0", 16, 16, (4, 4), (4, 4), 1, ConvNeXtBlock(16).eval(), "gelu")
    names = set(build_candidates(spec, include=["mlp_*", "attn_*", "token_*"]))
    assert names == {"teacher", "mlp_keep25", "mlp_keep50", "mlp_keep75", "mlp_lowrank25", "mlp_lowrank50"}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("op_name", ["attn_heads50", "token_pool", "mlp_keep50"])
@pytest.mark.parametrize("make", [vit_spec, swin_spec])
def test_token_candidates_script_and_time(op_name, make):
    spec = make()
    module = op_zoo.get_op(op_name).build(spec).eval()
    example = torch.randn(2, *spec.in_shape)
    with torch.no_grad():
        scripted, how = to_torchscript(module, example)
        assert how == "script"
        torch.testing.assert_close(scripted(example), module(example), rtol=1e-4, atol=1e-4)
    cfg = LatencyConfig(batch_size=2, warmup=1, repeats=3, time_cap_s=0.5, threads=1, channels_last=True)
    assert time_module(module, spec.in_shape, cfg).median_ms > 0


def test_token_candidate_exports_to_pt2():
    """torch.export is the slow capture (about 10 s a block here): one token candidate."""
    spec = vit_spec()
    module = op_zoo.get_op("attn_heads50").build(spec).eval()
    example = torch.randn(2, *spec.in_shape)
    with torch.no_grad():
        torch.testing.assert_close(export_program(module, example).module()(example), module(example), rtol=1e-4, atol=1e-4)


def tv_vit_spec() -> BlockSpec:
    """A torchvision ViT encoder block (its attention is an nn.MultiheadAttention), 1 class + 16 patch tokens."""
    from torchvision.models.vision_transformer import EncoderBlock

    torch.manual_seed(0)
    block = EncoderBlock(num_heads=4, hidden_dim=32, mlp_dim=64, dropout=0.0, attention_dropout=0.0).eval()
    return BlockSpec("encoder.layers.encoder_layer_0", 32, 32, (17,), (17,), 1, block, "gelu", layout="nld")


def test_torchvision_vit_blocks_get_every_token_family():
    """torchvision's MultiheadAttention is pruned, replaced and removed like timm's attention."""
    assert set(build_candidates(tv_vit_spec())) == TOKEN_OPS


def test_self_attention_is_torchvision_attention_in_timm_form():
    from op_zoo._tokens import SelfAttention

    mha = tv_vit_spec().module.self_attention
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        ours, none = SelfAttention.from_mha(mha)(x, x, x, need_weights=False)
        torch.testing.assert_close(ours, mha(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)
    assert none is None
    with pytest.raises(RuntimeError, match="no masks"):
        SelfAttention.from_mha(mha)(x, x, x, attn_mask=torch.zeros(17, 17))


def test_torchvision_head_pruning_keeps_the_most_important_heads_exactly():
    """Keeping 2 of 4 heads = the teacher block with the other heads' output columns zeroed."""
    from op_zoo._tokens import SelfAttention, head_importance

    spec = tv_vit_spec()
    pruned = op_zoo.get_op("attn_heads50").build(spec).eval()
    reference = copy.deepcopy(spec.module)
    attn = SelfAttention.from_mha(reference.self_attention)
    dropped = head_importance(attn).argsort()[:2].tolist()
    reference.self_attention = _zero_heads(attn, dropped)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), rtol=1e-5, atol=1e-5)
    assert pruned.self_attention.num_heads == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("op_name", ["attn_heads50", "attn_linear", "attn_removed", "token_pool", "mlp_removed"])
def test_torchvision_token_candidates_run_train_and_script(op_name):
    spec = tv_vit_spec()
    module = op_zoo.get_op(op_name).build(spec)
    example = torch.randn(2, *spec.in_shape)
    module.train()
    module(example).square().mean().backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    module.eval()
    with torch.no_grad():
        scripted, how = to_torchscript(module, example)
        assert how == "script"
        torch.testing.assert_close(scripted(example), module(example), rtol=1e-4, atol=1e-4)

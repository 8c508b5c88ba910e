"""Structural block discovery on the families users bring: ConvNeXt, ViT, DeiT (class and
distillation tokens), Swin (channels-last maps), MLP-Mixer and a ``features_only`` backbone.

Models are tiny (small width, depth and image) so that each test takes well under a second.
"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.deit import VisionTransformerDistilled
from timm.models.mlp_mixer import MlpMixer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lana.errors import BlockDiscoveryError
from lana.teacher.blocks import describe_blocks, discover_blocks, get_submodule, set_submodule
from lana.teacher.discovery import feature_info_stages, innermost, outermost, weight_layers

INPUT = (1, 3, 32, 32)


class _Probe(nn.Module):
    """Stands in for a block: counts calls and checks the shape it receives."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape, self.calls = shape, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert tuple(x.shape[1:]) == self.shape
        self.calls += 1
        return x


def _swap_all(model: nn.Module, specs) -> None:
    """Every found block runs exactly once, with the shape its spec says, in the model's layout."""
    probes = [_Probe(spec.in_shape) for spec in specs]
    for spec, probe in zip(specs, probes):
        set_submodule(model, spec.name, probe)
    with torch.no_grad():
        model(torch.zeros(INPUT))
    assert [p.calls for p in probes] == [1] * len(specs)


def _vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10, **kw)


def test_convnext_blocks_not_stages():
    model = ConvNeXt(num_classes=10, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    specs = discover_blocks(model, INPUT)
    assert [s.name for s in specs] == ["stages.0.blocks.0", "stages.1.blocks.0", "stages.2.blocks.0",
                                       "stages.2.blocks.1", "stages.3.blocks.0"]
    assert {s.layout for s in specs} == {"nchw"} and all(s.same_shape for s in specs)
    assert specs[0].in_shape == (8, 8, 8) and specs[1].in_shape == (16, 4, 4)
    assert {s.act for s in specs} == {"gelu"}
    _swap_all(model, specs)


@pytest.mark.parametrize("kw, tokens", [({}, 17), ({"class_token": False, "global_pool": "avg"}, 16),
                                        ({"reg_tokens": 2}, 19)])
def test_vit_token_blocks(kw, tokens):
    model = _vit(**kw)
    specs = discover_blocks(model, INPUT)
    assert [s.name for s in specs] == ["blocks.0", "blocks.1", "blocks.2"]
    for spec in specs:
        assert spec.layout == "nld" and spec.in_shape == spec.out_shape == (tokens, 32)
        assert spec.in_size == (tokens,) and spec.in_channels == 32 and spec.stride == 1 and spec.same_shape
    _swap_all(model, specs)


def test_deit_distillation_token_counts():
    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    specs = discover_blocks(model, INPUT)
    assert [s.in_shape for s in specs] == [(18, 32), (18, 32)]  # 16 patches + class + distillation
    _swap_all(model, specs)


def test_swin_blocks_are_channels_last():
    torch.manual_seed(0)
    model = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                            num_heads=(1, 2), num_classes=10)
    specs = discover_blocks(model, INPUT)
    assert [s.name for s in specs] == ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1"]
    assert {s.layout for s in specs} == {"nhwc"}
    assert specs[0].in_shape == (8, 8, 16) and specs[2].in_shape == (4, 4, 32)
    assert specs[0].in_channels == 16 and specs[0].in_size == (8, 8)
    _swap_all(model, specs)


def test_mixer_blocks_whole():
    torch.manual_seed(0)
    model = MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, num_classes=10)
    specs = discover_blocks(model, INPUT)
    # The token MLP and channel MLP inside are not containers' children: the block is kept whole.
    assert [s.name for s in specs] == ["blocks.0", "blocks.1"]
    assert specs[0].in_shape == (16, 32)


def test_features_only_backbone():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", features_only=True, pretrained=False, out_indices=(2, 3, 4))
    assert "layer2" in feature_info_stages(model)
    specs = discover_blocks(model, INPUT)
    assert [s.name for s in specs] == [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)]
    assert [s.stride for s in specs] == [1, 1, 2, 1, 2, 1, 2, 1]
    for spec in specs:
        assert get_submodule(model, spec.name) is spec.module


def test_feature_info_of_a_vit_names_its_blocks():
    assert feature_info_stages(_vit())[:2] == ["blocks.0", "blocks.1"]
    assert feature_info_stages(nn.Linear(2, 2)) == []


class _Plain(nn.Module):
    """A user's network whose repeated parts are single convs: no block to find."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class _Pair(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class _UserNet(nn.Module):
    """Unknown block class names, repeated in a ModuleList: found by structure."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.ModuleList([_Pair(8), _Pair(8), _Pair(8)])
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean((2, 3)))


def test_user_blocks_found_by_structure():
    specs = discover_blocks(_UserNet(), INPUT)
    assert [s.name for s in specs] == ["stages.0", "stages.1", "stages.2"]
    assert describe_blocks(specs)[0]["layout"] == "nchw"


def test_nothing_found_says_why_and_how():
    with pytest.raises(BlockDiscoveryError) as exc:
        discover_blocks(_Plain(), INPUT)
    message = str(exc.value)
    assert "no repeated submodule holds two or more weight layers" in message
    assert "teacher.blocks" in message and "\n" not in message


def test_named_token_block_accepted():
    specs = discover_blocks(_vit(), INPUT, names=["blocks.1"])
    assert specs[0].layout == "nld" and specs[0].in_shape == (17, 32)


def test_nesting_helpers_and_weight_layers():
    names = ["a", "a.b", "a.b.c", "d"]
    assert innermost(names) == ["a.b.c", "d"] and outermost(names) == ["a", "d"]
    assert weight_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))) == 2

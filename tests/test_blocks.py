"""Block discovery over timm / torchvision families and user models, and block swapping."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lana.errors import BlockDiscoveryError
from lana.teacher.blocks import (
    describe_blocks,
    discover_blocks,
    get_submodule,
    set_submodule,
)
from lana.teacher.load import load_teacher

INPUT = (1, 3, 64, 64)

# (model, blocks expected, activations expected). Counts follow each architecture's
# definition: e.g. MobileNetV2 = 1 depthwise-separable + 16 inverted residuals, RegNetX-200MF
# depths 1+1+4+7, EfficientNetV2-S 2+4+4+6+9+15, tf_efficientnetv2_b0 1+2+2+3+5+8.
FAMILIES = [
    ("timm:resnet18", 8, {"relu"}),
    ("timm:resnet50", 16, {"relu"}),
    ("timm:mobilenetv2_100", 17, {"relu6"}),
    ("timm:mobilenetv3_small_100", 11, {"relu", "hardswish"}),
    ("timm:efficientnet_b0", 16, {"silu"}),
    ("timm:tf_efficientnetv2_b0", 21, {"silu"}),
    ("timm:regnetx_002", 13, {"relu"}),
    ("torchvision:resnet18", 8, {"relu"}),
    ("torchvision:resnet50", 16, {"relu"}),
    ("torchvision:mobilenet_v2", 17, {"relu6"}),
    ("torchvision:mobilenet_v3_small", 11, {"relu", "hardswish"}),
    ("torchvision:efficientnet_b0", 16, {"silu"}),
    ("torchvision:efficientnet_v2_s", 40, {"silu"}),
    ("torchvision:regnet_x_400mf", 22, {"relu"}),
]

# EfficientNet B1-B7: depth multipliers 1.1 ... 3.1 applied per stage (ceil) to B0's 16.
EFFICIENTNET_DEPTHS = {1: 23, 2: 23, 3: 26, 4: 32, 5: 39, 6: 45, 7: 55}


def _check_swappable(model: nn.Module, specs) -> None:
    """Replace every block with a 1x1 conv of the same shapes; the model must still run.

    This is what lana does when it swaps candidates in: each replacement must run exactly
    once, where its block ran, and the network output must keep its shape.
    """
    x = torch.zeros(INPUT)
    with torch.no_grad():
        reference = model(x).shape
    calls = []
    for spec in specs:
        conv = nn.Conv2d(spec.in_channels, spec.out_channels, 1, stride=spec.stride)
        conv.register_forward_hook(lambda m, i, o, name=spec.name: calls.append((name, i[0].shape, o.shape)))
        set_submodule(model, spec.name, conv)
    with torch.no_grad():
        assert model(x).shape == reference
    assert [name for name, _, _ in calls] == [s.name for s in specs]
    for (_, in_shape, out_shape), spec in zip(calls, specs):
        assert tuple(in_shape[1:]) == (spec.in_channels, *spec.in_size)
        assert tuple(out_shape[1:]) == (spec.out_channels, *spec.out_size)


def _check_chain(specs) -> None:
    """Sequential nets: each block's input has the previous block's output shape."""
    for before, after in zip(specs, specs[1:]):
        assert (after.in_channels, after.in_size) == (before.out_channels, before.out_size), after.name
    for spec in specs:
        assert spec.stride == -(-spec.in_size[0] // spec.out_size[0])
        assert spec.module is not None


@pytest.mark.parametrize("name, count, acts", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_families(name, count, acts):
    model = load_teacher(name, "random")
    specs = discover_blocks(model, INPUT)
    assert len(specs) == count
    assert {s.act for s in specs} == acts
    assert any(s.stride == 2 for s in specs) and any(s.same_shape for s in specs)
    for spec in specs:
        assert get_submodule(model, spec.name) is spec.module
    _check_chain(specs)
    _check_swappable(model, specs)


@pytest.mark.parametrize("b", sorted(EFFICIENTNET_DEPTHS))
def test_efficientnet_b1_b7(b):
    for name in (f"timm:efficientnet_b{b}", f"torchvision:efficientnet_b{b}"):
        model = load_teacher(name, "random")
        specs = discover_blocks(model, INPUT)
        assert len(specs) == EFFICIENTNET_DEPTHS[b], name
        _check_chain(specs)
        _check_swappable(model, specs)


# --- user models -----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """A user's own ResNet basic block: found by its class name."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.head = nn.Linear(16, 10)
        self.unused = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class GeluBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.act(self.conv(x))


class PlainNet(nn.Module):
    """No block class names at all: needs an explicit list. Runs `shared` twice."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), GeluBlock(8), nn.Conv2d(8, 8, 3, 1, 1))
        self.shared = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.shared(self.shared(self.features(x)))
        return self.fc(F.relu(x).mean((2, 3)))


def test_user_basic_block_found_by_class_name():
    model = SmallResNet()
    specs = discover_blocks(model, (1, 3, 32, 32))
    assert [s.name for s in specs] == ["layers.0", "layers.1", "layers.2"]
    assert [(s.in_channels, s.out_channels, s.in_size, s.out_size, s.stride) for s in specs] == [
        (8, 8, (32, 32), (32, 32), 1),
        (8, 16, (32, 32), (16, 16), 2),
        (16, 16, (16, 16), (16, 16), 1),
    ]
    assert [s.same_shape for s in specs] == [True, False, True]
    assert all(s.act == "relu" for s in specs)


def test_demo_teacher_found():
    model = load_teacher("lana.teacher.demo_net:demo_resnet", "random")
    specs = discover_blocks(model, (1, 1, 28, 28))
    assert specs and {type(s.module).__name__ for s in specs} == {"BasicBlock"}


def test_explicit_names_in_forward_order():
    model = PlainNet()
    specs = discover_blocks(model, (1, 3, 16, 16), names=["features.3", "features.2", "features.0"])
    assert [s.name for s in specs] == ["features.0", "features.2", "features.3"]
    assert specs[0].stride == 2 and (specs[0].in_channels, specs[0].out_channels) == (3, 8)
    assert specs[1].act == "gelu"
    # a lone conv has no activation inside: the teacher's most common one stands in
    assert specs[0].act in {"silu", "gelu"}
    _check_swappable_small(model, specs, (1, 3, 16, 16))


def _check_swappable_small(model, specs, shape):
    for spec in specs:
        set_submodule(model, spec.name, nn.Conv2d(spec.in_channels, spec.out_channels, 1, stride=spec.stride))
    assert model(torch.zeros(shape)).shape == (1, 2)


def test_nothing_found():
    with pytest.raises(
        BlockDiscoveryError,
        match=r"no replaceable blocks found in PlainNet: no repeated submodule holds two or more weight layers "
        r"\(module classes seen: .*Conv2d.*\); name the block modules: teacher.blocks",
    ):
        discover_blocks(PlainNet(), (1, 3, 16, 16))


@pytest.mark.parametrize(
    "names, words",
    [
        ([], "teacher.blocks is empty"),
        (["layers.9"], "no module named 'layers.9'"),
        (["layers.0", "layers.0"], "twice"),
        (["layers", "layers.1"], "inside 'layers'"),
        (["head"], "input is not a single 4-D (N, C, H, W) or 3-D (N, L, D) tensor"),
        (["unused"], "does not run"),
    ],
)
def test_explicit_name_errors(names, words):
    with pytest.raises(BlockDiscoveryError) as exc:
        discover_blocks(SmallResNet(), (1, 3, 32, 32), names=names)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_missing_name_suggests_close_names():
    with pytest.raises(BlockDiscoveryError, match=r"close names: .*layers\.1"):
        discover_blocks(SmallResNet(), (1, 3, 32, 32), names=["layer.1"])


def test_shared_module_refused():
    with pytest.raises(BlockDiscoveryError, match="runs 2 times"):
        discover_blocks(PlainNet(), (1, 3, 16, 16), names=["shared"])


def test_bad_input_shape_is_one_line_error():
    with pytest.raises(BlockDiscoveryError, match="forward of SmallResNet on input shape"):
        discover_blocks(SmallResNet(), (1, 1, 32, 32))
    with pytest.raises(BlockDiscoveryError, match="4-D input shape"):
        discover_blocks(SmallResNet(), (3, 32, 32))


class Bottleneck(nn.Module):
    """A block with a block inside, and a two-input block: outermost single-input wins."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BasicBlock(8, 8)

    def forward(self, x):
        return self.inner(x)


class TwoInput(nn.Module):
    """Named like a block but takes two tensors: not replaceable, but its children are."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = BasicBlock(8, 8), BasicBlock(8, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


TwoInput.__name__ = "InvertedResidual"


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.outer = Bottleneck()
        self.pair = TwoInput()

    def forward(self, x):
        x = self.outer(self.stem(x))
        return self.pair(x, x)


def test_outermost_and_single_tensor_rule():
    specs = discover_blocks(Nested(), (1, 3, 8, 8))
    assert [s.name for s in specs] == ["outer", "pair.a", "pair.b"]


def test_mode_restored_and_hooks_removed():
    model = SmallResNet().train()
    discover_blocks(model, (1, 3, 32, 32))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_get_set_submodule():
    model = SmallResNet()
    assert get_submodule(model, "layers.1.downsample.0") is model.layers[1].downsample[0]
    assert get_submodule(model, "") is model
    new = nn.Identity()
    set_submodule(model, "layers.2", new)
    assert model.layers[2] is new and list(model.layers._modules) == ["0", "1", "2"]
    with pytest.raises(BlockDiscoveryError, match="no module named 'layers.7'"):
        set_submodule(model, "layers.7", nn.Identity())
    with pytest.raises(BlockDiscoveryError):
        set_submodule(model, "", nn.Identity())


def test_describe_blocks_is_json_able():
    model = SmallResNet()
    rows = describe_blocks(discover_blocks(model, (1, 3, 32, 32)))
    json.dumps(rows)
    assert rows[1] == {
        "name": "layers.1",
        "class": "BasicBlock",
        "layout": "nchw",
        "in_shape": [8, 32, 32],
        "out_shape": [16, 16, 16],
        "stride": 2,
        "act": "relu",
        "params": sum(p.numel() for p in model.layers[1].parameters()),
    }

"""Distillation's pairing: every block's candidates learn from that block's own input and output.

The teacher here has blocks of one shape that compute different things, so pairing block A's
input with block B's output (a hook bound to the wrong name, a shifted list) shows as a
non-zero loss for a frozen copy of the block, which must reproduce it exactly.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_config
from torch import nn

from lana.config import OpsConfig
from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.distill.core import distill_candidates
from lana.distill.features import FeatureTap, normalised_mse
from lana.run.folder import RunFolder
from lana.teacher.blocks import discover_blocks
from op_zoo import _registry, register_op

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCKS = ["1", "2", "3"]


def distinct_blocks_teacher() -> nn.Module:
    """Stem, three same-shaped blocks with different weights (so a mispairing fails silently), a head."""
    torch.manual_seed(0)

    def block(stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(6, 6, 3, stride, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())

    net = nn.Sequential(nn.Conv2d(1, 6, 3, 1, 1), block(1), block(1), block(1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    for module in net.modules():  # BN statistics unlike the defaults, so every block differs
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_feature_tap_pairs_each_block_with_its_own_output() -> None:
    teacher = distinct_blocks_teacher()
    tap = FeatureTap(teacher, BLOCKS)
    feats = tap.features(teacher, torch.randn(4, 1, 16, 16), BLOCKS)
    # no hook stays on the teacher between passes (a candidate copied from a block would copy it)
    assert not any(m._forward_hooks for m in teacher.modules())
    with torch.no_grad():
        for name, (x, y) in feats.items():
            block = teacher.get_submodule(name)
            assert torch.equal(block(x), y), name
            others = [feats[o][1] for o in BLOCKS if o != name and feats[o][1].shape == y.shape]
            assert all(not torch.allclose(block(x), other) for other in others)


@pytest.fixture
def frozen_copy_op(monkeypatch):
    """A test op: a frozen copy of the teacher block. Unlike the keep-teacher op it runs in the
    loop (untrained, measured), so its loss is exactly zero only if the loop pairs correctly."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_op("zoo_frozen_copy", family="test", description="frozen teacher copy", source="tests")
    def build(spec):
        return copy.deepcopy(spec.module).requires_grad_(False)

    return "zoo_frozen_copy"


def test_distillation_pairs_each_block_with_its_own_output(tmp_path, frozen_copy_op) -> None:
    ops = {"include": [frozen_copy_op, "conv_k3"]}
    config = tiny_config(ops=ops, distill={"max_steps": 4})
    splits = load_data(config.data)
    teacher = distinct_blocks_teacher()
    specs = discover_blocks(teacher, (1, *splits.input_shape), BLOCKS)
    cands = build_all_candidates(specs, OpsConfig(**ops))
    results = distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "run"))
    for block in BLOCKS:
        assert results[(block, frozen_copy_op)] == {"distill_loss": 0.0, "status": "fixed", "steps": 0}, block
        trained = results[(block, "conv_k3")]["distill_loss"]
        assert math.isfinite(trained) and trained > 0.0, block
    # the same copy fed another block's input scores far from zero: the check above can fail
    images = torch.stack([splits.train[i][0] for i in range(8)])
    tap = FeatureTap(teacher, BLOCKS)
    feats = tap.features(teacher, images, BLOCKS)
    with torch.no_grad():
        mispaired = normalised_mse(teacher.get_submodule("3")(feats["1"][0]), feats["3"][1])
    assert mispaired > 0.1


def test_normalised_mse_defaults_to_this_batch() -> None:
    torch.manual_seed(0)
    prediction, target = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 3
    loss = normalised_mse(prediction, target)
    expected = torch.nn.functional.mse_loss(prediction, target) / target.var()
    assert torch.allclose(loss, expected)
    assert torch.equal(loss, normalised_mse(prediction, target, target.var(), target.numel()))
    assert normalised_mse(target, target) == 0.0


class _Viewed(nn.Module):
    """``x.view`` over its spatial axes: fails on a channels_last tensor, as some users' code does."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner or nn.Identity()

    def forward(self, x):
        n, c, h, w = x.shape
        return self.inner(x.view(n, c * h * w).view(n, c, h, w))


def test_a_teacher_or_candidate_that_fails_on_channels_last_batches_trains_on_contiguous_ones(tmp_path, monkeypatch, caplog):
    """On a CPU, distillation feeds channels_last batches (faster convolutions); code that
    cannot take one (a ``view``) falls back to contiguous batches instead of failing the run."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_op("zoo_viewed_conv", family="test", description="a conv behind a view", source="tests")
    def build(spec):
        return _Viewed(nn.Conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, 1))

    teacher = distinct_blocks_teacher()
    teacher[0] = nn.Sequential(_Viewed(), nn.Conv2d(3, 6, 3, 1, 1))  # the teacher itself fails on a channels_last batch
    ops = {"include": ["zoo_viewed_conv", "conv_k3"]}
    # three channels: a one-channel batch is contiguous and channels_last at once
    config = tiny_config(ops=ops, distill={"max_steps": 3},
                         data={"kind": "synthetic", "channels": 3, "image_size": 16, "val_size": 50, "batch_size": 32})
    splits = load_data(config.data)
    specs = discover_blocks(teacher, (1, *splits.input_shape), BLOCKS)
    cands = build_all_candidates(specs, OpsConfig(**ops))
    with caplog.at_level("INFO", logger="lana"):
        results = distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "run"))
    for block in BLOCKS:
        for op in ("zoo_viewed_conv", "conv_k3"):
            row = results[(block, op)]
            assert row["status"] == "ok" and row["steps"] == 3 and math.isfinite(row["distill_loss"]), (block, op)
    assert "the teacher failed on a channels_last batch" in caplog.text
    assert "zoo_viewed_conv failed on a channels_last batch" in caplog.text  # block inputs go channels_last
    assert "conv_k3 failed" not in caplog.text


def test_a_strided_1x1_convolution_with_few_input_channels_trains_on_contiguous_batches(tmp_path, monkeypatch, caplog):
    """oneDNN's NHWC weight gradient of a strided 1x1 convolution with fewer input channels than its
    block is wrong (or crashes): such candidates and students train on contiguous batches."""
    from lana.device import Placement
    from lana.distill.inference import channels_last_trains_safely
    from lana.distill.train import channels_last_trains, label_loss

    assert not channels_last_trains_safely(nn.Sequential(nn.Conv2d(4, 8, 1, 2), nn.ReLU()))
    for safe in (nn.Conv2d(16, 8, 1, 2), nn.Conv2d(4, 8, 1, 1), nn.Conv2d(4, 8, 3, 2, 1)):  # 16: every kernel block
        assert channels_last_trains_safely(safe), safe
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 8, 1, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    assert not channels_last_trains(student, label_loss, batch, Placement(torch.device("cpu")))
    assert all(p.is_contiguous() for p in student.parameters())

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_op("zoo_strided_pointwise", family="test", description="a strided 1x1 conv on 4 channels", source="tests")
    def build(spec):
        return nn.Sequential(nn.Conv2d(spec.in_channels, 4, 1, spec.stride), nn.Conv2d(4, spec.out_channels, 1, 2),
                             nn.Upsample(scale_factor=2))

    teacher = distinct_blocks_teacher()
    ops = {"include": ["zoo_strided_pointwise", "conv_k3"]}
    config = tiny_config(ops=ops, distill={"max_steps": 2},
                         data={"kind": "synthetic", "image_size": 16, "val_size": 50, "batch_size": 32})
    splits = load_data(config.data)
    specs = discover_blocks(teacher, (1, *splits.input_shape), BLOCKS)
    cands = build_all_candidates(specs, OpsConfig(**ops))
    with caplog.at_level("INFO", logger="lana"):
        distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "run"))
    assert "zoo_strided_pointwise trains on contiguous batches" in caplog.text
    assert "conv_k3 trains on contiguous" not in caplog.text


def test_the_onednn_check_compares_both_layouts_in_its_own_process():
    from benchmarks.strided_pointwise import run_case

    figures = run_case(8, 1, 1)  # stride 1: right on every CPU
    diffs, scale = figures.split(" (of ")
    assert [float(d) for d in diffs.split(" / ")] == pytest.approx([0, 0, 0], abs=1e-3) and float(scale.rstrip(")")) > 0

"""The whole pipeline on one model of every teacher family, on tiny synthetic inputs.

For each family: distill (train, score, time) → solve → fine-tune → export (TorchScript,
checked against eager; ``.pt2`` as well for two families). Big models keep their first
blocks only (``teacher.blocks``, taken from automatic discovery) so that each run takes a
few seconds on 2 CPU cores; MobileNetV3-small runs with ``blocks: null`` over all its blocks. EfficientNet B1–B7 (and
torchvision's EfficientNetV2-S) get discovery and candidate building for every block, with
shapes checked on the first block of each stage, not the pipeline. Every op of the zoo is
built for one strided and one shape-keeping block of each model. Candidates must reproduce
their block's output shape exactly, which is what keeps strided / channel-changing blocks
to the ops that can.
"""
from __future__ import annotations

import json
import logging
import textwrap
import uuid

import pytest
import torch

import op_zoo
from lana.config import LatencyConfig, build_config
from lana.distill.candidates import TEACHER_OP, build_all_candidates
from lana.errors import BlockDiscoveryError
from lana.run.folder import RunFolder
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

SIZE = 32
OPS = ["identity", "conv_k1", "mbconv_k3_e1", "pruned_keep50", "lowrank_r50", "avgpool_conv_k1"]

# (teacher, how many discovered blocks the run keeps; None = automatic discovery, all blocks)
FAMILIES = [
    ("timm:resnet18", 3),  # ResNet basic
    ("torchvision:resnet50", 3),  # ResNet bottleneck
    ("timm:mobilenetv2_100", 3),
    ("torchvision:mobilenet_v3_small", None),
    ("timm:efficientnet_b0", 3),
    ("torchvision:efficientnet_b0", 3),
    ("timm:tf_efficientnetv2_b0", 3),
    ("timm:regnetx_002", 3),
]

PT2_FAMILIES = {"timm:resnet18", "timm:efficientnet_b0"}  # exported to .pt2 as well (the default formats)

# Discovery and candidates for every block, shapes on each stage's first block (no pipeline).
SHAPES_ONLY = [f"{lib}:efficientnet_b{b}" for lib in ("timm", "torchvision") for b in range(1, 8)]
SHAPES_ONLY += ["torchvision:efficientnet_v2_s"]
# Low-rank candidates run an SVD per conv (seconds on the widest models): the shapes-only
# models leave them out; the pipelines above build them.
SHAPES_ONLY_OPS = [op for op in OPS if not op.startswith("lowrank")]
# Few timed calls: these tests check the pipeline runs, not the figures.
FAST_LATENCY = {"batch_size": 2, "warmup": 1, "repeats": 2, "max_repeats": 4, "ci": 1.0, "time_cap_s": 0.2}

# Every op of the zoo on one strided and one shape-keeping block of each model.
FULL_ZOO = [m for m, _ in FAMILIES] + ["timm:efficientnet_b7", "torchvision:efficientnet_b7", "torchvision:efficientnet_v2_s"]

USER_NET = '''
from torch import nn


class Stage(nn.Module):
    """conv-BN-ReLU: a class name lana does not know, so blocks must be listed."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = Stage(3, 8, 1)
        self.body = nn.Sequential(Stage(8, 8, 1), Stage(8, 16, 2), Stage(16, 16, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def build(num_classes=10):
    return Net(num_classes)
'''


@pytest.fixture(autouse=True)
def one_thread_and_no_leaked_log_files():
    """One thread (the machine is shared); close the log handlers each run folder adds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logger = logging.getLogger("lana")
    before = list(logger.handlers)
    yield
    for handler in [h for h in logger.handlers if h not in before]:
        logger.removeHandler(handler)
        handler.close()
    torch.set_num_threads(threads)


def family_tree(model: str, blocks: list[str] | None, name: str = "family") -> dict:
    """A run config: synthetic 3×32×32 images, 10 classes, a handful of ops, a few steps."""
    return {
        "name": name,
        "teacher": {"model": model, "checkpoint": "random", "kwargs": {"num_classes": 10}, "blocks": blocks},
        "data": {
            "kind": "synthetic", "channels": 3, "image_size": SIZE, "mean": [0.5], "std": [0.3],
            "val_size": 16, "train_limit": 32, "test_limit": 8, "batch_size": 16,
        },
        "ops": {"include": OPS},
        "distill": {"max_steps": 2},
        "score": {"val_images": 16},
        # only the knobs this version of LatencyConfig has (max_repeats, ci, time_cap_s are new)
        "latency": {k: v for k, v in FAST_LATENCY.items() if k in LatencyConfig.model_fields},
        "finetune": {"epochs": 0.5, "min_steps": 0},
        # torch.export of student and teacher takes most of a run: two families check it here
        # (tests/test_export_*.py cover every format), the others TorchScript only
        "export": {"check_images": 4, "formats": ["torchscript", "pt2"] if model in PT2_FAMILIES else ["torchscript"]},
    }


def first_blocks(model: str, keep: int) -> list[str]:
    """Names of the first ``keep`` discovered blocks, ending with a shape-changing one."""
    specs = discover_blocks(load_teacher(model, "random", {"num_classes": 10}), (1, 3, SIZE, SIZE))
    changing = next(i for i, s in enumerate(specs) if not s.same_shape)
    chosen = specs[:keep] if changing < keep else [*specs[: keep - 1], specs[changing]]
    return [s.name for s in chosen]


def assert_candidates_reproduce_shapes(specs, candidates: dict) -> None:
    """Every candidate maps the block's input shape to exactly its output shape."""
    for spec in specs:
        x = torch.randn(2, spec.in_channels, *spec.in_size)
        for name, cand in candidates[spec.name].items():
            module = cand.module if hasattr(cand, "module") else cand
            with torch.no_grad():
                y = module.eval()(x)
            assert tuple(y.shape[1:]) == (spec.out_channels, *spec.out_size), (spec.name, name)
        if not spec.same_shape:
            assert "identity" not in candidates[spec.name], spec.name
        if spec.stride == 1:
            assert not any(n.startswith(("s2d_", "avgpool_")) for n in candidates[spec.name]), spec.name


def run_full_pipeline(tree: dict, folder) -> dict:
    """distill → solve (budget near the fastest reachable) → fine-tune → export; checks each."""
    from lana.run.context import prepare
    from lana.stages.distill import distill_stage
    from lana.stages.export import export_stage
    from lana.stages.finetune import finetune_stage
    from lana.stages.solve import solve_run

    config = build_config(tree)
    run = RunFolder(folder)
    table = distill_stage(config, run)
    ctx = prepare(config, run)
    if config.teacher.blocks is not None:
        assert [s.name for s in ctx.specs] == config.teacher.blocks
    assert list(table["block"].unique()) == [s.name for s in ctx.specs]
    assert (table["latency_ms"] > 0).all() and table["status"].isin(["ok", "fixed"]).all()

    candidates = build_all_candidates(ctx.specs, config.ops)
    assert_candidates_reproduce_shapes(ctx.specs, candidates)
    for block, group in table.groupby("block", sort=False):
        assert set(group["candidate"]) == set(candidates[block])
        assert (group["candidate"] == TEACHER_OP).sum() == 1
    assert any(not s.same_shape for s in ctx.specs), "a shape-changing block must be covered"

    # A budget just above the fastest reachable latency forces cheaper ops into the student.
    latency = json.loads(run.file("latency.json").read_text())
    fastest = table.groupby("block")["latency_ms"].min().sum() + latency["fixed_latency_ms"]
    selection = solve_run(run, f"{fastest * 1.001 + 1e-6:.9f}ms")
    assert set(selection["choice"]) == {s.name for s in ctx.specs}
    assert selection["predicted_latency_ms"] <= selection["budget_ms"] + 1e-9
    assert any(op != TEACHER_OP for op in selection["choice"].values())

    finetuned = finetune_stage(ctx, selection)
    assert finetuned["val_loss_after"] == finetuned["val_loss_after"]  # not NaN
    report = export_stage(ctx, selection)
    assert report["finetuned"] and report["export"]["max_abs_diff"] <= config.export.atol
    assert report["student_latency_ms"] > 0 and report["choice"] == selection["choice"]
    assert [r["format"] for r in report["exports"]] == config.export.formats
    assert all(r["error"] is None and r["max_abs_diff"] <= config.export.atol for r in report["exports"])
    scripted = torch.jit.load(str(run.file("student.ts")))
    with torch.no_grad():
        assert scripted(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 10)
    return selection


@pytest.mark.parametrize("model, keep", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_full_pipeline_per_family(model, keep, tmp_path):
    torch.manual_seed(0)
    blocks = first_blocks(model, keep) if keep else None
    run_full_pipeline(family_tree(model, blocks), tmp_path / "run")


def test_full_pipeline_user_model_with_listed_blocks(tmp_path, monkeypatch):
    module = f"h6_user_net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(USER_NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = f"{module}:build"
    with pytest.raises(BlockDiscoveryError, match="teacher.blocks"):
        discover_blocks(load_teacher(model, "random", {"num_classes": 10}), (1, 3, SIZE, SIZE))
    torch.manual_seed(0)
    selection = run_full_pipeline(family_tree(model, ["body.0", "body.1", "body.2"]), tmp_path / "run")
    assert list(selection["choice"]) == ["body.0", "body.1", "body.2"]


@pytest.mark.parametrize("model", SHAPES_ONLY)
def test_blocks_and_candidates_of_every_block(model):
    """EfficientNet B1–B7 and EfficientNetV2-S: every block gets candidates of its shape."""
    torch.manual_seed(0)
    specs = discover_blocks(load_teacher(model, "random", {"num_classes": 10}), (1, 3, SIZE, SIZE))
    tree = family_tree(model, None)
    tree["ops"] = {"include": SHAPES_ONLY_OPS}
    candidates = build_all_candidates(specs, build_config(tree).ops)
    assert list(candidates) == [s.name for s in specs]
    assert all(TEACHER_OP in c and "conv_k1" in c and "mbconv_k3_e1" in c for c in candidates.values())
    stage = lambda spec: spec.name.rsplit(".", 1)[0]  # noqa: E731  (timm blocks.3.1, torchvision features.4.0)
    firsts = [s for i, s in enumerate(specs) if i == 0 or stage(s) != stage(specs[i - 1])]
    assert len(firsts) in (6, 7) and sum(not s.same_shape for s in firsts) >= 5
    assert_candidates_reproduce_shapes(firsts, candidates)


@pytest.mark.parametrize("model", FULL_ZOO)
def test_full_zoo_reproduces_shapes_of_strided_and_same_shape_blocks(model):
    torch.manual_seed(0)
    specs = discover_blocks(load_teacher(model, "random", {"num_classes": 10}), (1, 3, SIZE, SIZE))
    strided = next(s for s in specs if s.stride == 2 and s.in_channels != s.out_channels)
    same = next(s for s in specs if s.same_shape)
    candidates = {s.name: op_zoo.build_candidates(s) for s in (strided, same)}
    assert_candidates_reproduce_shapes([strided, same], candidates)
    assert min(map(len, candidates.values())) >= 90  # typical blocks: 100-125 (docs/ops.md)
    assert "identity" in candidates[same.name] and any(n.startswith("s2d_") for n in candidates[strided.name])

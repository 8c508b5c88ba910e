"""Teachers whose output is not logits (a backbone's feature maps, here a dict of two): scored
and fine-tuned by the normalised feature distance, the student returns the teacher's
structure, and its TorchScript and .pt2 files reload to that structure and match it."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import ResidualUnit as Unit
from conftest import tiny_tree
from torch import nn
from torch.utils.data import TensorDataset

import lana
from lana.cli.report import summary_rows
from lana.config import build_config
from lana.distill.candidates import build_all_candidates
from lana.distill.score import score_candidates
from lana.errors import TeacherOutputError
from lana.export.verify import export_and_verify
from lana.run.context import prepare
from lana.run.folder import RunFolder
from lana.stages.finetune import score_kind
from lana.teacher.blocks import discover_blocks, set_submodule
from lana.teacher.outputs import feature_distance, output_structure


class Backbone(nn.Module):
    """Two stages; returns both stages' feature maps, as a detector's backbone does."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(Unit(width), Unit(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage2 = nn.Sequential(Unit(2 * width), Unit(2 * width))

    def forward(self, x):
        fine = self.stage1(self.stem(x))
        return {"fine": fine, "coarse": self.stage2(self.down(fine))}


BLOCKS = ["stage1.0", "stage1.1", "stage2.0", "stage2.1"]
FAST = {
    "ops": {"include": ["identity", "conv_k1", "pruned_keep25"]},
    "distill": {"max_steps": 4},
    "score": {"val_images": 48},
    "latency": {"batch_size": 8, "warmup": 1, "repeats": 3, "threads": 1, "time_cap_s": 0.3, "context_rounds": 1},
    "finetune": {"epochs": 0.5},
    "export": {"check_images": 8},
    "data": {"batch_size": 32},
}


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


class Reusing(Backbone):
    """Adds an activation from before ``stage2`` to its output: candidates cannot be stacked."""

    def forward(self, x):
        fine = self.stage1(self.stem(x))
        down = self.down(fine)
        return (fine, [self.stage2(down) + down])


def _teacher(cls: type = Backbone) -> Backbone:
    """A backbone whose batch-norm statistics fit the data, as a trained one's do."""
    torch.manual_seed(0)
    teacher = cls()
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the passes below
    with torch.no_grad():
        teacher.train()(_images(256, 9))
    return teacher.eval()


def test_a_feature_map_teacher_goes_through_accelerate(tmp_path, one_thread):
    teacher = _teacher()
    labels = torch.randint(0, 10, (96,), generator=torch.Generator().manual_seed(0))
    train = TensorDataset(_images(96, 0), labels)  # labels are given, and ignored: there are no logits
    result = lana.accelerate(teacher, train=train, val=TensorDataset(_images(48, 1)), budget="60%",
                             run_dir=tmp_path / "run", device="cpu", config=FAST, blocks=BLOCKS)
    x = _images(8, 2)
    with torch.no_grad():
        want, got = teacher(x), result.student(x)
    assert output_structure(got) == output_structure(want) == {"dict": {"fine": "tensor", "coarse": "tensor"}}
    assert all(got[k].shape == want[k].shape for k in want)

    report = result.report
    assert report["score_kind"] == "feature_distance"
    assert report["teacher_top1"] is None and report["student_top1"] is None and report["teacher_agreement"] is None
    assert 0 <= report["feature_distance"] < 1, report["feature_distance"]  # nearer the teacher than an all-zero output
    assert summary_rows(report)[0][0] == "feature distance from the teacher (test)"  # what `lana export` prints
    table = result.table
    assert (table["score"] == -table["val_loss_delta"]).all() and (table["val_loss"] >= 0).all()
    assert (table.loc[table["candidate"] == "teacher", "score"] == 0).all()
    assert table.loc[table["candidate"] != "teacher", "val_loss"].gt(0).any()

    rows = {row["format"]: row for row in report["exports"]}
    assert rows["torchscript"]["error"] is None and rows["pt2"]["error"] is None
    for fn in (torch.jit.load(rows["torchscript"]["file"]), torch.export.load(rows["pt2"]["file"]).module()):
        with torch.no_grad():
            out = fn(x)
        assert output_structure(out) == output_structure(want)
        assert all(torch.allclose(out[k], got[k], atol=1e-4) for k in want)


@pytest.mark.parametrize("cls", [Backbone, Reusing], ids=["stacked", "one-at-a-time"])
def test_feature_scores_are_the_distance_of_each_swap(cls, one_thread, caplog):
    teacher = _teacher(cls)
    specs = discover_blocks(teacher, (1, 1, 16, 16), BLOCKS)
    torch.manual_seed(0)
    candidates = build_all_candidates(specs, build_config({"ops": FAST["ops"]}).ops)
    images = _images(24, 3)
    with caplog.at_level("INFO", logger="lana"):
        scores, base = score_candidates(teacher, candidates, images, labels=None, batch_size=10)
    assert ("stacking candidates failed" in caplog.text) == (cls is Reusing)
    assert base["score_kind"] == "feature_distance" and base["val_acc"] is None
    with torch.no_grad():
        reference = teacher(images)
        for block, cands in candidates.items():  # brute force: swap each candidate in alone
            original = teacher.get_submodule(block)
            for name, cand in cands.items():
                set_submodule(teacher, block, cand.module.eval())
                want = 0.0 if name == "teacher" else feature_distance(teacher(images), reference).mean().item()
                set_submodule(teacher, block, original)
                got = scores[(block, name)]
                assert got["val_loss"] == pytest.approx(want, rel=1e-4, abs=1e-6), (block, name)
                assert got["val_loss_delta"] == got["val_loss"] and math.isnan(got["acc_delta"])
    assert any(v["val_loss"] > 0 for v in scores.values())


class Captioned(Backbone):
    def forward(self, x):
        return {"features": super().forward(x)["fine"], "caption": "a cat"}


def test_an_output_that_is_not_tensors_is_one_clear_error(tmp_path):
    data = TensorDataset(_images(8, 0))
    with pytest.raises(TeacherOutputError, match="the teacher returned a str"):
        lana.accelerate(Captioned(), train=data, val=data, run_dir=tmp_path / "r", blocks=BLOCKS)


class Unscriptable(Backbone):
    """A forward TorchScript cannot script (attributes looked up by name): it is traced, dict and all."""

    def forward(self, x):
        fine = self.stage1(self.stem(x))
        return {name: getattr(self, name)(fine) if name != "fine" else fine for name in ("fine", "down")}


def test_a_traced_dict_output_reloads_as_a_dict(tmp_path, one_thread):
    teacher, x = _teacher(Unscriptable), _images(8, 4)
    info = export_and_verify("torchscript", teacher, tmp_path / "m.ts", x, 1e-4)
    assert info["method"] == "trace"
    with torch.no_grad():
        out, want = torch.jit.load(str(tmp_path / "m.ts"))(x), teacher(x)
    assert output_structure(out) == output_structure(want) and torch.equal(out["down"], want["down"])


def test_a_configured_feature_teacher_is_recognised(tmp_path):
    tree = tiny_tree(teacher={"model": "timm:resnet10t", "kwargs": {"features_only": True, "in_chans": 1}})
    ctx = prepare(build_config(tree), RunFolder(tmp_path / "r"), writes=False)
    assert ctx.splits.num_classes == 0 and score_kind(ctx) == "feature_distance"  # the CLI path, no logits

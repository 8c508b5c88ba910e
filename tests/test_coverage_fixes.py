"""Fixes the coverage benchmark (benchmarks/coverage.py) led to, one test each: what broke on
a family of the published model list, reduced to a few-line network."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lana
from lana.distill.candidates import Candidate
from lana.distill.score import score_candidates
from lana.distill.swap import Prefix


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.grid_size = nn.Conv2d(1, 8, 2, stride=2), (4, 4)

    def forward(self, x):
        return self.proj(x)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x).relu()


class _ReadsAttributes(nn.Module):
    """Like timm's ViT with ``dynamic_img_size``: the forward reads an attribute of a module
    that runs before the blocks (``patch_embed.grid_size``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = _Embed()
        self.blocks = nn.Sequential(_Block(), _Block())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.embed(x) * (self.embed.grid_size[0] / 4)
        return self.head(self.blocks(x).mean((2, 3)))


def test_scoring_replays_a_prefix_whose_attributes_the_forward_reads():
    """timm:test_vit failed scoring with "'_Replay' object has no attribute 'grid_size'"."""
    torch.manual_seed(0)
    net = _ReadsAttributes().eval()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 5, (12,))
    cands = {name: {"teacher": Candidate(name, "teacher", "teacher", net.get_submodule(name), 0, 0),
                    "identity": Candidate(name, "identity", "identity", nn.Identity(), 0, 0)}
             for name in ("blocks.0", "blocks.1")}
    scores, _ = score_candidates(net, cands, x, y, batch_size=4)
    assert isinstance(net.embed, _Embed)  # restored
    with torch.no_grad():
        ref = net(x).log_softmax(-1)
        for block in ("blocks.0", "blocks.1"):
            original = net.get_submodule(block)
            net.blocks[int(block[-1])] = nn.Identity()
            out = net(x).log_softmax(-1)
            net.blocks[int(block[-1])] = original
            kl = (ref.exp() * (ref - out)).sum(-1).mean().item()
            assert scores[(block, "identity")]["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
            assert scores[(block, "teacher")]["kl"] == 0


class _Stem(nn.Module):
    """Like timm's FastViT ``MobileOneBlock``: branches in a ModuleList that is never called itself."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 1)])

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


class _NestedPrefix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_Stem(), _Block())
        self.blocks = nn.Sequential(_Block(), _Block())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_scoring_replays_a_prefix_holding_a_container_that_is_never_called():
    """timm FastViT, EfficientViT and SwinV2 failed scoring with "no module named 'stem.0.conv_kxk'":
    a module inside an uncalled ModuleList stood in beside its ancestor, which could not be restored."""
    torch.manual_seed(0)
    net = _NestedPrefix().eval()
    x = torch.randn(6, 1, 8, 8)
    assert sorted(Prefix(net, x[:1]).modules_before("stem.1")) == ["stem.0"]
    cands = {name: {"teacher": Candidate(name, "teacher", "teacher", net.get_submodule(name), 0, 0),
                    "identity": Candidate(name, "identity", "identity", nn.Identity(), 0, 0)}
             for name in ("stem.1", "blocks.0", "blocks.1")}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores, _ = score_candidates(net, cands, x, None, batch_size=3)
    assert isinstance(net.stem[0], _Stem) and isinstance(net.stem[0].branches[0], nn.Conv2d)  # all restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(scores[(b, "identity")]["kl"] > 0 for b in cands)


class _PreAct(nn.Module):
    """Like timm's Xception units: an in-place activation on the block's own input."""

    def __init__(self) -> None:
        super().__init__()
        self.act, self.conv = nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(self.act(x))


class _PreActNet(nn.Module):
    _version = 2  # like torchvision's MNASNet: loading refuses a state_dict without its module versions

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2 instead of {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.units = nn.Sequential(_PreAct(), _PreAct())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.units(self.stem(x)).mean((2, 3)))


def test_finetuning_a_candidate_ending_in_an_activation_before_an_in_place_one(tmp_path, one_thread):
    """timm:xception41 failed fine-tuning: "a variable needed for gradient computation has been
    modified by an inplace operation" (a candidate's ReLU output, overwritten by the next block's)."""
    torch.manual_seed(0)
    teacher = _PreActNet().eval()
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    config = {"ops": {"include": ["conv_k1"]}, "distill": {"max_steps": 1}, "score": {"val_images": 4},
              "latency": {"batch_size": 1, "warmup": 1, "repeats": 3, "max_repeats": 3, "time_cap_s": 0.1, "context_rounds": 1},
              "finetune": {"epochs": 1, "min_steps": 1}, "data": {"batch_size": 8}}
    run = lana.new_run(teacher, data, data, run_dir=tmp_path / "run", device="cpu", config=config,
                       blocks=["units.0", "units.1"])
    run.distill()
    result = run.finetune({"choice": {"units.0": "conv_k1", "units.1": "teacher"}})
    assert math.isfinite(result["train_loss"]) and result["epochs"] >= 1  # the steps ran (none: no loss to average)
    assert teacher.units[1].act.inplace  # the user's teacher is untouched
    student = run.student({"choice": {"units.0": "conv_k1", "units.1": "teacher"}})  # loads RUN/student.pt
    assert student.units[1].act.inplace  # the student as exported keeps its in-place activation
    # torchvision:mnasnet0_5 failed loading student.pt ("version should be set to 1 or 2 instead of None")
    assert student.stem.weight.shape == teacher.stem.weight.shape


def test_head_pruning_declines_an_attention_that_takes_its_head_width_from_the_input():
    """torchvision:swin_t failed building candidates: its window attention computes the head width
    as C // num_heads, so a copy with half the heads reshaped wrongly (attn_heads50)."""
    from torchvision.models.swin_transformer import SwinTransformerBlock

    import op_zoo
    from lana.teacher.blocks import discover_blocks

    torch.manual_seed(0)
    net = nn.Sequential(SwinTransformerBlock(32, 4, [4, 4], [0, 0]), SwinTransformerBlock(32, 4, [4, 4], [2, 2])).eval()
    specs = discover_blocks(net, (1, 8, 8, 32), ["0", "1"])
    for spec in specs:
        assert op_zoo.get_op("attn_heads50").build(spec) is None
        assert op_zoo.get_op("attn_linear").build(spec) is not None  # the other attention ops still apply

"""The faster scoring and profiling paths give what the plain ones give.

Scoring: the 1x1-map convolution shortcut and channels_last batches (lana.distill.inference)
change float rounding only, fall back where a model cannot take them, and leave every module
as it was. Profiling: in context, candidates timed alone only order the first cover round,
briefly; the precise timing stays available.
"""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from test_scoring import _candidates, _net
from torch import nn

from lana.distill.candidates import Candidate, build_all_candidates
from lana.distill.inference import fast_batch, fast_convs
from lana.distill.score import score_candidates
from lana.latency.profiles import ORDERING_KNOBS, profile_latency
from lana.teacher.blocks import discover_blocks
from lana.teacher.demo_net import demo_resnet


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 5, 1), nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.Conv2d(6, 5, 5, stride=2, padding=2),
    nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False),
    nn.Conv2d(6, 6, 3, padding=1, groups=3),  # grouped: left to the plain kernel
    nn.Conv2d(6, 5, 3),  # no padding: a 1x1 map is too small for it, the plain kernel says so
], ids=lambda c: f"k{c.kernel_size[0]}p{c.padding[0]}d{c.dilation[0]}g{c.groups}")
def test_a_convolution_of_a_1x1_map_is_the_same_as_a_matrix_product(conv):
    torch.manual_seed(0)
    conv.eval()
    for shape in ((7, 6, 1, 1), (7, 6, 4, 4)):  # the shortcut, and a map it leaves alone
        x = torch.randn(shape)
        try:
            expected = conv(x)
        except RuntimeError:
            with fast_convs([conv], torch.device("cpu")), pytest.raises(RuntimeError):
                conv(fast_batch(x))
            continue
        with fast_convs([conv], torch.device("cpu")), torch.no_grad():
            got = conv(fast_batch(x))
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in conv.__dict__  # nothing left behind


def test_fast_convs_leave_subclasses_with_their_own_forward_and_gpus_alone():
    class Same(nn.Conv2d):  # like timm's Conv2dSame: its own forward, not touched
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(nn.Conv2d(3, 3, 1), Same(3, 3, 1))
    with fast_convs([net, net], torch.device("cpu")) as patched:  # a module given twice is patched once
        assert [m for m in patched.patched] == [net[0]]
    with fast_convs([net], torch.device("cuda")) as patched:
        assert patched.patched == []


def test_fast_scores_equal_plain_scores():
    net = _net()
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 5, (24,))
    fast, _ = score_candidates(net, _candidates(net), x, y, batch_size=16)
    plain, _ = score_candidates(net, _candidates(net), x, y, batch_size=16, plain=True)
    assert fast.keys() == plain.keys()
    for key in plain:
        for column in ("kl", "val_loss", "val_acc"):
            assert fast[key][column] == pytest.approx(plain[key][column], rel=1e-4, abs=1e-6)


class _Viewing(nn.Module):
    """A network whose head ``view``s a feature map: impossible on a channels_last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.view(x.shape[0], -1))


def test_a_model_that_cannot_take_channels_last_is_scored_with_the_plain_kernels(caplog):
    torch.manual_seed(0)
    net = _Viewing().eval()
    cands = {b: {"teacher": net.get_submodule(b), "conv": nn.Conv2d(4, 4, 1), "identity": nn.Identity()}
             for b in ("blocks.0", "blocks.1")}
    wrapped = {b: {n: Candidate(b, n, n, m, 0, 0) for n, m in c.items()} for b, c in cands.items()}
    x, y = torch.randn(10, 2, 8, 8), torch.randint(0, 3, (10,))
    with caplog.at_level("INFO", logger="lana"):
        fast, _ = score_candidates(net, wrapped, x, y, batch_size=8)
    assert "scoring with the plain ones" in caplog.text
    plain, _ = score_candidates(net, wrapped, x, y, batch_size=8, plain=True)
    for key in plain:
        assert fast[key]["kl"] == pytest.approx(plain[key]["kl"], rel=1e-4, abs=1e-6)
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_in_context_profiles_time_candidates_alone_only_briefly():
    cfg = tiny_config().latency.model_copy(update={"threads": 1, "clock": "process", "max_repeats": 30, "repeats": 20})
    teacher = demo_resnet(in_chans=1, widths=[4, 8], depth=1).eval()
    specs = discover_blocks(teacher, (1, 1, 8, 8))
    cands = build_all_candidates(specs, tiny_config(ops={"include": ["identity", "conv_k1"]}).ops)
    record = profile_latency(teacher, specs, cands, (1, 8, 8), cfg)
    assert record["isolated_timing"] == "ordering" and record["method"] == "context"
    assert all(row["isolated_repeats"] == ORDERING_KNOBS["repeats"] for row in record["candidates"])
    assert {(r["block"], r["candidate"]) for r in record["candidates"]} == {(b, n) for b, c in cands.items() for n in c}
    precise = profile_latency(teacher, specs, cands, (1, 8, 8), cfg, precise_isolated=True)
    assert precise["isolated_timing"] == "precise"
    assert all(row["isolated_repeats"] >= cfg.repeats for row in precise["candidates"])


class _Viewer(nn.Module):
    """A 1-channel classifier with a depthwise convolution that flattens with ``view``
    (which a channels_last feature map cannot take) when ``view`` is set."""

    def __init__(self, view: bool) -> None:
        super().__init__()
        self.view = view
        self.stem, self.dw = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.bn(self.dw(torch.relu(self.stem(x))))
        return self.head(x.view(len(x), -1) if self.view else x.flatten(1))


@pytest.mark.parametrize("view", [False, True], ids=["flatten", "view"])
def test_evaluation_on_a_cpu_gives_the_plain_figures_and_leaves_the_weights_as_they_were(view, caplog):
    from lana.device import Placement
    from lana.distill.inference import channels_last_weights
    from lana.distill.validation import evaluate, evaluate_stream

    torch.manual_seed(0)
    model, teacher = _Viewer(view).eval(), _Viewer(False).eval()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    strides = {name: t.stride() for name, t in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
        expected = (nn.functional.cross_entropy(logits, y).item(), 100.0 * (logits.argmax(1) == y).float().mean().item())
    with channels_last_weights([model]) as layout:  # what evaluation changes: every 4-D tensor's strides (depthwise too)
        assert {id(t) for t, _ in layout.changed} == {id(model.stem.weight), id(model.dw.weight)}
    caplog.set_level("INFO", logger="lana")
    loss, top1 = evaluate(model, x, y, batch_size=16)
    assert loss == pytest.approx(expected[0], rel=1e-5) and top1 == pytest.approx(expected[1])
    figures = evaluate_stream({"m": model}, [(x[:16], y[:16]), (x[16:], y[16:])], teacher, Placement(torch.device("cpu")))
    assert figures["m"]["acc"] == pytest.approx(expected[1]) and figures["m"]["images"] == 40
    assert {name: t.stride() for name, t in model.state_dict().items()} == strides  # put back, exactly
    assert ("failed on channels_last" in caplog.text) == view  # a view: evaluated plainly, and said

"""Swap-one scores: non-positive KL by default, disjoint from the choice images, and the
replayed prefix gives the same scores as running the whole network for every candidate."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lana.config import ScoreConfig
from lana.distill.candidates import Candidate
from lana.distill.score import score_candidates
from lana.distill.validation import split_validation
from lana.errors import DataError


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.conv(x))


class _Net(nn.Module):
    """A stem with a shared in-place ReLU (called before and after the blocks), a long skip
    that crosses block 1, and a head: what replaying a prefix must get right."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(_Block(8), _Block(8), _Block(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        skip = x
        x = self.blocks(x) + skip
        return self.head(self.relu(x).mean((2, 3)))


def _candidates(net: nn.Module) -> dict[str, dict[str, Candidate]]:
    torch.manual_seed(1)
    out = {}
    for name in ("blocks.0", "blocks.1", "blocks.2"):
        ops = {"teacher": net.get_submodule(name), "identity": nn.Identity(), "conv": nn.Conv2d(8, 8, 1), "block": _Block(8).eval()}
        out[name] = {k: Candidate(name, k, k, m, 0, 0) for k, m in ops.items()}
    return out


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_kl_score_is_zero_for_keep_teacher_and_never_above_it():
    net = _net()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 5, (40,))
    scores, base = score_candidates(net, _candidates(net), x, y, batch_size=16)
    assert base["score_kind"] == "labels" and base["score_images"] == 40
    for (block, name), row in scores.items():
        assert row["kl"] >= 0
        if name == "teacher":
            assert row["kl"] == 0 and row["val_loss_delta"] == 0 and row["acc_delta"] == 0
        else:
            assert row["kl"] > 1e-6  # a real change of the outputs is seen
    # without labels the loss is the KL itself and the top-1 is agreement with the teacher
    free, base = score_candidates(net, _candidates(net), x, None, batch_size=16)
    assert base["score_kind"] == "teacher_agreement" and base["val_acc"] == 100.0
    for row in free.values():
        assert row["val_loss"] == pytest.approx(row["kl"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("max_stack", [64, 16])  # candidates stacked (falls back: a skip crosses the block) / one at a time
def test_replayed_prefix_scores_like_the_whole_network(max_stack):
    net = _net()
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 5, (24,))
    before = [t.clone() for t in net.state_dict().values()]
    scores, _ = score_candidates(net, _candidates(net), x, y, batch_size=16, max_stack=max_stack)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))  # the teacher is restored
    assert isinstance(net.relu, nn.ReLU) and isinstance(net.stem, nn.Conv2d)
    for (block, name), row in scores.items():  # reference: the candidate swapped in, whole network run
        module = _candidates(net)[block][name].module
        original = net.get_submodule(block)
        net.blocks[int(block[-1])] = module
        with torch.no_grad():
            out, ref = net(x), None
        net.blocks[int(block[-1])] = original
        with torch.no_grad():
            ref = net(x)
        kl = (ref.log_softmax(-1).exp() * (ref.log_softmax(-1) - out.log_softmax(-1))).sum(-1).mean().item()
        assert row["kl"] == pytest.approx(max(kl, 0.0), rel=1e-4, abs=1e-6)
        acc = 100.0 * (out.argmax(-1) == y).float().mean().item()
        assert row["val_acc"] == pytest.approx(acc)


def test_scoring_and_choice_images_are_disjoint():
    data = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10, dtype=torch.long))
    scored, chosen = split_validation(data, ScoreConfig(holdout=0.3))
    assert len(scored) == 7 and len(chosen) == 3 and not set(scored.indices) & set(chosen.indices)
    scored, chosen = split_validation(data, ScoreConfig(val_images=2))
    assert len(scored) == 2 and len(chosen) == 2 and not set(scored.indices) & set(chosen.indices)
    assert split_validation(data, ScoreConfig(val_images=2))[0].indices == scored.indices  # the same draw every call
    with pytest.raises(DataError, match="at least 2"):
        split_validation(torch.utils.data.Subset(data, [0]), ScoreConfig())


def test_a_class_ordered_validation_dataset_is_scored_and_chosen_on_every_class():
    """An ImageFolder lists its images class by class: cutting it in that order scored the
    first classes and chose on the last. The seeded draw gives both parts every class."""
    labels = torch.arange(10).repeat_interleave(50)  # 500 images, class 0 first, class 9 last
    data = torch.utils.data.TensorDataset(torch.zeros(500, 1), labels)
    scored, chosen = split_validation(data, ScoreConfig(val_images=100))
    assert set(labels[scored.indices].tolist()) == set(range(10))
    assert set(labels[chosen.indices].tolist()) == set(range(10))
    assert not set(scored.indices) & set(chosen.indices)


def test_a_users_dataloader_is_split_into_disjoint_windows_of_its_stream():
    """A DataLoader cannot be indexed: its fixed-order stream is cut into the scoring part and
    the choice part, read with its own sampler and batch size."""
    from lana.data import DataSplits, num_images
    from lana.distill.validation import validation_tensors

    images = torch.arange(20.0).view(20, 1, 1, 1)
    data = torch.utils.data.TensorDataset(images, torch.zeros(20, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=list(range(4, 16)))  # 12 images, in order
    assert num_images(loader) == 12
    splits = DataSplits(train=loader, val=loader, test=loader, num_classes=10, channels=1, image_size=(1, 1), source="python")
    cfg = ScoreConfig(holdout=0.25, batch_size=5)
    scored, _ = validation_tensors(splits, cfg, 0)
    chosen, _ = validation_tensors(splits, cfg, 1)
    assert scored.flatten().tolist() == [float(i) for i in range(4, 13)]
    assert chosen.flatten().tolist() == [13.0, 14.0, 15.0]


def test_finetune_has_a_floor_of_steps_on_small_data():
    from lana.config import FinetuneConfig
    from lana.stages.finetune import finetune_epochs

    cfg = FinetuneConfig()  # one epoch, at least 200 steps
    small = finetune_epochs(cfg, 1077, 128)  # the 10-class ImageFolder: 9 steps an epoch
    assert small * 1077 / 128 >= 200
    assert finetune_epochs(cfg, 55000, 128) == 1.0  # a large split keeps its epoch (430 steps)
    assert finetune_epochs(FinetuneConfig(min_steps=0, epochs=0.5), 1077, 128) == 0.5


def test_top_k_selections_are_compared_on_held_out_images_and_the_best_kept(trained_run):
    import json

    from lana.run.context import prepare
    from lana.stages.choose import measure_selections, solve_and_choose

    run, config, _ = trained_run
    config = config.model_copy(update={"solve": config.solve.model_copy(update={"top_k": 3})})
    ctx = prepare(config, run, writes=False)
    record = solve_and_choose(ctx, "70%")
    assert len(record["top_k"]) == 3 and len({json.dumps(a["choice"], sort_keys=True) for a in record["top_k"]}) == 3
    kls = [a["choice_kl"] for a in record["top_k"]]
    assert record["kept"] == kls.index(min(kls)) and record["choice"] == record["top_k"][record["kept"]]["choice"]
    assert json.loads(run.file("selection.json").read_text())["choice"] == record["choice"]
    assert record["top_k"][0]["objective"] >= record["top_k"][2]["objective"]  # the solver's order is kept in the record
    keep_all = measure_selections(ctx, [{"choice": {}}])[0]  # the teacher itself: nothing changes
    assert keep_all["choice_kl"] == 0 and keep_all["choice_images"] == 100  # half of the 200 validation images

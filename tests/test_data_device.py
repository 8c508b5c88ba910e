"""The user's data as given (DataLoader, batch_fn, numpy and dict labels, streaming evaluation)
and one compute-device policy for every stage (checked on cpu, and on cuda where there is one)."""
from __future__ import annotations

import logging
import weakref

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_api import BLOCKS, FAST, Net
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

import lana
from lana.config import build_config
from lana.data import (
    deterministic_train,
    iterate,
    load_batch_fn,
    take_tensors,
    user_splits,
)
from lana.device import Placement, distill_device_name, module_device, resolve_compute_device
from lana.distill.distributed import Dist, GlobalBatches
from lana.distill.score import score_candidates
from lana.distill.validation import evaluate, evaluate_stream
from lana.distill.train import distil_into, fit, label_loss
from lana.errors import DeviceError
from lana.run.context import prepare
from lana.run.folder import RunFolder
from lana.teacher.demo_net import demo_resnet

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here"))]


def _images(n: int = 100, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen))


class DictImages(Dataset):
    """Hugging Face style items: ``{"img": tensor, "cls": numpy int}``."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        self.data = _images(n, seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"img": x, "cls": np.int64(y)}


def dict_batch(batch):
    """A batch_fn importable by name (recorded as data.batch_fn)."""
    return batch["img"], batch["cls"]


# -- the user's DataLoader as given ------------------------------------------------------
def test_two_disjoint_samplers_give_two_different_splits():
    """The issue's case: one 100-image set, two loaders with disjoint SubsetRandomSamplers."""
    data = _images(100)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    train = DataLoader(data, batch_size=16, sampler=SubsetRandomSampler(order[:70]))
    val = DataLoader(data, batch_size=10, sampler=SubsetRandomSampler(order[70:]))
    splits = user_splits(train, val)
    assert splits.train is train and splits.val is val  # kept as given, not replaced by .dataset
    seen = {}
    for name in ("train", "val"):
        batches = list(iterate(getattr(splits, name), 999))  # lana's batch size does not apply to a loader
        seen[name] = {tuple(x.flatten()[:8].tolist()) for xs, _ in batches for x in xs}
        assert [len(x) for x, _ in batches][0] == getattr(splits, name).batch_size
    assert len(seen["train"]) == 70 and len(seen["val"]) == 30 and not seen["train"] & seen["val"]
    x, _ = take_tensors(splits.val)
    assert len(x) == 30


def test_distillation_iterates_the_loader_with_its_batch_size_and_resumes():
    data = _images(100)
    loader = DataLoader(data, batch_size=10, sampler=SubsetRandomSampler(list(range(50)), generator=torch.Generator().manual_seed(3)))
    batches = GlobalBatches(loader, 32, seed=0, dist=Dist(), workers=0)
    assert batches.per_epoch == 5
    full = list(batches.images(range(12)))  # 2.4 epochs
    assert len(full) == 12 and all(len(x) == 10 for x in full) and batches.global_size(7) == 10
    assert all(x.shape[1:] == (1, 16, 16) for x in full)
    # each epoch covers the sampler's 50 images once
    first_epoch = torch.cat(full[:5])
    assert len({tuple(x.flatten()[:8].tolist()) for x in first_epoch}) == 50
    # resuming at step 7 reads and drops the 2 batches of that epoch already done: with a
    # loader whose order is fixed, the resumed steps are exactly the uninterrupted ones
    steady = DataLoader(data, batch_size=10, sampler=list(range(50)))
    whole = list(GlobalBatches(steady, 10, 0, Dist(), 0).images(range(12)))
    resumed = list(GlobalBatches(steady, 10, 0, Dist(), 0).images(range(7, 12)))
    assert len(resumed) == 5 and all(torch.equal(a, b) for a, b in zip(resumed, whole[7:]))
    # two ranks split each global batch
    halves = [list(GlobalBatches(DataLoader(data, batch_size=10), 10, 0, Dist(rank=r, world=2), 0).images(range(2))) for r in (0, 1)]
    assert all(len(h[0]) == 5 for h in halves)
    assert torch.equal(torch.cat([halves[0][0], halves[1][0]]), data.tensors[0][:10])


def test_dict_batches_through_batch_fn_and_numpy_labels():
    loader = DataLoader(DictImages(), batch_size=8)
    with pytest.raises(lana.DataError, match=r"a dict batch with keys \['cls', 'img'\] has none of"):
        user_splits(loader, loader)
    splits = user_splits(loader, loader, batch_fn=dict_batch)
    assert splits.labelled and splits.input_shape == (1, 16, 16)
    x, y = take_tensors(splits.train, 20, batch_fn=dict_batch)
    assert x.shape == (20, 1, 16, 16) and y.dtype == torch.long
    assert torch.equal(y, _images(64).tensors[1][:20])
    # the Hugging Face convention needs no batch_fn; labels as a numpy array or Python ints work
    hf = [{"pixel_values": torch.rand(4, 1, 16, 16), "labels": np.array([1, 2, 3, 4])}]
    assert next(iterate(hf_loader := DataLoader(hf, batch_size=None), 4))[1].tolist() == [1, 2, 3, 4]
    assert user_splits(hf_loader, hf_loader).labelled
    py = [(torch.rand(2, 1, 16, 16), [np.int32(5), 7])]
    assert next(iterate(DataLoader(py, batch_size=None), 2))[1].tolist() == [5, 7]
    # a plain map-style dataset with numpy integer labels goes through lana's loader
    items = [(torch.rand(1, 16, 16), np.int64(i % 10)) for i in range(12)]
    assert take_tensors(_ListSet(items), 12)[1].tolist() == [i % 10 for i in range(12)]
    with pytest.raises(lana.DataError, match=r"labels are .*float.*; expected 4 integer class indices"):
        next(iterate(DataLoader([(torch.rand(4, 1, 16, 16), np.ones(4) / 2)], batch_size=None), 4))
    assert load_batch_fn("test_data_device:dict_batch") is dict_batch
    with pytest.raises(lana.ConfigError, match="cannot be imported"):
        load_batch_fn("test_data_device:nothing_here")


class _ListSet(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class LazyImages(Dataset):
    """A large split generated on demand: nothing exists until a batch is read."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        gen = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=gen), i % 10


def test_a_large_lazy_split_is_evaluated_in_bounded_memory():
    """Evaluation streams: at most a couple of batches are alive at once, whatever the split's size."""
    live, peak = [0], [0]

    def collate(items):
        batch = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(batch[0], lambda: live.__setitem__(0, live[0] - 1))
        return batch

    data = LazyImages(6000)  # 6000 × 3×32×32 floats: 74 MB if it were concatenated
    loader = DataLoader(data, batch_size=250, collate_fn=collate)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10)).eval()
    student = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)).eval()
    figures = evaluate_stream({"teacher": teacher, "student": student}, iterate(loader, 250), teacher, Placement())
    assert figures["student"]["images"] == 6000 and data.reads == 6000
    assert peak[0] <= 3, f"{peak[0]} batches alive at once"
    assert figures["teacher"]["agreement"] == 100.0 and 0 <= figures["student"]["acc"] <= 100
    # the same figures as the in-memory evaluation on a slice
    x, y = take_tensors(LazyImages(500), 500)
    head = evaluate_stream({"student": student}, iterate(LazyImages(500), 100), teacher, Placement())["student"]
    assert head["loss"] == pytest.approx(evaluate(student, x, y)[0], rel=1e-5)
    # a limited read (export's reload check) reads only what it keeps
    lazy = LazyImages(10**7)
    assert len(take_tensors(lazy, 40, batch_size=16)[0]) == 40 and lazy.reads == 40


# -- when the teacher's logits may be cached -------------------------------------------
class Augmented(Dataset):
    def __init__(self, data):
        self.data, self.transform = data, (lambda x: x.flip(-1) if torch.rand(()) < 0.5 else x)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return self.transform(x), y


def test_logits_are_cached_only_for_deterministic_data(caplog):
    data = _images(64)
    assert deterministic_train(data, None)[0] is True
    assert deterministic_train(Augmented(data), None) == (False, deterministic_train(Augmented(data), None)[1])
    assert deterministic_train(Augmented(data), True)[0] is True  # the user said so
    assert deterministic_train(DataLoader(data, batch_size=8), True)[0] is False  # a loader is never indexed
    cfg = build_config({"finetune": {"epochs": 2}}).finetune
    for train, cached in ((data, True), (DataLoader(data, batch_size=16, shuffle=True), False), (Augmented(data), False)):
        splits = user_splits(train, data)
        splits.num_classes = 10
        torch.manual_seed(0)
        teacher, student = Net(8, 1), Net(8, 1)
        calls = []
        teacher.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        with caplog.at_level(logging.INFO, logger="lana"):
            caplog.clear()
            distil_into(student, teacher, splits, cfg, batch_size=16, seed=0)
        # once over the data, or beside the student every step (and once on two images: the channels_last probe)
        assert len(calls) == (4 if cached else 8 + 1), train
        assert ("cached once" if cached else "computed beside the student") in caplog.text


# -- one device policy --------------------------------------------------------------------
def test_device_settings_and_precedence(monkeypatch):
    config = build_config({})
    assert config.device == "auto" and config.distill.device is None
    assert distill_device_name(config) == ("auto", "device")
    assert distill_device_name(build_config({"device": "cpu", "distill": {"device": "cuda:1"}})) == ("cuda:1", "distill.device")
    assert resolve_compute_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_compute_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match=r"device 'cuda' asked for but CUDA is not available here; set device: auto or cpu"):
            Placement.for_config(build_config({"device": "cuda"}))
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_compute_device("gpu0")
    cpu = Placement(torch.device("cpu"))
    assert cpu.amp_dtype is None and not cpu.pin_memory and cpu.describe() == "cpu"
    x = torch.rand(2, 3, 4, 4)
    assert cpu.batch(x) is x  # nothing to move on the CPU


class Recorder(nn.Module):
    """Wraps a network and records the device of every input and parameter it sees."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, set()

    def forward(self, x):
        self.seen |= {str(x.device), *(str(p.device) for p in self.net.parameters())}
        return self.net(x)


@pytest.mark.parametrize("device", DEVICES)
def test_every_stage_places_model_and_batches_on_the_device(device, one_thread):
    """Training (fit, distil_into), scoring and streaming evaluation run where the placement says."""
    place = Placement(torch.device(device))
    data = _images(48)
    splits = user_splits(DataLoader(data, batch_size=16), data)
    splits.num_classes = 10
    torch.manual_seed(0)
    teacher, student = Recorder(Net(8, 1)).eval(), Recorder(Net(8, 1))
    fit(student, splits, label_loss, 1, 1e-3, 0.0, 16, 0, "t", place=place)
    assert {d.split(":")[0] for d in student.seen} == {device} and module_device(student).type == device
    student.seen.clear()
    distil_into(student, teacher, splits, build_config({"finetune": {"epochs": 2}}).finetune, 16, 0, place=place)
    figures = evaluate_stream({"student": student}, iterate(splits.val, 16), teacher, place)
    assert figures["student"]["images"] == 48
    x, y = take_tensors(splits.val, 32)
    score_candidates(teacher.net, {"units.0": {}}, x, y, batch_size=16)  # the teacher's own figures, on its device
    for seen in (student.seen, teacher.seen):
        assert seen and {d.split(":")[0] for d in seen} == {device}, seen


@pytest.mark.parametrize("device", DEVICES)
def test_accelerate_on_the_device_with_a_loader_and_dict_batches(tmp_path, one_thread, device):
    """A DataLoader of dict batches with numpy labels, a batch_fn, and the configured compute
    device: the stages run there (finetune.json and report.json say where), and the student
    comes back on the teacher's device."""
    torch.manual_seed(0)
    teacher = Net().eval().to(device)  # a teacher already on the device is accepted
    train = DataLoader(DictImages(96), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(DictImages(48, 1), batch_size=24)
    result = lana.accelerate(teacher, train, val, budget="60%", run_dir=tmp_path / "run", device=device, config=FAST,
                             blocks=BLOCKS, batch_fn=dict_batch)
    assert module_device(result.student).type == device and module_device(teacher).type == device
    x = torch.rand(4, 1, 16, 16, device=device)
    assert result.student(x).shape == (4, 10)
    report = result.report
    assert report["compute_device"].split(":")[0] == device and report["score_kind"] == "labels"
    assert report["test_images"] == 48
    finetune = lana.read_report(result.run)  # report.json
    assert finetune["student_top1"] is not None
    run = result.run
    assert run.config.data.batch_fn == "test_data_device:dict_batch" and run.config.device == device
    assert run.config.data.batch_size == 16
    # reopened from Python: data.batch_fn is found again from config.yaml
    again = lana.open_run(tmp_path / "run", teacher=teacher, train=train, val=val)
    assert again.splits.batch_fn is dict_batch and again.splits.labelled


@pytest.mark.parametrize("device", DEVICES)
def test_a_teacher_is_never_refused_for_its_device(tmp_path, device):
    """The issue: a teacher on another device than the data was refused with a DataError
    blaming the data. Batches now go to the teacher's device. The data is always on the CPU:
    with CUDA the teacher is not (the issue's case); without, the same path on one device."""
    splits = user_splits(_images(8), _images(8))
    net = Net().to(device)
    place = Placement(module_device(net))
    x = take_tensors(splits.train, 1)[0]
    assert x.device.type == "cpu" and net(place.batch(x)).shape == (1, 10)
    run = lana.new_run(net, _images(8), _images(8), run_dir=tmp_path / "r", blocks=BLOCKS, device=device)
    assert run.splits.num_classes == 10 and run.home.type == device


def test_config_batch_fn_and_deterministic_reach_lana_own_datasets(tmp_path):
    """``data.batch_fn`` and ``data.deterministic`` apply to the CLI's datasets too."""
    config = tiny_config(data={"batch_fn": "test_data_device:tuple_batch", "deterministic": False})
    ctx = prepare(config, RunFolder(tmp_path / "r"), writes=False, teacher=demo_resnet(num_classes=10, in_chans=1, widths=[8, 16], depth=1))
    assert ctx.splits.batch_fn is tuple_batch and ctx.splits.deterministic is False
    x, y = take_tensors(ctx.splits.val, 10, batch_fn=ctx.splits.batch_fn)
    assert x.shape == (10, 1, 16, 16) and (y == 0).all()  # the batch_fn's labels
    with pytest.raises(lana.ConfigError, match="not 'pkg.module:function'"):
        prepare(tiny_config(data={"batch_fn": "no_colon"}), RunFolder(tmp_path / "r"), writes=False, teacher=ctx.teacher)


def tuple_batch(batch):
    """A batch_fn that relabels everything 0 (so the test sees it was used)."""
    return batch[0], torch.zeros(len(batch[0]), dtype=torch.long)

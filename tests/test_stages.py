"""Config, data, distillation, scoring and latency: each stage on tiny seeded data."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import tiny_config

from lana.config import DataConfig, build_config, load_config
from lana.data import load_data, read_idx
from lana.errors import ConfigError, DataError, DeviceError, RunFolderError
from lana.latency.measure import resolve_device, time_module
from lana.teacher.demo_net import demo_resnet


# -- config ------------------------------------------------------------------------------
def test_config_defaults_and_overrides():
    cfg = build_config({"distill": {"epochs": 2}}, ["distill.epochs=0.5", "latency.device=cpu"])
    assert cfg.distill.epochs == 0.5 and cfg.latency.batch_size == 64


def test_config_rejects_unknown_key_with_its_path():
    with pytest.raises(ConfigError, match="unknown key 'distill.epoch'"):
        build_config({"distill": {"epoch": 1}})


def test_config_rejects_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config({}, ["distill.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


# -- data --------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(root, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_fashion_mnist_idx_files_load_with_splits(tmp_path):
    _fake_fashion(tmp_path)
    splits = load_data(DataConfig(root=str(tmp_path), val_size=10))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes <= 10
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32


def test_missing_empty_or_corrupt_data_gives_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not found under"):
        load_data(DataConfig(root=str(tmp_path)))
    _fake_fashion(tmp_path)
    with pytest.raises(DataError, match="leaves no training images"):
        load_data(DataConfig(root=str(tmp_path), val_size=1000))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable idx file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")


def test_image_folder_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(kind="imagefolder", root=str(tmp_path), image_size=16, channels=3, mean=[0.5] * 3, std=[0.25] * 3, val_size=2)
    splits = load_data(cfg)
    assert splits.num_classes == 2 and len(splits.train) == 10 and len(splits.test) == 4
    assert splits.train[0][0].shape == (3, 16, 16)
    with pytest.raises(DataError, match="ImageFolder layout"):
        load_data(DataConfig(kind="imagefolder", root=str(tmp_path / "nope")))


def test_digits_fallback_is_real_and_resized():
    splits = load_data(DataConfig(kind="digits", image_size=28, val_size=100, mean=[0.3], std=[0.42]))
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


# -- distillation, scoring, latency --------------------------------------------------------
def test_distillation_loss_falls(tmp_path):
    from lana.distill.candidates import build_all_candidates
    from lana.distill.core import distill_candidates
    from lana.run.folder import RunFolder
    from lana.teacher.blocks import discover_blocks

    torch.manual_seed(0)
    config = tiny_config(distill={"max_steps": 30, "epochs": 3})
    splits = load_data(config.data)
    teacher = demo_resnet(widths=[8, 16], depth=1).eval()
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    cands = build_all_candidates(specs, config.ops)
    early = distill_candidates(
        teacher, specs, cands, splits, config.model_copy(update={"distill": config.distill.model_copy(update={"max_steps": 1})}),
        RunFolder(tmp_path / "a"),
    )
    late = distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "b"))
    trained = [k for k, v in late.items() if v["status"] == "ok"]
    assert len(trained) >= 10
    falls = sum(late[k]["distill_loss"] < early[k]["distill_loss"] for k in trained)
    assert falls >= 0.8 * len(trained), (early, late)
    assert (tmp_path / "b" / "weights").is_dir()


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_short_training_runs_and_moves_the_weights(steps):
    """A fine-tune of a few steps (tiny data, fractional epochs) must not crash the LR schedule."""
    from lana.distill.train import fit, label_loss

    config = tiny_config()
    splits = load_data(config.data)
    torch.manual_seed(0)
    model = demo_resnet(widths=[4, 8], depth=1)
    before = [p.detach().clone() for p in model.parameters()]
    epochs = steps * 32 / len(splits.train)
    fit(model, splits, label_loss, epochs, 1e-2, 0.0, 32, 0, "short")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


class _ViewedHead(torch.nn.Module):
    """Flattens with ``view``: fails on a channels_last tensor, as some users' models do."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.Linear(channels, 10)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 2)
        n, c = x.shape[:2]
        return self.fc(x.view(n, c * 4).view(n, c, 4).mean(-1))


@pytest.mark.parametrize("viewed", [False, True])
def test_training_on_a_cpu_uses_channels_last_where_the_model_takes_it(viewed, caplog):
    """fit trains convolutions on channels_last batches on a CPU (faster); a model that cannot
    take one still trains, on contiguous batches; either way its weights leave contiguous."""
    from lana.device import Placement
    from lana.distill.train import channels_last_trains, fit, label_loss

    config = tiny_config(data={"kind": "synthetic", "channels": 3, "image_size": 8, "val_size": 20, "batch_size": 16,
                               "mean": [0.5] * 3, "std": [0.5] * 3})
    splits = load_data(config.data)
    torch.manual_seed(0)
    model = _ViewedHead(6) if viewed else torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1),
                                                                torch.nn.Flatten(), torch.nn.Linear(6, 10))
    batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    assert channels_last_trains(model, label_loss, batch, Placement(torch.device("cpu"))) is not viewed
    before = [p.detach().clone() for p in model.parameters()]
    with caplog.at_level("INFO", logger="lana"):
        fit(model, splits, label_loss, 1.0, 1e-2, 0.0, 16, 0, "cl")
    assert ("failed on a channels_last one" in caplog.text) is viewed
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.is_contiguous() for p in model.parameters()) and not model.training


def test_finetune_with_cached_teacher_logits_matches_running_the_teacher():
    """Caching the teacher's logits once must train the student exactly as running it per step."""
    from lana.config import FinetuneConfig
    from lana.distill.inference import channels_last_trains_safely
    from lana.distill.train import TeacherLogits, distil_into, distillation_loss, fit

    config = tiny_config()
    splits = load_data(config.data)
    torch.manual_seed(0)
    teacher = demo_resnet(widths=[8, 16], depth=1).eval()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cfg = FinetuneConfig(epochs=2, lr=1e-2)
    students = []
    for cached in (False, True):
        torch.manual_seed(1)
        student = demo_resnet(widths=[4, 8], depth=1)
        calls.clear()
        if cached:
            loss = distil_into(student, teacher, splits, cfg, batch_size=64, seed=0)
        else:
            loss = fit(student, splits, distillation_loss(teacher, cfg.temperature, cfg.alpha), cfg.epochs, cfg.lr,
                       cfg.weight_decay, 64, 0, "plain")
        students.append((student, loss, len(calls)))
    (plain, plain_loss, plain_calls), (cached, cached_loss, cached_calls) = students
    steps, batches = -(-2 * len(splits.train) // 64), -(-len(splits.train) // 64)
    # the teacher ran over the data once, not per step (plain: once per step, and once on two images
    # to see whether it takes channels_last batches, where the student may train on them at all)
    probe = int(channels_last_trains_safely(plain))
    assert plain_calls == steps + probe and cached_calls == batches < steps
    assert cached_loss == pytest.approx(plain_loss, rel=1e-4)
    for a, b in zip(plain.state_dict().values(), cached.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    item = TeacherLogits(teacher, splits.train, 64)[3]
    assert len(item) == 3 and item[2].shape == (splits.num_classes,)
    assert TeacherLogits.fits(splits.train, 10) and not TeacherLogits.fits(range(10**8), 1000)


def test_table_scores_and_latency(trained_run):
    run, config, table = trained_run
    blocks = table["block"].unique()
    assert len(blocks) == 2
    for block in blocks:
        rows = table[table["block"] == block].set_index("candidate")
        assert rows.loc["teacher", "acc_delta"] == 0 and rows.loc["teacher", "score"] == 0
        assert len(rows) >= 6 and (rows["latency_ms"] > 0).all() and (rows["params"] >= 0).all()
    assert run.file("candidates.csv").is_file() and run.file("fingerprint.json").is_file()
    assert table["score"].notna().sum() >= len(table) - 2


def test_stacked_scoring_matches_one_at_a_time(trained_run):
    from lana.data import take_tensors
    from lana.distill.candidates import build_all_candidates
    from lana.distill.score import score_candidates
    from lana.teacher.blocks import discover_blocks
    from lana.teacher.load import load_teacher

    run, config, _ = trained_run
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    cands = build_all_candidates(specs[:1], config.ops)
    x, y = take_tensors(splits.val, 64)
    stacked, _ = score_candidates(teacher, cands, x, y, batch_size=32)
    single, _ = score_candidates(teacher, cands, x, y, batch_size=32, max_stack=32)
    for key in stacked:
        assert stacked[key]["val_loss"] == pytest.approx(single[key]["val_loss"], rel=1e-4, abs=1e-5)
        assert stacked[key]["val_acc"] == pytest.approx(single[key]["val_acc"])


def test_rerun_reuses_results_and_refuses_another_teacher(trained_run, tmp_path):
    import shutil

    from lana.stages.distill import distill_stage

    from lana.run.folder import RunFolder, read_json, write_json

    run, config, table = trained_run
    first = read_json(run.file("distill_timing.json"))
    assert first["distill"] > 0 and first["distill_cpu"] > 0 and {"score_cpu", "latency_cpu"} <= set(first)
    again = distill_stage(config, run)
    assert again[["block", "candidate", "score"]].equals(table[["block", "candidate", "score"]])
    # parts reused from their files add nothing to what the benchmarks read as the stage's cost
    assert read_json(run.file("distill_timing.json")) == first
    # a part done again from the start replaces its seconds; the others keep theirs
    copy = RunFolder(shutil.copytree(run.path, tmp_path / "copy"))
    write_json(copy.file("distill_timing.json"), {k: 1e6 for k in first})
    copy.file("latency.json").unlink()
    distill_stage(config, copy)
    redone = read_json(copy.file("distill_timing.json"))
    assert 0 < redone["latency"] < 1e5 and redone["distill"] == redone["score"] == 1e6
    other = config.model_copy(update={"teacher": config.teacher.model_copy(update={"checkpoint": "random"})})
    with pytest.raises(RunFolderError, match="another teacher"):
        distill_stage(other, run)


def test_latency_timing_and_missing_cuda():
    cfg = tiny_config().latency
    timing = time_module(torch.nn.Conv2d(4, 4, 3, padding=1), (4, 8, 8), cfg)
    assert timing.median_ms > 0 and cfg.repeats <= timing.repeats <= 8 * cfg.repeats  # repeats is the minimum
    scripted = time_module(torch.nn.Conv2d(4, 4, 3, padding=1), (4, 8, 8), cfg.model_copy(update={"runtime": "torchscript"}))
    assert scripted.median_ms > 0
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu")

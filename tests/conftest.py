"""Shared fixtures: a tiny seeded run on real data (scikit-learn's digits) that every
pipeline test can reuse, so the whole suite stays within a few minutes on 2 CPU cores."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from lana.config import LanaConfig, build_config


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one worker per core) each worker computes on one
    thread: two workers × two threads on two cores stall in OpenMP. Tests that need more set it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the lana processes tests start


class ResidualUnit(nn.Module):
    """A residual unit of the tests' own (no timm/torchvision class name lana knows)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


TINY_OPS = ["identity", "conv_k1", "conv_k3", "mbconv_k3_e1", "mbconv_k3_e3_se", "fused_mbconv_k3_e1", "pruned_keep50", "lowrank_r50"]


def tiny_tree(**sections) -> dict:
    """A config tree for a 2-stage demo ResNet on 16×16 digits, a few steps per stage."""
    tree = {
        "name": "tiny",
        # untrained on purpose (tests that need a trained one set teacher.checkpoint)
        "teacher": {"checkpoint": "random", "kwargs": {"num_classes": 10, "in_chans": 1, "widths": [8, 16], "depth": 1}},
        "data": {"kind": "digits", "image_size": 16, "val_size": 200, "train_limit": 400, "mean": [0.3], "std": [0.42], "batch_size": 32},
        "ops": {"include": TINY_OPS},
        "distill": {"epochs": 1, "max_steps": 12},
        "score": {"val_images": 200},
        "latency": {"batch_size": 4, "warmup": 1, "repeats": 3, "threads": 1, "time_cap_s": 0.5},
        "finetune": {"epochs": 0.5, "min_steps": 0},
        "teacher_training": {"epochs": 2},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def tiny_config(**sections) -> LanaConfig:
    """The validated tiny config."""
    return build_config(tiny_tree(**sections))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run folder where the tiny teacher was trained and distil/score/latency ran once."""
    from lana.run.folder import RunFolder
    from lana.stages.demo import train_teacher
    from lana.stages.distill import distill_stage

    torch.manual_seed(0)
    run = RunFolder(tmp_path_factory.mktemp("run") / "tiny")
    run.path.mkdir(parents=True)
    config = tiny_config(teacher={"checkpoint": str(run.file("teacher.pt"))})
    train_teacher(config, run)
    table = distill_stage(config, run)
    return run, config, table


@pytest.fixture
def one_thread():
    """Two shared cores: one thread avoids OpenMP oversubscription stalls (and is faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(args, monkeypatch, capsys) -> tuple[int, str]:
    """Run ``lana ARGS`` through ``lana.cli.app.main``; return its exit code and stderr."""
    from lana.cli import app as cli

    monkeypatch.setattr("sys.argv", ["lana", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def quality_benchmark():
    """``benchmarks.quality`` itself: a mode a test adds to its ``MODES`` is seen by ``benchmarks.quality_run`` too."""
    import importlib

    return importlib.import_module("benchmarks.quality")

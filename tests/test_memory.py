"""distill.max_memory bounds the whole process: what is held comes off, freed memory goes back."""
from __future__ import annotations

import gc
import tempfile
import weakref

import pytest
import torch
from conftest import tiny_config

from lana.config import DistillConfig
from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.distill.core import distill_candidates
from lana.errors import ConfigError
from lana.run.folder import RunFolder
from lana.run.memory import OnTop, group_budget, memory_limit, memory_limits, release_memory, resident_bytes
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

CPU = torch.device("cpu")


def test_sizes_auto_and_on_top_are_read():
    assert memory_limits(DistillConfig(max_memory="8GB")) == (8 * 2**30, "auto")
    limit, _ = memory_limits(DistillConfig(max_memory="+6MB", feature_cache="none"))
    assert isinstance(limit, OnTop) and limit == 6 * 2**20
    assert memory_limits(DistillConfig(max_memory="none"))[0] is None


def test_a_size_bounds_the_whole_process():
    """A given size pays for what the process already holds; +SIZE is exactly SIZE for the groups."""
    held = resident_bytes()
    assert 0 < group_budget(held + 2**30, CPU) <= 2**30
    assert group_budget(OnTop(6 * 2**20), CPU) == 6 * 2**20
    with pytest.raises(ConfigError, match="already holds") as exc:
        group_budget(held // 2, CPU)
    assert "\n" not in str(exc.value)


def test_auto_leaves_half_of_the_available_memory_to_the_machine():
    with open("/proc/meminfo") as handle:
        available = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable"))
    limit = memory_limit("auto", CPU)
    # what the process holds plus half of what is available (both move a little between reads)
    assert abs(limit - (resident_bytes() + available // 2)) < 0.05 * available + 64 * 2**20


def test_release_memory_gives_freed_heap_back():
    """Freed small blocks stay in glibc's heap (and in RSS) until trimmed."""
    blocks = [torch.ones(16_000) for _ in range(4000)]  # 64 KB each, under the mmap threshold: heap memory
    keep = blocks[-1]  # pins the top of the heap: a plain free cannot shrink it
    del blocks
    before = resident_bytes()
    release_memory(CPU)
    assert before - resident_bytes() > 100 * 2**20
    assert keep.sum() == 16_000


def test_distilled_candidates_keep_no_gradients(monkeypatch):
    """A finished group's modules go (with their gradients, 4 bytes per weight); rebuilt, they have none."""
    from lana.distill.candidates import Candidate

    config = tiny_config(ops={"include": ["conv_k1", "mbconv_k3_e1"]}, distill={"max_steps": 1})
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    candidates = build_all_candidates(specs, config.ops)
    trained = []  # weak references to every module distillation builds (and trains)
    build = Candidate.build
    monkeypatch.setattr(Candidate, "build", lambda self: trained.append(weakref.ref(module := build(self))) or module)
    with tempfile.TemporaryDirectory() as folder:
        distill_candidates(teacher, specs, candidates, splits, config, RunFolder(folder))
        assert not any(c.alive for cands in candidates.values() for c in cands.values())
        gc.collect()
        assert trained and all(ref() is None for ref in trained)  # nothing holds a trained module (or its gradients)
        monkeypatch.undo()
        params = [p for cands in candidates.values() for c in cands.values() for p in c.module.parameters()]
    assert params and all(p.grad is None for p in params)

"""Candidates built when a stage needs them: never the whole zoo held, the same start whatever the order."""
from __future__ import annotations

import gc
import shutil
import weakref

import pytest
import torch
from conftest import tiny_config

import lana.distill.candidates as candidates_module
import lana.distill.core as core_module
from lana.data import load_data
from lana.distill.candidates import (
    OneBlockAtATime,
    assemble_student,
    attach_weights,
    build_all_candidates,
    candidate_file,
    weights_file,
)
from lana.distill.core import distill_candidates
from lana.distill.score import score_candidates
from lana.errors import CheckpointError
from lana.latency.context import measure_in_context
from lana.latency.profiles import profile_latency
from lana.names import TEACHER_OP
from lana.run.folder import RunFolder, load_tensors, save_tensors
from lana.stages.distill import distill_stage
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

OPS = ["identity", "conv_k1", "conv_k3", "mbconv_k3_e1", "pruned_keep50", "lowrank_r50"]


class Tracker:
    """Wraps the builder: every built module is watched; ``peak`` is the most alive at any build."""

    def __init__(self, monkeypatch) -> None:
        self.refs: list[weakref.ref] = []
        self.peak = 0
        original = candidates_module.build_module

        def build(spec, name, seed=0):
            module = original(spec, name, seed)
            if module is not None:
                self.refs.append(weakref.ref(module))
                self.peak = max(self.peak, self.alive())
            return module

        monkeypatch.setattr(candidates_module, "build_module", build)

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.refs)

    def reset(self) -> None:
        gc.collect()
        self.peak = self.alive()


def _setup(config):
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    return teacher, specs, splits


def test_candidates_are_counted_then_dropped_and_seeded_by_block_and_op(monkeypatch):
    tracker = Tracker(monkeypatch)
    config = tiny_config(ops={"include": OPS})
    _, specs, _ = _setup(config)
    before = torch.get_rng_state()
    forward = build_all_candidates(specs, config.ops, seed=5)
    assert torch.equal(torch.get_rng_state(), before), "building moves no global random state"
    gc.collect()
    assert tracker.alive() == 0 and len(tracker.refs) == sum(len(c) for c in forward.values())
    cand = forward[specs[-1].name]["conv_k3"]
    assert cand.params > 0 and cand.macs > 0 and cand.activations > 0 and cand.trainable and not cand.alive

    torch.manual_seed(123)  # another global state, the blocks the other way round
    backward = build_all_candidates(list(reversed(specs)), config.ops, seed=5)
    other_seed = build_all_candidates(specs, config.ops, seed=6)
    for block, cands in forward.items():
        for name, cand in cands.items():
            a, b = cand.module.state_dict(), backward[block][name].module.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (block, name)
            assert (cand.params, cand.macs, cand.activations) == (backward[block][name].params, backward[block][name].macs,
                                                                  backward[block][name].activations)
            cand.release()
            assert not cand.alive
    weight = forward[specs[0].name]["conv_k3"].module.state_dict()
    other = other_seed[specs[0].name]["conv_k3"].module.state_dict()
    assert any(not torch.equal(weight[k], other[k]) for k in weight if weight[k].is_floating_point())


def test_distillation_holds_one_group_and_saves_one_file_per_candidate(monkeypatch, tmp_path):
    """The stage's own groups: never more than the largest group alive, nothing held after."""
    config = tiny_config(ops={"include": OPS}, distill={"max_steps": 2, "max_memory": "+2MB"})
    teacher, specs, splits = _setup(config)
    cands = build_all_candidates(specs, config.ops, seed=config.seed)
    planned = {}
    original_plan = core_module.plan_groups

    def plan(*args):
        assert not any(c.alive for cs in cands.values() for c in cs.values()), "planning needs no module"
        planned["groups"], peak = original_plan(*args)
        return planned["groups"], peak

    monkeypatch.setattr(core_module, "plan_groups", plan)
    tracker = Tracker(monkeypatch)
    run = RunFolder(tmp_path / "run")
    results = distill_candidates(teacher, specs, cands, splits, config, run)
    groups = planned["groups"]
    largest = max(len(g) for g in groups)
    total = sum(len(c) for c in cands.values()) - len(cands)  # keep-teacher is not distilled
    assert len(groups) >= 3 and largest < total
    assert 0 < tracker.peak <= largest, (tracker.peak, [len(g) for g in groups])
    gc.collect()
    assert tracker.alive() == 0
    for block, name in results:
        if name != TEACHER_OP:
            assert candidate_file(run.weights_dir, block, name).is_file() and cands[block][name].weights is not None
    # rebuilt, a candidate carries its distilled weights, not its initial ones
    cand = cands[specs[0].name]["conv_k3"]
    distilled = cand.module.state_dict()
    stored = load_tensors(candidate_file(run.weights_dir, specs[0].name, "conv_k3"))
    assert all(torch.equal(distilled[k], stored[k]) for k in stored)
    saved, cand.weights = cand.weights, None  # built without them: its seeded initial weights
    initial = cand.build().state_dict()
    cand.weights = saved
    assert any(not torch.equal(initial[k], stored[k]) for k in stored if stored[k].is_floating_point())


def test_scoring_and_latency_hold_one_block_at_a_time(monkeypatch, trained_run):
    run, config, _ = trained_run
    teacher, specs, splits = _setup(config)
    cands = build_all_candidates(specs, config.ops, seed=config.seed)
    attach_weights(cands, run.weights_dir)
    tracker = Tracker(monkeypatch)
    largest_block = max(len(c) for c in cands.values())
    assert largest_block < sum(len(c) for c in cands.values())
    images = torch.stack([splits.val[i][0] for i in range(16)])
    scores, _ = score_candidates(teacher, OneBlockAtATime(cands), images, None, 8)
    assert len(scores) == sum(len(c) for c in cands.values())
    assert 0 < tracker.peak <= largest_block
    gc.collect()
    assert tracker.alive() == 0
    tracker.reset()
    quick = {"context_rounds": 1, "repeats": 2, "max_repeats": 2, "time_cap_s": 0.05, "retakes": 0}
    record = profile_latency(teacher, specs, cands, splits.input_shape, config.latency.model_copy(update=quick))
    assert len(record["candidates"]) == len(scores)
    gc.collect()
    assert tracker.alive() == 0, "in-context groups release their candidates once timed"


def test_in_context_groups_build_only_their_networks(monkeypatch, trained_run):
    """Each group of networks holds the candidates of its own networks (here 2 networks a group)."""
    _, config, _ = trained_run
    teacher, specs, splits = _setup(config)
    cands = build_all_candidates(specs, config.ops, seed=config.seed)
    tracker = Tracker(monkeypatch)
    cfg = config.latency.model_copy(update={"repeats": 2, "max_repeats": 2, "time_cap_s": 0.05, "retakes": 0})
    measure_in_context(teacher, specs, cands, splits.input_shape, cfg, rounds=1, group=3)
    # the reference (keep-teacher everywhere) and two cover networks: at most 3 per block
    assert 0 < tracker.peak <= 3 * len(specs) < sum(len(c) for c in cands.values())


def test_an_older_run_folder_with_one_weights_file_per_block_still_works(trained_run, tmp_path):
    run, config, table = trained_run
    old = RunFolder(tmp_path / "old")
    shutil.copytree(run.path, old.path)
    (old.file("scores.json")).unlink()  # rescoring builds every candidate from its weights
    for block_dir in [p for p in old.weights_dir.iterdir() if p.is_dir()]:
        stored = {f.stem: load_tensors(f) for f in block_dir.glob("*.pt")}
        block = next(s for s in table["block"].unique() if candidate_file(old.weights_dir, s, "x").parent == block_dir)
        save_tensors(weights_file(old.weights_dir, block), stored)
        shutil.rmtree(block_dir)
    _, specs, _ = _setup(config)
    choice = {specs[0].name: "conv_k3"}
    student = assemble_student(load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs),
                               specs, choice, old.weights_dir)  # read from the per-block file as it is
    expected = load_tensors(candidate_file(run.weights_dir, specs[0].name, "conv_k3"))  # the distilled weights
    got = student.get_submodule(specs[0].name).state_dict()
    assert expected and set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)
    again = distill_stage(config, old)
    assert not list(old.weights_dir.glob("*.pt")), "split into one file per candidate"
    assert candidate_file(old.weights_dir, specs[0].name, "conv_k3").is_file()
    assert again[["block", "candidate", "status"]].equals(table[["block", "candidate", "status"]])
    torch.testing.assert_close(torch.tensor(again["score"].values), torch.tensor(table["score"].values), rtol=1e-4, atol=1e-6)


def test_a_missing_candidate_file_is_one_line(trained_run, tmp_path):
    run, config, _ = trained_run
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(run.path, copy.path)
    _, specs, _ = _setup(config)
    candidate_file(copy.weights_dir, specs[0].name, "conv_k1").unlink()
    cands = build_all_candidates(specs, config.ops, seed=config.seed)
    with pytest.raises(CheckpointError, match="conv_k1: not found.*--force") as info:
        attach_weights(cands, copy.weights_dir)
    assert "\n" not in str(info.value)


def test_weights_that_would_not_fit_on_the_disk_are_refused_before_distilling(monkeypatch, tmp_path):
    """The whole zoo of a big teacher writes tens of GiB: a full disk is said in one line, up front."""
    import collections

    import lana.run.folder as folder_module
    from lana.errors import RunFolderError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(folder_module.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    import lana.stages.distill as stage_module

    monkeypatch.setattr(stage_module, "distill_candidates", lambda *a, **k: pytest.fail("distillation started"))
    run = RunFolder(tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"distilled weights need about .* GiB .* free; narrow the zoo"):
        distill_stage(tiny_config(ops={"include": OPS}), run)

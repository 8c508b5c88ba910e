"""Successive halving: dominated candidates stop training and their steps are recorded; they
are still scored and offered to the solver; the cut itself follows Pareto dominance within a block."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.distill.core import distill_candidates
from lana.distill.halving import cut_dominated, cut_steps, dominated
from lana.run.folder import RunFolder
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import build_model


def test_cuts_and_dominance():
    assert cut_steps(100, 0.25) == [25, 50]
    assert cut_steps(12, 0.2) == [2, 5, 10]
    assert cut_steps(1, 0.25) == []
    entries = {"cheap_bad": (0.9, 1.0), "dear_good": (0.1, 9.0), "dear_bad": (0.5, 9.0), "tie": (0.1, 9.0), "nan": (math.nan, 1.0)}
    assert dominated(entries) == {"dear_bad"}  # equal on both is no domination; NaN is left alone


def test_a_cut_stops_dominated_trainable_candidates_only_and_opens_a_new_window():
    def record(win_sum, win_n, loss_n=0):
        return {"status": "ok", "win_sum": win_sum, "win_n": win_n, "loss_sum": 0.0, "loss_n": loss_n}

    stats = {("b1", "small"): record(0.2, 2), ("b1", "big"): record(1.0, 2), ("b1", "identity"): record(3.0, 2),
             ("b1", "noop"): record(9.0, 2), ("b2", "other"): record(5.0, 2, loss_n=1)}
    stats[("b1", "noop")]["status"] = "dropped: loss nan at step 1"
    costs = {"small": 1.0, "big": 4.0, "identity": 4.0, "noop": 0.0, "other": 1.0}
    stopped, live = cut_dominated(stats, list(stats), 6, trainable=lambda k: k[1] != "identity", cost=lambda k: costs[k[1]])
    # "big" and the fixed "identity" are both dominated by "small"; only the trainable one stops
    assert (stopped, live) == (1, 2)
    assert stats[("b1", "big")]["status"] == "stopped: dominated at step 6"
    assert (stats[("b1", "big")]["loss_sum"], stats[("b1", "big")]["loss_n"]) == (1.0, 2)  # the loss it stopped at
    assert stats[("b1", "identity")]["status"] == "ok" and stats[("b1", "noop")]["status"].startswith("dropped")
    assert stats[("b2", "other")]["loss_n"] == 1  # alone in its block: nothing dominates it, its late loss is kept
    assert all(r["win_sum"] == 0.0 and r["win_n"] == 0 for r in stats.values())  # every candidate starts a new window


@pytest.mark.parametrize("halving", [False, True])
def test_halving_stops_dominated_candidates_and_records_steps(tmp_path, halving):
    torch.set_num_threads(1)
    config = tiny_config(distill={"max_steps": 8, "halving": halving, "halving_warmup": 0.25})
    splits = load_data(config.data)
    torch.manual_seed(0)
    teacher = build_model(config.teacher.model, config.teacher.kwargs).eval()
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    cands = build_all_candidates(specs, config.ops)
    results = distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "run"))
    stopped = {k: r for k, r in results.items() if r["status"].startswith("stopped")}
    for key, record in results.items():
        trainable = cands[key[0]][key[1]].trainable
        if key in stopped:
            assert record["steps"] in (2, 4) and record["status"] == f"stopped: dominated at step {record['steps']}"
            assert math.isfinite(record["distill_loss"])  # the loss it had when it stopped
            macs = cands[key[0]][key[1]].macs  # something of its block is no dearer
            assert any(c.macs <= macs for n, c in cands[key[0]].items() if n != key[1])
        else:
            assert record["steps"] == (8 if trainable else 0)
    assert bool(stopped) == halving


def test_stopped_candidates_are_scored_and_offered_to_the_solver(tmp_path):
    """A candidate halving stopped keeps its weights and is scored like the others: its MACs
    are not its latency, and a tight budget may want an op that halving stopped."""
    from lana.stages.distill import distill_stage

    torch.set_num_threads(1)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(parents=True)
    config = tiny_config(distill={"max_steps": 8, "halving": True, "halving_warmup": 0.25},
                         teacher={"checkpoint": "random"})
    table = distill_stage(config, run)
    stopped = table[table["status"].str.startswith("stopped")]
    assert len(stopped) and stopped["score"].notna().all() and (stopped["distill_steps"] < 8).all()

"""The profiler's bookkeeping, the correction fit and the proxy report (no timing accuracy asserted)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from torch import nn

from lana.config import LatencyConfig, build_config
from lana.errors import ConfigError, TableError
from lana.latency import calibration
from lana.latency import timing_core as core
from lana.latency.calibration import (
    fit_correction,
    mixed_selections,
    random_selections,
    spread_indices,
)
from lana.latency.context import cover_selections, measure_in_context
from lana.latency.correction import choose_correction, choose_correction_nested, fit_kind, nested_loo_errors
from lana.latency.measure import (
    measure_networks,
    settings_tag,
    time_module,
)
from lana.latency.profiles import (
    find_profile,
    latency_columns,
    record_columns,
    store_profile,
)
from lana.latency.proxy import (
    apply_family_correction,
    fit_family_correction,
    pareto_check,
    proxy_report,
    rank_correlation,
)
from lana.stages.solve import latency_offsets


def fake_clock(values):
    """A step that returns the given timings in turn (then the last one forever)."""
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


# -- statistics and adaptive sampling --------------------------------------------------------
def test_median_ci_brackets_the_median_and_shrinks_with_samples():
    rng = np.random.default_rng(0)
    few, many = list(rng.normal(10, 1, 15)), list(rng.normal(10, 1, 400))
    for samples in (few, many):
        median, low, high = core.median_ci(samples)
        assert low <= median <= high
    assert core.relative_ci(many) < core.relative_ci(few)
    assert core.relative_ci([1.0, 2.0]) == float("inf")


def test_sampling_stops_when_tight_or_at_the_cap():
    steady = core.sample_until_tight(fake_clock([1.0]), warmup=2, repeats=5, ci=0.01)
    assert steady["repeats"] == 5 and steady["tight"] and steady["median_ms"] == 1.0 and steady["warmup"] >= 3
    noisy = core.sample_until_tight(lambda: float(np.random.default_rng().uniform(1, 100)), warmup=1, repeats=4, max_repeats=20, ci=1e-6)
    assert noisy["repeats"] == 20 and not noisy["tight"]
    assert {"median_ms", "iqr_ms", "ci_ms", "repeats", "warmup"} <= set(noisy)


def test_warm_up_waits_for_stable_windows():
    # slow first calls (e.g. TorchScript profiling runs), then steady: warm-up goes past them
    calls = core.warm_up(fake_clock([50.0, 50.0, 20.0, 10.0, 5.0] + [1.0] * 100), warmup=3, cap_s=5.0)
    assert calls == 12  # windows of 3: medians 50, 5, 1, 1 -> stable after the fourth


def test_interleaved_sampling_gives_halves_per_callable():
    results = core.sample_interleaved([fake_clock([1.0]), fake_clock([2.0])], warmup=1, repeats=6, ci=0.05, per_round=2)
    assert [r["median_ms"] for r in results] == [1.0, 2.0]
    assert all(r["half_a_ms"] == r["half_b_ms"] == r["median_ms"] for r in results)
    assert results[0]["repeats"] == results[1]["repeats"] >= 6


# -- settings ---------------------------------------------------------------------------------
def test_settings_tag_names_every_setting():
    base = tiny_config(latency={"threads": None}).latency  # None: torch's own count
    other = torch.get_num_threads() + 1  # a count that differs from it (xdist workers run on 1)
    tags = {settings_tag(base.model_copy(update=u)) for u in (
        {}, {"batch_size": 1}, {"dtype": "bfloat16"}, {"runtime": "torchscript"}, {"channels_last": True},
        {"threads": other}, {"threads": other, "clock": "process"})}
    assert len(tags) == 7
    assert settings_tag(base.model_copy(update={"threads": 3})).endswith("-t3")
    assert settings_tag(base.model_copy(update={"device": "cuda:1", "cuda_graphs": True})) == "cuda1-b4-float32-eager-graphs"


def test_bad_settings_are_one_line_errors():
    cfg = tiny_config().latency
    with pytest.raises(ConfigError, match="latency.threads: 1"):
        time_module(torch.nn.ReLU(), (2, 4, 4), cfg.model_copy(update={"clock": "process", "threads": 2}))
    with pytest.raises(ConfigError, match="invalid config"):
        build_config({"latency": {"runtime": "tflite"}})


_THREADS_SEEN: set[int] = set()


class _SeesThreads(torch.nn.Conv2d):
    """A conv that records the thread count torch runs it with (in a module-level set: the
    timer may run a copy of the module)."""

    def forward(self, x):
        _THREADS_SEEN.add(torch.get_num_threads())
        return super().forward(x)


def test_time_module_records_spread_ci_and_respects_the_thread_count():
    cfg = tiny_config().latency.model_copy(update={"threads": 2, "clock": "wall", "max_repeats": 12})
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the measurement's own count differs from the caller's
    try:
        _THREADS_SEEN.clear()
        timing = time_module(_SeesThreads(4, 4, 3, padding=1), (4, 8, 8), cfg)
        assert _THREADS_SEEN == {2}  # every timed (and warm-up) call ran on the configured threads
        assert torch.get_num_threads() == 1  # the caller's count restored
    finally:
        torch.set_num_threads(before)
    assert timing.median_ms > 0 and 3 <= timing.repeats <= 12
    assert timing.iqr_ms >= 0 and timing.ci_ms >= 0
    assert set(timing.as_dict()) == {"median_ms", "iqr_ms", "repeats", "ci_ms", "warmup", "tight"}


def test_onnxruntime_runtime_is_optional():
    from lana.latency.runtimes import onnx_available

    cfg = tiny_config().latency.model_copy(update={"runtime": "onnxruntime"})
    if onnx_available():
        assert time_module(torch.nn.Conv2d(4, 4, 3, padding=1), (4, 8, 8), cfg).median_ms > 0
    else:
        with pytest.raises(ConfigError, match="pip install onnx onnxruntime"):
            time_module(torch.nn.Conv2d(4, 4, 3, padding=1), (4, 8, 8), cfg)


# -- in context -----------------------------------------------------------------------------------
def test_cover_networks_place_every_candidate():
    cands = {"a": ["teacher", "x", "y"], "b": ["teacher", "z"]}
    selections = cover_selections(cands, rounds=2)
    assert len(selections) == 6
    for block, names in cands.items():
        assert {s[block] for s in selections} == set(names)


def test_in_context_timing_covers_all_candidates_and_adds_up_for_the_teacher():
    from lana.distill.candidates import build_all_candidates
    from lana.teacher.blocks import discover_blocks
    from lana.teacher.demo_net import demo_resnet

    cfg = tiny_config().latency.model_copy(update={"threads": 1, "clock": "process", "max_repeats": 6})
    teacher = demo_resnet(in_chans=1, widths=[4, 8], depth=1).eval()
    specs = discover_blocks(teacher, (1, 1, 8, 8))
    cands = build_all_candidates(specs, tiny_config(ops={"include": ["identity", "conv_k1", "conv_k3"]}).ops)
    timings, record = measure_in_context(teacher, specs, cands, (1, 8, 8), cfg)
    assert set(timings) == {(b, n) for b, c in cands.items() for n in c}
    assert all(t.median_ms > 0 for t in timings.values())
    assert record["fixed_latency_ms"] == record["fixed_gap_ms"] + record["runtime_adjust_ms"]
    # the block clocks' own cost is not part of the fixed part: timed on its own and taken out per block
    assert record["clock_overhead_ms"] > 0 and record["runtime_adjust_ms"] == -record["clock_overhead_ms"]
    assert record["clock_overhead_ms"] < record["fixed_gap_ms"]  # a few microseconds per block, less than the glue it sat in
    assert record["networks"] == 1 + max(len(c) for c in cands.values())
    halves = measure_networks([teacher], (1, 8, 8), cfg)[0]
    assert halves["half_a_ms"] > 0 and halves["half_b_ms"] > 0


def test_cover_networks_take_context_repeats_calls_each(monkeypatch):
    """context_repeats: every cover network gets that many timed calls, whatever the CI (the figures add up over blocks)."""
    from lana.distill.candidates import build_all_candidates
    from lana.latency import context
    from lana.teacher.blocks import discover_blocks
    from lana.teacher.demo_net import demo_resnet

    taken, real = [], core.sample_interleaved

    def spy(steps, **kwargs):
        results = real(steps, **kwargs)
        taken.extend(r["repeats"] for r in results)
        return results
    monkeypatch.setattr(context.core, "sample_interleaved", spy)
    monkeypatch.setattr(core, "relative_ci", lambda samples: 2.0)  # a loaded machine: six calls' CI over 100 %
    teacher = demo_resnet(in_chans=1, widths=[4, 8], depth=1).eval()
    specs = discover_blocks(teacher, (1, 1, 8, 8))
    cands = build_all_candidates(specs, tiny_config(ops={"include": ["identity", "conv_k1"]}).ops)
    base = tiny_config().latency.model_copy(update={"threads": 1, "clock": "process", "repeats": 12, "ci": 0.0,
                                                    "time_cap_s": 30.0, "warmup": 1})
    timings, _ = measure_in_context(teacher, specs, cands, (1, 8, 8),
                                    base.model_copy(update={"context_repeats": 6, "context_min_s": 0.0}))
    assert taken and set(taken) == {6}  # 6 calls each (two rounds of 3), although the CI target (0) is never met
    assert set(timings) == {(b, n) for b, c in cands.items() for n in c}
    monkeypatch.undo()
    monkeypatch.setattr(context.core, "sample_interleaved", spy)
    taken.clear()
    # a floor of time: these sub-millisecond networks get more calls, up to 8 x context_repeats
    measure_in_context(teacher, specs, cands, (1, 8, 8), base.model_copy(update={"context_repeats": 6, "context_min_s": 0.05}))
    assert min(taken) > 6 and max(taken) <= 48
    taken.clear()
    measure_in_context(teacher, specs, cands, (1, 8, 8), base.model_copy(update={"context_repeats": None, "max_repeats": 15}))
    assert min(taken) >= 12  # None: as whole networks (repeats, then the CI target up to max_repeats)
    with pytest.raises(ValueError):
        LatencyConfig(context_repeats=5)  # fewer than two interleaved rounds (their halves judge the window)


# -- latency.json bookkeeping -----------------------------------------------------------------------
def _record(tag, scale=None, fixed=0.5):
    rec = {"tag": tag, "method": "context", "teacher_latency_ms": 3.0, "measured_fixed_latency_ms": fixed,
           "fixed_latency_ms": fixed, "calibration": None if scale is None else {"scale": scale, "fixed_ms": 0.1, "networks": 5},
           "candidates": [{"block": "b0", "candidate": "teacher", "median_ms": 1.0, "iqr_ms": 0.1, "isolated_ms": 0.9},
                          {"block": "b0", "candidate": "x", "median_ms": 0.5, "iqr_ms": 0.1, "isolated_ms": 0.4}]}
    if scale is not None:
        rec["fixed_latency_ms"] = 0.1
    return rec


def test_profiles_stack_under_their_tags_and_never_get_lost():
    latency = store_profile(None, _record("cpu-a"), primary=True)
    latency = store_profile(latency, _record("gpu-b", scale=2.0), primary=False)
    columns = latency_columns(latency)
    assert {"latency_ms", "latency_isolated_ms", "latency_context_ms", "latency_ms:gpu-b", "latency_settings"} <= set(columns)
    assert columns["latency_ms:gpu-b"].tolist() == [2.0, 1.0]  # calibrated: scale x raw
    offsets, teacher = latency_offsets(latency)
    assert offsets == {"latency_ms": 0.5, "latency_ms:gpu-b": 0.1} and teacher["latency_ms:gpu-b"] == 3.0
    promoted = store_profile(latency, find_profile(latency, "gpu-b"), primary=True)
    assert promoted["tag"] == "gpu-b" and set(promoted["profiles"]) == {"cpu-a"}
    assert record_columns(promoted)["latency_ms"].tolist() == [2.0, 1.0]


# -- the correction fit -------------------------------------------------------------------------------
def test_correction_fit_recovers_fixed_and_scale_despite_an_outlier():
    sums = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    measured = [0.7 + 1.2 * s for s in sums]
    measured[2] *= 1.5  # one disturbed measurement
    fit = fit_correction(sums, measured)
    assert fit.scale == pytest.approx(1.2, rel=1e-6) and fit.fixed_ms == pytest.approx(0.7, rel=1e-6)
    assert fit_correction([2.0], [3.0]).scale == 1.0 and fit_correction([2.0], [3.0]).fixed_ms == pytest.approx(1.0)
    assert fit_correction([1.0, 1.01, 1.02], [5.0, 5.0, 5.0]).scale == 1.0  # no spread: offset only


def test_correction_is_chosen_by_leave_one_out_and_never_worse_than_none():
    rng = np.random.default_rng(0)
    sums = np.linspace(2.0, 20.0, 12)
    # the sum misses a real offset and scale: offset + scale must win, judged on every network
    measured = 1.5 + 1.15 * sums + rng.normal(0, 0.02, len(sums))
    fit, why = choose_correction(sums.tolist(), measured.tolist(), measured_fixed_ms=0.5)
    assert why["chosen"] == "offset+scale" and fit.kind == "offset+scale"
    assert fit.scale == pytest.approx(1.15, rel=0.02) and fit.fixed_ms == pytest.approx(1.5, abs=0.1)
    assert why["kinds"]["offset+scale"]["worst_pct"] < 1.0 < why["kinds"]["none"]["median_pct"]
    assert why["networks"] == len(sums)  # the fastest and the slowest are held out too
    # the profile was already right (noise only): nothing may be chosen that is worse than none
    exact = 0.5 + sums + rng.normal(0, 0.05, len(sums))
    exact[-1] += 1.5  # the slowest network measured high: a fitted scale would chase it
    fit, why = choose_correction(sums.tolist(), exact.tolist(), measured_fixed_ms=0.5)
    none = why["kinds"]["none"]
    assert why["kinds"][fit.kind]["median_pct"] <= none["median_pct"] and why["kinds"][fit.kind]["mean_pct"] <= none["mean_pct"]
    if fit.kind == "none":
        assert (fit.fixed_ms, fit.scale) == (0.5, 1.0) and "no correction beats none" in why["why"]
    # nested leave-one-out: the choice too is made without the judged network
    errors, kinds = nested_loo_errors(sums.tolist(), measured.tolist(), 0.5, list(range(len(sums))))
    assert len(errors) == len(sums) and float(np.max(errors)) < 1.0 and set(kinds) == {"offset+scale"}
    with pytest.raises(ValueError, match="unknown correction"):
        fit_kind("per-family", sums, measured, 0.5)


def test_the_stored_correction_is_chosen_by_nested_leave_one_out():
    sums = np.linspace(2.0, 20.0, 8)
    # a real offset and scale: the whole procedure, held out, beats none, so the fit is stored
    measured = 1.5 + 1.15 * sums + np.random.default_rng(0).normal(0, 0.02, len(sums))
    fit, why = choose_correction_nested(sums.tolist(), measured.tolist(), 0.5)
    assert fit.kind == why["chosen"] == "offset+scale" and why["held_out"] == why["nested"]
    assert why["nested"]["worst_pct"] < 1.0 and why["nested"]["per_fold"] == {"offset+scale": len(sums)}
    # a right profile plus noise (seeded): plain leave-one-out picks offset by a hair, but choosing
    # without each held-out network does worse than none on the mean, so none is kept
    noisy = 0.5 + sums + np.random.default_rng(27).normal(0, 0.3, len(sums))
    assert choose_correction(sums.tolist(), noisy.tolist(), 0.5)[1]["chosen"] == "offset"
    fit, why = choose_correction_nested(sums.tolist(), noisy.tolist(), 0.5)
    assert (fit.kind, fit.fixed_ms, fit.scale) == ("none", 0.5, 1.0) and why["chosen"] == "none"
    assert why["nested"]["mean_pct"] > why["kinds"]["none"]["mean_pct"] and "none is kept" in why["why"]
    assert why["held_out"]["median_pct"] == why["kinds"]["none"]["median_pct"]


def test_check_networks_spread_over_the_latency_range():
    latency = {f"b{i}": {"teacher": 1.0, "fast": 0.1, "mid": 0.5, "slow": 2.0} for i in range(5)}
    spread = random_selections(latency, 5, seed=0)
    totals = [sum(latency[b][c] for b, c in choice.items()) for choice in spread]
    assert totals[0] <= 5 * 0.5 < 5 * 1.0 <= totals[-1]  # the first are fast, the last slow
    assert {c for choice in spread for c in choice.values()} >= {"fast", "slow"}
    assert len(mixed_selections(latency, 7)) == 7
    assert spread_indices([5.0, 1.0, 3.0, 2.0, 4.0], 3) == [0, 1, 2]


# -- proxy ------------------------------------------------------------------------------------------
def _two_device_table(seed=0, blocks=4, per_block=6):
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(blocks):
        for c in range(per_block):
            family = ["conv", "mbconv", "identity"][c % 3] if c else "teacher"
            cpu = rng.uniform(0.1, 2.0) if c else 2.0
            factor = {"conv": 0.2, "mbconv": 0.5, "identity": 0.1, "teacher": 0.25}[family]
            rows.append({"block": f"b{b}", "candidate": "teacher" if c == 0 else f"op{c}", "family": family,
                         "score": 0.0 if c == 0 else -rng.uniform(0, 1) * (2.0 - cpu), "latency_ms": cpu,
                         "latency_ms:gpu": cpu * factor})
    return pd.DataFrame(rows)


def test_rank_correlation_per_block_and_overall():
    table = _two_device_table()
    table["latency_ms:same"] = table["latency_ms"] * 3
    table["latency_ms:reversed"] = -table["latency_ms"]
    assert rank_correlation(table, "latency_ms", "latency_ms:same")["overall"] == pytest.approx(1.0)
    report = rank_correlation(table, "latency_ms", "latency_ms:reversed")
    assert report["worst_block"][1] == pytest.approx(-1.0) and set(report["per_block"]) == {"b0", "b1", "b2", "b3"}
    with pytest.raises(TableError, match="latency columns are"):
        rank_correlation(table, "latency_ms", "latency_ms:nope")


def test_family_correction_recovers_per_family_factors_and_keeps_the_front():
    table = _two_device_table()
    factors = fit_family_correction(table, "latency_ms", "latency_ms:gpu", table.index[:12])  # blocks b0, b1
    assert factors["conv"] == pytest.approx(0.2) and factors["mbconv"] == pytest.approx(0.5)
    corrected = apply_family_correction(table, "latency_ms", factors)
    assert np.allclose(corrected, table["latency_ms:gpu"])
    report = proxy_report(table, "latency_ms", "latency_ms:gpu", samples=12, seed=1)
    assert report["corrected_error_pct"]["worst"] < 1e-6
    assert report["pareto_corrected"]["on_front"].all()
    assert len(pareto_check(table, "latency_ms:gpu", "latency_ms:gpu", [0.5, 0.8])) == 2


def test_a_noisy_check_group_is_timed_again_and_the_calmest_take_kept(monkeypatch):
    """On a shared host the machine can move during one group: its halves then disagree, and it is retaken."""
    noisy = {"median_ms": 10.0, "half_a_ms": 9.0, "half_b_ms": 11.0, "ci_ms": 0.1}
    calm = {"median_ms": 10.0, "half_a_ms": 9.9, "half_b_ms": 10.1, "ci_ms": 0.1}
    takes = iter([[noisy, calm], [calm, calm], [calm, calm]])
    calls = []

    def fake(nets, *args, **kwargs):
        calls.append(len(nets))
        return next(takes)
    monkeypatch.setattr(calibration, "measure_networks", fake)
    cfg = LatencyConfig(retakes=2, retake_noise=0.04)
    out = calibration.measure_selections(nn.Identity(), [], {}, [{}, {}, {}, {}], (1, 4, 4), cfg, group=2)
    assert calls == [2, 2, 2]  # the first group twice (noisy, then calm), the second once
    assert [r["takes"] for r in out] == [2, 2, 1, 1] and out[0]["half_a_ms"] == 9.9
    takes = iter([[noisy, noisy]] * 3)
    calls.clear()
    out = calibration.measure_selections(nn.Identity(), [], {}, [{}, {}], (1, 4, 4), cfg, group=2)
    assert calls == [2, 2, 2] and out[0]["takes"] == 3  # never more than 1 + retakes takes

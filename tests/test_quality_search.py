"""The quality benchmark's band search and random selections: every method's network is timed
inside the same band by the same search, and a random selection lands in the predicted window."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from torch import nn

from benchmarks import search as search_mod
from benchmarks.baselines import random_in_band
from benchmarks.search import OutOfBand, search_band
from lana.errors import InfeasibleError
from solvers import SelectionProblem


def _table(rng: np.random.Generator, blocks: int = 6, per_block: int = 5) -> pd.DataFrame:
    rows = []
    for b in range(blocks):
        for c in range(per_block):
            rows.append({"block": f"b{b}", "candidate": "teacher" if c == 0 else f"op{c}",
                         "latency_ms": 1.0 if c == 0 else float(rng.uniform(0.05, 1.2)), "score": -float(rng.uniform(0, 1)) if c else 0.0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("factor", [1.3, 2.0, 2.8])
def test_random_selections_land_in_the_predicted_window_and_vary(factor):
    rng = np.random.default_rng(0)
    table = _table(rng)
    high = factor * table.groupby("block")["latency_ms"].min().sum()
    problem = SelectionProblem.from_frame(table)
    draws = [random_in_band(problem, rng, 0.97 * high, high) for _ in range(40)]
    lat = table.set_index(["block", "candidate"])["latency_ms"]
    for choice in draws:
        assert list(choice) == [f"b{b}" for b in range(6)]
        assert 0.97 * high - 1e-9 <= sum(lat[(b, op)] for b, op in choice.items()) <= high + 1e-9
    assert len({tuple(d.values()) for d in draws}) > 10  # random, not one fixed answer


def test_random_selection_outside_the_table_is_infeasible():
    rng = np.random.default_rng(1)
    table = _table(rng)
    fastest = table.groupby("block")["latency_ms"].min().sum()
    with pytest.raises(InfeasibleError):
        random_in_band(SelectionProblem.from_frame(table), rng, 0.5 * fastest, 0.9 * fastest)


class _Knob(nn.Module):
    def __init__(self, knob: float) -> None:
        super().__init__()
        self.knob = knob


def _fake_share(curve):
    """measure_share stand-in: the share is ``curve(knob)``; counts calls."""
    calls = []

    def measure(model, reference, shape, cfg, rounds=3):
        calls.append(model.knob)
        return curve(model.knob), curve(model.knob)
    return measure, calls


def test_search_bisects_into_the_band_and_says_when_it_cannot(monkeypatch):
    measure, calls = _fake_share(lambda k: 1.0 - 0.8 * k)  # knob 0 = teacher, 1 = fastest (0.2×)
    monkeypatch.setattr(search_mod, "measure_share", measure)
    found = search_band(_Knob, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=8)
    assert 0.97 * 0.5 <= found.share <= 0.5 and found.measurements == len(calls) <= 8
    with pytest.raises(OutOfBand, match="cannot reach: fastest 0.20×"):
        search_band(_Knob, 1.0, 0.0, 0.15, None, (1, 8, 8), None)
    step, _ = _fake_share(lambda k: 1.0 if k < 0.5 else 0.3)  # no setting between 0.3× and 1×
    monkeypatch.setattr(search_mod, "measure_share", step)
    with pytest.raises(OutOfBand, match="missed the band"):
        search_band(_Knob, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=5)


def test_search_interpolates_and_retakes_a_near_miss(monkeypatch):
    # a straight line is found by interpolation in one step after the fastest setting
    measure, calls = _fake_share(lambda k: 1.0 - 0.8 * k)
    monkeypatch.setattr(search_mod, "measure_share", measure)
    found = search_band(_Knob, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=8)
    assert found.measurements == len(calls) == 2 and 0.485 <= found.share <= 0.5
    # noise: the same network reads 0.505× then 0.495×; the mean (0.50×) is inside 0.5 × [0.97, 1]
    readings = iter([0.2, 0.505, 0.495])
    monkeypatch.setattr(search_mod, "measure_share", lambda m, r, s, c, rounds=3: (1.0, next(readings)))
    found = search_band(_Knob, 1.0, 0.0, 0.5, None, (1, 8, 8), None)
    assert found.measurements == 3 and found.share == pytest.approx(0.5)
    # further outside than half the band's width (0.0075× here): no retake
    for outside in (0.8, 0.51):
        readings = iter([0.2, outside, 0.3, 0.5])
        monkeypatch.setattr(search_mod, "measure_share", lambda m, r, s, c, rounds=3, readings=readings: (1.0, next(readings)))
        assert search_band(_Knob, 1.0, 0.0, 0.5, None, (1, 8, 8), None).measurements == 4


def test_search_probes_around_a_closed_bracket(monkeypatch):
    """Selections either side of the band at every knob in between: the search looks just outside."""
    def share(knob):  # fastest (knob 1) 0.2×; over the band below knob 0.5, under it above, except one network
        if knob >= 0.5:
            return 0.2 if knob == 1.0 else 0.4
        return 0.49 if 0.485 <= knob < 0.49 else 0.6

    def build(knob):
        key = "inside" if 0.485 <= knob < 0.49 else ("fast" if knob == 1.0 else "under" if knob >= 0.5 else "over")
        return _Knob(knob), {"key": key}
    measure, calls = _fake_share(share)
    monkeypatch.setattr(search_mod, "measure_share", measure)
    found = search_band(build, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=8)
    assert 0.485 <= found.share <= 0.5 and 0.485 <= found.knob < 0.49
    assert found.measurements == len(calls) == 4  # fastest, under, over, inside: no network timed twice
    # without probing the bracket closes on "under" and "over" and the search gives up
    with pytest.raises(OutOfBand, match="missed the band"):
        search_band(build, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=8, probe_step=0.0)
    # a share that jumps across the band: the miss says between which settings
    measure, _ = _fake_share(lambda knob: 0.4 if knob >= 0.5 else 0.6)
    monkeypatch.setattr(search_mod, "measure_share", measure)
    with pytest.raises(OutOfBand, match=r"missed the band .*; it jumps from 0\.400× at knob 0\.5\d* to 0\.600× at 0\.4\d*"):
        search_band(lambda k: (_Knob(k), {}), 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=16)


def test_search_simulation_finds_a_noiseless_table_every_time_and_misses_some_noisy_ones():
    from benchmarks.search_sim import miss_rate

    assert miss_rate(20, 10, 0.0, 0.0, 0.003) == (0.0, pytest.approx(2.0, abs=1.5))
    rate, spent = miss_rate(200, 10, 0.05, 0.02, 0.01)
    assert 0.0 < rate < 0.5 and 2 <= spent <= 10


def test_search_does_not_time_the_same_network_twice(monkeypatch):
    """Knobs that build the same network (a table method's selection) share its measurements."""
    def build(knob):  # two networks: knob < 0.5 is the slow one (0.8×), the rest the fast one (0.3×)
        key = "slow" if knob < 0.5 else "fast"
        return _Knob(knob), {"key": key}
    measure, calls = _fake_share(lambda k: 0.8 if k < 0.5 else 0.3)
    monkeypatch.setattr(search_mod, "measure_share", measure)
    with pytest.raises(OutOfBand, match=r"in 2 measurements \(nearest 0.300×\)"):
        search_band(build, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=6)
    assert len(calls) == 2  # each network timed once; the other knobs reused those figures



class _Net(nn.Module):
    def __init__(self, name: str, share: float) -> None:
        super().__init__()
        self.name, self.share = name, share


def test_search_measures_a_closed_brackets_alternatives_before_it_probes(monkeypatch):
    """lana's other top-k selections: a first selection either side of the band, an alternative inside it,
    measured with the last measurements once probing found nothing."""
    shares = {"fast": 0.2, "under": 0.4, "over": 0.6, "o2": 0.55, "u2": 0.45, "u3": 0.49}
    offers = {"under": ["u2", "u3"], "over": ["o2"]}

    def build(knob):
        name = "fast" if knob == 1.0 else "under" if knob >= 0.5 else "over"
        return net(name)

    def net(name):
        return _Net(name, shares[name]), {"key": name, "alternatives": [(alt, lambda alt=alt: net(alt)) for alt in offers.get(name, [])]}
    calls = []

    def measure(model, reference, shape, cfg, rounds=3):
        calls.append(model.name)
        return model.share, model.share
    monkeypatch.setattr(search_mod, "measure_share", measure)
    found = search_band(build, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=12)
    assert found.extra["key"] == "u3" and found.share == 0.49 and 0.5 <= found.knob < 0.51  # the under end offered it
    # each network timed once; the probes built no new network, then the slower end's alternative, the faster end's in order
    assert found.measurements == 6 and calls[:3] == ["fast", "under", "over"] and calls[-3:] == ["o2", "u2", "u3"]
    assert len(calls) == len(set(calls))
    # a probe that finds the method's first choice at a nearby knob is preferred: alternatives are its lesser ones
    def build_with_inside(knob):
        return net("inside") if 0.485 <= knob < 0.49 else build(knob)
    shares["inside"] = 0.492
    calls.clear()
    found = search_band(build_with_inside, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=12)
    assert found.extra["key"] == "inside" and calls == ["fast", "under", "over", "inside"]
    # the alternatives count against the same allowance: with too few measurements left the search still gives up
    calls.clear()
    with pytest.raises(OutOfBand, match="missed the band"):
        search_band(build, 1.0, 0.0, 0.5, None, (1, 8, 8), None, max_measurements=5)
    assert len(calls) == 5 and "u3" not in calls


def test_band_sweep_reads_its_grid_and_says_how_each_search_ended():
    from benchmarks.band_sweep import grid, line

    assert grid("0.28:0.34:0.02") == [0.28, 0.3, 0.32, 0.34] and grid("0.3,0.5") == [0.3, 0.5]
    row = {"budget": 0.7, "with": {"share": 0.6912, "measurements": 5, "rank": 1, "seconds": 9.0},
           "without": {"note": "missed the band 0.679–0.700× in 12 measurements (nearest 0.678×)", "seconds": 20.0}}
    assert line(row) == "| 0.70× | 0.691× in 5 (top-k #2) | missed |"


@pytest.mark.parametrize("module", ["band_sweep", "topk_kl"])
def test_run_folder_tools_say_what_is_missing(module, tmp_path, capsys):
    import importlib

    args = ["--run", str(tmp_path), "--teacher", "resnet"] + (["--table-ms", "10"] if module == "topk_kl" else [])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"benchmarks.{module}").main(args)
    assert exit_info.value.code == 2 and "seed0 is missing: run benchmarks.quality --teachers resnet first" in capsys.readouterr().err


def test_table_agreement_compares_two_seeds_tables_candidate_by_candidate(tmp_path, capsys):
    import json

    from benchmarks.table_agreement import main

    rows = [("b0", "teacher", 2.0), ("b0", "x", 1.0), ("b1", "teacher", 4.0), ("b1", "y", 0.5)]
    for seed, scale in ((0, {}), (1, {"x": 1.5, "y": 0.5})):  # seed 1: x 50 % slower, y twice as fast, the rest alike
        folder = tmp_path / "resnet" / f"seed{seed}"
        folder.mkdir(parents=True)
        record = {"teacher_latency_ms": 6.0 * (1 + seed), "measured_at": f"t{seed}",
                  "candidates": [{"block": b, "candidate": c, "median_ms": ms * scale.get(c, 1.0)} for b, c, ms in rows]}
        (folder / "latency.json").write_text(json.dumps(record))
    assert main(["--run", str(tmp_path), "--teacher", "resnet"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: teacher 6.00 ms, measured at t0" in out and "seed 1: teacher 12.00 ms" in out
    assert "over 4 candidates: teacher 2.000; per candidate min 0.500" in out and "max 1.500" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path), "--teacher", "mobilenet"])
    assert exit_info.value.code == 2 and "seed0/latency.json is missing" in capsys.readouterr().err


def test_table_noise_variants_are_validated_latency_settings(tmp_path, capsys):
    from benchmarks.table_noise import main, spreads, variant
    from lana.config import LatencyConfig
    from lana.errors import ConfigError

    base = LatencyConfig()
    assert variant(base, "-") is base
    tuned = variant(base, "time_cap_s=1.2,context_repeats=null")
    assert tuned.time_cap_s == 1.2 and tuned.context_repeats is None and tuned.batch_size == base.batch_size
    for bad in ("bogus=1", "context_repeats=3", "time_cap_s"):  # unknown, invalid (< 6), not KEY=VALUE
        with pytest.raises(ConfigError):
            variant(base, bad)
    record = {"teacher_latency_ms": 1.0, "candidates": [{"block": "b", "candidate": c, "median_ms": 1.0} for c in "xyz"]}
    assert spreads([record, record, record]) == [0.0, 0.0, 0.0]  # three tables: three pairs
    for args, said in ((["--repeats", "1"], "at least 2"), ([], "seed0 is missing")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--run", str(tmp_path), *args])
        assert exit_info.value.code == 2 and said in capsys.readouterr().err

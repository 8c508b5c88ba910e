"""The quality benchmark's units over several workers (``benchmarks/schedule.py``)."""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.schedule import Unit, UnitsFailed, plan, priorities, run_units, simulate


def test_the_plan_orders_training_distillation_budgets_and_the_final_pass():
    deps = plan(["resnet", "vit"], [0, 1], [0.3, 0.5], {"resnet": [0.33]}, {"vit": {"vit", "resnet"}}, cached=set())
    teacher = Unit("resnet", "teacher")
    distills = {Unit("resnet", "distill", 0.0), Unit("resnet", "distill", 1.0)}
    assert deps[teacher] == set()
    assert deps[Unit("vit", "teacher")] == {teacher}  # its recipe learns from ResNet-18-D: trained after it
    assert all(deps[d] == {teacher} for d in distills)
    for cell in (Unit("resnet", "budget", 0.3), Unit("resnet", "budget", 0.5), Unit("resnet", "long", 0.33)):
        assert deps[cell] == distills  # a budget reads every seed's table
    assert Unit("vit", "long", 0.33) not in deps  # long budgets are per teacher
    assert deps[Unit("resnet", "final")] >= {Unit("resnet", "budget", 0.3), Unit("resnet", "long", 0.33)}
    # a cached teacher has no training unit, and nothing waits for one
    cached = plan(["resnet", "vit"], [0], [0.5], {}, {"vit": {"resnet"}}, cached={"resnet"})
    assert Unit("resnet", "teacher") not in cached and cached[Unit("vit", "teacher")] == set()
    assert cached[Unit("resnet", "distill", 0.0)] == set()
    assert str(Unit("vit", "budget", 0.5)) == "vit 0.5×" and str(Unit("vit", "distill", 1.0)) == "vit distill seed 1"


def test_priority_is_the_longest_path_to_the_end():
    deps = plan(["a", "b"], [0], [0.5], {}, {}, cached={"a", "b"})
    cost = {"a": {"distill": 10, "budget": 5, "final": 1}, "b": {"distill": 2, "budget": 30, "final": 1}}
    rank = priorities(deps, lambda u: cost[u.key][u.kind])
    assert rank[Unit("a", "distill", 0.0)] == 16 and rank[Unit("b", "distill", 0.0)] == 33
    assert rank[Unit("b", "final")] == 1


def test_units_run_after_what_they_need_longest_path_first_and_in_parallel():
    deps = plan(["light", "heavy"], [0, 1], [0.5], {}, {}, cached={"light", "heavy"})
    cost = {"light": 1, "heavy": 5}
    started, finished, lock, together = [], {}, threading.Lock(), []

    def work(key, kind, arg, scale):
        with lock:
            started.append(Unit(key, kind, arg))
            together.append(len(started) - len(finished))
        time.sleep(scale * cost[key])
        with lock:
            finished[Unit(key, kind, arg)] = time.monotonic()
        return f"{key} {kind}"

    results = run_units(deps, lambda u: cost[u.key], 2, work, (0.01,), pools=lambda: ThreadPoolExecutor(2))
    assert results[Unit("heavy", "final")] == "heavy final" and len(results) == len(deps)
    assert started[:2] == [Unit("heavy", "distill", 0.0), Unit("heavy", "distill", 1.0)]  # the longest path first
    assert max(together) == 2  # two at once, never more
    for unit, needs in deps.items():
        index = started.index(unit)
        assert all(need in started[:index] and finished[need] <= finished[unit] for need in needs), unit


def test_a_failed_unit_is_said_its_dependents_are_skipped_and_the_rest_still_runs(caplog):
    deps = plan(["bad", "good"], [0], [0.5], {}, {}, cached={"bad", "good"})
    ran = []

    def work(key, kind, arg):
        ran.append(Unit(key, kind, arg))
        if (key, kind) == ("bad", "distill"):
            raise RuntimeError("out of memory")

    with pytest.raises(UnitsFailed, match="bad distill seed 0: RuntimeError: out of memory") as info:
        run_units(deps, lambda u: 1.0, 1, work, pools=lambda: ThreadPoolExecutor(1))
    assert "bad final: skipped, as it needs bad 0.5×, bad distill seed 0" in str(info.value)
    assert Unit("good", "final") in ran and Unit("bad", "budget", 0.5) not in ran
    assert "unit bad distill seed 0 failed: RuntimeError: out of memory" in caplog.text


def test_the_simulated_wall_shares_the_work_out_and_never_beats_the_critical_path():
    deps = plan(["a", "b"], [0, 1], [0.3, 0.5], {"b": [0.4]}, {}, cached={"a", "b"})
    cost = {"a": {"distill": 4, "budget": 6, "final": 1}, "b": {"distill": 16, "budget": 16, "long": 35, "final": 2}}

    def minutes(u):
        return cost[u.key][u.kind]
    work = sum(minutes(u) for u in deps)
    one = simulate(deps, minutes, 1)
    assert max(end for _, end in one.values()) == work  # one worker: everything in a row
    two = simulate(deps, minutes, 2)
    wall = max(end for _, end in two.values())
    assert max(priorities(deps, minutes).values()) <= wall < work and wall <= work / 2 + max(minutes(u) for u in deps)
    for unit, (start, _) in two.items():  # nothing starts before what it needs has ended
        assert all(two[need][1] <= start for need in deps[unit])
    with pytest.raises(ValueError, match="waiting on each other"):
        simulate({Unit("a", "budget", 1.0): {Unit("a", "final")}, Unit("a", "final"): {Unit("a", "budget", 1.0)}}, minutes, 2)


def test_a_dead_worker_fails_what_ran_in_its_pool_and_the_rest_goes_on_in_a_new_one():
    from concurrent.futures.process import BrokenProcessPool

    deps = plan(["crash", "fine"], [0], [0.5], {}, {}, cached={"crash", "fine"})
    pools = []

    def new_pool():
        pools.append(ThreadPoolExecutor(1))
        return pools[-1]

    def work(key, kind, arg):
        if (key, kind) == ("crash", "distill"):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        return key

    with pytest.raises(UnitsFailed, match="crash distill seed 0: a worker process died") as info:
        run_units(deps, lambda u: 2.0 if u.key == "crash" else 1.0, 1, work, pools=new_pool)
    assert len(pools) == 2 and "fine final" not in str(info.value)  # a new pool ran the other teacher's units


def _pid(key, kind, arg):
    return os.getpid()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child needs Python 3.11")
def test_every_unit_runs_in_a_fresh_process_by_default():
    deps = plan(["t"], [0, 1], [0.5], {}, {}, cached={"t"})  # 2 distills, 1 budget, 1 final
    pids = run_units(deps, lambda u: 1.0, 2, _pid)
    assert len(pids) == 4 and len(set(pids.values())) == 4 and os.getpid() not in pids.values()

"""The quality benchmark's work in units, several at once (``python -m benchmarks.quality --jobs N``).

One teacher's work splits into units, each resumable by itself (its files say what is done):
the teacher's training (only when it is not cached), lana's distillation per seed, each budget,
each long fine-tune budget, and the final pass (every network timed again beside the teacher,
the teacher's rows written). A unit starts once the units it needs are done: the distillations
need the teacher, the budgets need every seed's distillation, the final pass needs the budgets;
a teacher whose recipe learns from another (``init``/``kd``) needs that one.

``--jobs`` worker processes take the ready unit with the longest estimated path to the end of
the run first (list scheduling by critical path; estimates per unit in the mode's
``unit_minutes``), so the wall comes close to the work divided by the workers instead of the
heaviest teacher's whole work. Every unit runs in a fresh process (one unit per worker process),
so no unit inherits another's torch state or memory: in one long-lived process a ViT unit after
a ResNet's units was once seen training 1.8× slower. A unit that fails is said at once in one line; the units that
need it are skipped, every other unit still runs, and the failures are raised at the end.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

log = logging.getLogger("lana")

KINDS = ("teacher", "distill", "budget", "long", "final")


@dataclass(frozen=True, order=True)
class Unit:
    """One piece of a teacher's work: ``kind`` (one of :data:`KINDS`) with its seed or budget ``arg``."""

    key: str
    kind: str
    arg: float | None = None

    def __str__(self) -> str:
        if self.kind == "distill":
            return f"{self.key} distill seed {self.arg:g}"
        if self.kind in ("budget", "long"):
            return f"{self.key} {'long ' if self.kind == 'long' else ''}{self.arg:g}×"
        return f"{self.key} {self.kind}"


class UnitsFailed(RuntimeError):
    """Some units failed (each said when it happened); the others ran."""


def plan(keys: list[str], seeds: list[int], shares: list[float], long_shares: dict[str, list[float]],
         needs_teachers: dict[str, set[str]], cached: set[str]) -> dict[Unit, set[Unit]]:
    """Every unit of ``keys`` and the units each one needs.

    ``needs_teachers[key]``: the teachers ``key``'s own training learns from; ``cached``: the
    teachers already trained (no training unit).
    """
    deps: dict[Unit, set[Unit]] = {}
    trains = {k: Unit(k, "teacher") for k in keys if k not in cached}
    for key in keys:
        first = {trains[key]} if key in trains else set()
        if key in trains:
            deps[trains[key]] = {trains[k] for k in needs_teachers.get(key, set()) if k in trains and k != key}
        distills = {Unit(key, "distill", float(s)) for s in seeds}
        for unit in distills:
            deps[unit] = set(first)
        cells = {Unit(key, "budget", float(s)) for s in shares} | {Unit(key, "long", float(s)) for s in long_shares.get(key, [])}
        for unit in cells:
            deps[unit] = set(distills)
        deps[Unit(key, "final")] = cells | distills
    return deps


def priorities(deps: dict[Unit, set[Unit]], minutes: Callable[[Unit], float]) -> dict[Unit, float]:
    """Each unit's estimated minutes plus the longest chain of units that wait for it."""
    waiting: dict[Unit, set[Unit]] = {u: set() for u in deps}
    for unit, needs in deps.items():
        for need in needs:
            waiting[need].add(unit)
    out: dict[Unit, float] = {}
    visiting: set[Unit] = set()

    def path(unit: Unit) -> float:
        if unit not in out:
            if unit in visiting:
                raise ValueError(f"units waiting on each other: {', '.join(str(u) for u in sorted(visiting))}")
            visiting.add(unit)
            out[unit] = minutes(unit) + max((path(w) for w in waiting[unit]), default=0.0)
        return out[unit]
    for unit in deps:
        path(unit)
    return out


def simulate(deps: dict[Unit, set[Unit]], minutes: Callable[[Unit], float], jobs: int) -> dict[Unit, tuple[float, float]]:
    """Each unit's estimated (start, end) minute when :func:`run_units` takes them in its order on ``jobs``
    workers and every estimate is right: ``max(end)`` is the run's estimated wall (``--plan``)."""
    rank = priorities(deps, minutes)
    pending, times = set(deps), {}
    free = [0.0] * jobs  # when each worker is next free
    while pending:
        now = min(free)
        ready = [u for u in pending if all(d in times and times[d][1] <= now for d in deps[u])]
        if not ready:  # nothing to start before the next unit ends
            later = [times[u][1] for u in times if times[u][1] > now]
            if not later:
                raise ValueError(f"units waiting on each other: {', '.join(str(u) for u in sorted(pending))}")
            free[free.index(now)] = min(later)
            continue
        unit = min(ready, key=lambda u: (-rank[u], u))
        pending.discard(unit)
        times[unit] = (now, now + minutes(unit))
        free[free.index(now)] = times[unit][1]
    return times


def fresh_processes(jobs: int) -> Executor:
    """``jobs`` spawned worker processes, each replaced by a new one after a unit (Python ≥ 3.11;
    before that, workers live for the whole run)."""
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), **fresh)


def run_units(deps: dict[Unit, set[Unit]], minutes: Callable[[Unit], float], jobs: int,
              work: Callable[..., Any], args: tuple = (), pools: Callable[[], Executor] | None = None) -> dict[Unit, Any]:
    """``work(unit.key, unit.kind, unit.arg, *args)`` for every unit, ``jobs`` at a time, each once the
    units it needs are done, the longest path first; returns every unit's result.

    ``pools`` makes the executor units run in (default: :func:`fresh_processes`); a new one
    replaces a pool whose worker process died, and the units that were running in it are failed (a crash cannot say
    which of them caused it).
    Raises :class:`UnitsFailed` after every unit that could run has run, when some failed.
    """
    rank = priorities(deps, minutes)
    pending, done, results = set(deps), set(), {}
    failed: dict[Unit, str] = {}
    running: dict[Future, Unit] = {}
    pools = pools or (lambda: fresh_processes(jobs))
    pool = pools()
    try:
        while pending or running:
            while blocked := sorted(u for u in pending if deps[u] & set(failed)):  # and what waits for those
                for unit in blocked:
                    pending.discard(unit)
                    failed[unit] = "skipped, as it needs " + ", ".join(str(u) for u in sorted(deps[unit] & set(failed)))
                    log.warning("unit %s %s", unit, failed[unit])
            ready = sorted((u for u in pending if deps[u] <= done), key=lambda u: (-rank[u], u))
            for unit in ready[:max(0, jobs - len(running))]:
                pending.discard(unit)
                running[pool.submit(work, unit.key, unit.kind, unit.arg, *args)] = unit
                log.info("unit %s started (about %.0f min; %d running, %d waiting)", unit, minutes(unit), len(running),
                         len(pending))
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                unit = running.pop(future)
                try:
                    results[unit] = future.result()
                except BrokenExecutor as exc:
                    failed[unit], broken = f"a worker process died ({exc or type(exc).__name__}); rerun to resume", True
                    log.error("unit %s failed: %s", unit, failed[unit])
                except Exception as exc:  # noqa: BLE001 - any unit's error is said now; the others go on
                    failed[unit] = f"{type(exc).__name__}: {exc}"
                    log.error("unit %s failed: %s", unit, failed[unit])
                else:
                    done.add(unit)
                    log.info("unit %s done", unit)
            if broken:  # the pool is unusable: what still runs in it fails too; the rest goes on in a new one
                for future, unit in running.items():
                    failed[unit] = "its worker pool broke while it ran; rerun to resume"
                    log.error("unit %s failed: %s", unit, failed[unit])
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = pools()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if pending:
        raise ValueError(f"units waiting on each other: {', '.join(str(u) for u in sorted(pending))}")
    if failed:
        raise UnitsFailed("; ".join(f"{u}: {why}" for u, why in sorted(failed.items())))
    return results


# -- measured minutes, from a run's quality_timing.json files -------------------------------
def work_seconds(timing: dict) -> float:
    """One teacher's benchmark work in seconds, from its ``quality_timing.json`` (see the Teachers table)."""
    parts = sum(timing.get("distill_score_latency_s_per_seed", {}).values())
    parts += sum(v for k, v in timing.items() if (k.startswith(("budget_", "long_")) and k.endswith("_s")
                                                   and isinstance(v, (int, float)) and not math.isnan(v)))
    return parts + timing.get("final_timing_s", 0.0) + timing.get("teacher_logits_s", 0.0)


def unit_minutes(timing: dict[str, dict]) -> dict:
    """Each teacher's measured units (``benchmarks.schedule.Unit`` → minutes) from its ``quality_timing.json``:
    the distillation per seed, each budget and long budget, the final pass (the teacher's logits with it)."""
    out = {}
    for key, t in timing.items():
        for seed, seconds in t.get("distill_score_latency_s_per_seed", {}).items():
            out[Unit(key, "distill", float(seed))] = seconds / 60
        for name, seconds in t.items():
            kind = name.split("_")[0]
            if kind in ("budget", "long") and name.endswith("_s") and isinstance(seconds, (int, float)) \
                    and not math.isnan(seconds):
                out[Unit(key, kind, float(name.split("_")[1]))] = seconds / 60
        out[Unit(key, "final")] = (t.get("final_timing_s", 0.0) + t.get("headline_timing_s", 0.0) + t.get("teacher_logits_s", 0.0)) / 60
    return out


def scheduled_wall(timing: dict[str, dict], jobs: int = 2) -> float:
    """Minutes the run's units take on ``jobs`` workers in ``--jobs``' order (``benchmarks.schedule.simulate``)
    at their measured minutes, teachers cached: the wall of one uninterrupted run of them."""
    measured = unit_minutes(timing)
    deps = {}
    for unit in measured:
        own = {u for u in measured if u.key == unit.key}
        if unit.kind in ("budget", "long"):
            deps[unit] = {u for u in own if u.kind == "distill"}
        elif unit.kind == "final":
            deps[unit] = own - {unit}
        else:
            deps[unit] = set()
    times = simulate(deps, measured.__getitem__, jobs)
    return max((end for _, end in times.values()), default=0.0)

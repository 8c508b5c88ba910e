"""Running the quality benchmark's teachers (``python -m benchmarks.quality``): each one whole
(:func:`run_teacher`), or all of them as units over ``--jobs`` worker processes
(:func:`run_scheduled`, ``benchmarks.schedule``): a teacher's training when it is not cached,
each seed's distillation, each budget and long fine-tune budget, and the final pass.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from benchmarks.quality import MODES, long_finetune_for, recipe_for, teacher_config


def git_commit() -> str:
    """This checkout's commit (short; ``+`` when it has changes), or ``unknown``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
                               check=False)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _quiet_logging(label: str) -> None:
    """Parallel workers: one ``[label]``-prefixed log line per step instead of interleaved progress bars."""
    import logging

    os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is first imported (torch imports it)
    lana_log = logging.getLogger("lana")
    for old in [h for h in lana_log.handlers if getattr(h, "quality_teacher", False)]:
        lana_log.removeHandler(old)  # a worker's previous unit: one prefix per line
    handler = logging.StreamHandler()
    handler.quality_teacher = True
    handler.setFormatter(logging.Formatter(f"[{label}] %(asctime)s %(message)s", "%H:%M:%S"))
    lana_log.addHandler(handler)
    lana_log.setLevel(logging.INFO)


def _record_attempt(path: Path, what: str) -> None:
    """Append which checkout made this attempt (``RUN/<teacher>/attempts.json``); units of one teacher run at once."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = json.loads(path.read_text()) if path.is_file() else []
        entry = {"commit": git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), **({"unit": what} if what else {})}
        path.write_text(json.dumps(before + [entry]) + "\n")


def _prepared(mode: str, key: str, out: str, data_root: str | None, overrides: list[str], recipe_overrides: dict | None,
              unit: str | None):
    """Threads set, the attempt recorded (``unit`` None: none), the teacher from the cache (trained
    when missing) and its lana config: what every piece of teacher ``key``'s work starts with."""
    import torch

    from benchmarks.teachers import prepare_teacher

    preset = MODES[mode]
    if preset["threads"]:
        torch.set_num_threads(preset["threads"])
    if unit is not None:
        (Path(out) / key).mkdir(parents=True, exist_ok=True)
        _record_attempt(Path(out) / key / "attempts.json", unit)
    recipe = recipe_for(mode, key, recipe_overrides)
    model, kwargs = preset["teachers"][key]
    teacher = prepare_teacher(model, kwargs, recipe, data_root=data_root, label=key)
    return teacher, teacher_config(mode, key, teacher["weights"], recipe, data_root, overrides)


def seed_context(mode: str, key: str, out: str, seed: int, data_root: str | None = None):
    """Teacher ``key``'s lana context for ``seed`` in run folder ``out`` (its distillation done,
    read, not run): what the tools that study one seed's table start from."""
    from benchmarks.compare import distill_seed

    _, config = _prepared(mode, key, out, data_root, [], None, None)
    return distill_seed(config, Path(out) / key, seed, run_stage=False)[0]


def run_teacher(mode: str, key: str, out: str, data_root: str | None, overrides: list[str], shares: list[float],
                seeds: list[int], methods: list[str], quiet: bool = False, recipe_overrides: dict | None = None,
                long_shares: list[float] | None = None, unit: str = "", distill: bool = True, final: bool = True) -> pd.DataFrame:
    """One teacher's comparison (``compare_teacher``): all of it, or one unit of it (``unit`` names it
    in ``attempts.json``; ``distill``/``final`` as there; :func:`run_unit`)."""
    if quiet:
        _quiet_logging(key)
    from benchmarks.compare import compare_teacher
    from benchmarks.search import BAND

    preset = MODES[mode]
    teacher, config = _prepared(mode, key, out, data_root, overrides, recipe_overrides, unit)
    tick = time.time()
    long = long_finetune_for(mode, key, long_shares)
    frame = compare_teacher(config, Path(out) / key, shares, seeds, preset["random"], tuple(methods),
                            preset["max_measurements"], preset["max_equal_epochs"],
                            train_teacher=lambda *_: teacher["wall_s"], band=tuple(preset.get("band", BAND)),
                            long=long if "lana" in methods else None, distill=distill, final=final)
    frame["recipe_hash"] = teacher["hash"][:16]
    frame["key"] = key
    frame["wall_s"] = time.time() - tick
    return frame


def run_unit(key: str, kind: str, arg: float | None, mode: str, out: str, data_root: str | None, overrides: list[str],
             shares: list[float], seeds: list[int], methods: list[str], recipe_overrides: dict | None,
             long_shares: list[float] | None) -> pd.DataFrame | None:
    """One :class:`benchmarks.schedule.Unit` of teacher ``key``'s work, in a ``--jobs`` worker process:
    the comparison's frame for a budget (its rows) or the final pass (all rows), else None."""
    from benchmarks.schedule import Unit

    unit = str(Unit(key, kind, arg))
    _quiet_logging(unit)
    if kind in ("budget", "long", "final"):  # the seeds' distillations are done: read, not run
        cell = {"budget": ([arg], []), "long": ([], [arg]), "final": (shares, long_shares)}[kind]
        return run_teacher(mode, key, out, data_root, overrides, cell[0], seeds, methods, False, recipe_overrides, cell[1],
                           unit, distill=False, final=kind == "final")
    from benchmarks.compare import distill_seed

    # the "teacher" unit trains the teacher (nothing recorded in the run folder); "distill" one seed's stage
    _, config = _prepared(mode, key, out, data_root, overrides, recipe_overrides, unit if kind == "distill" else None)
    if kind == "distill":
        distill_seed(config, Path(out) / key, int(arg))
    return None


def units_of(mode: str, keys: list[str], seeds: list[int], shares: list[float], methods: list[str],
             recipe_overrides: dict | None, long_shares: list[float] | None, out: str | None = None):
    """The run's units and what each needs (``benchmarks.schedule.plan``), and their estimated minutes
    (0 for a unit whose file in the run folder ``out`` says it is done)."""
    from benchmarks.schedule import plan
    from benchmarks.teachers import cached

    preset = MODES[mode]
    cached_keys = {k for k in keys if cached(*preset["teachers"][k], recipe_for(mode, k, recipe_overrides)) is not None}
    longs = {k: long_finetune_for(mode, k, long_shares)["shares"] if "lana" in methods else [] for k in keys}
    deps = plan(keys, seeds, shares, longs, {k: _teachers_named(preset.get("teacher_recipes", {}).get(k)) for k in keys},
                cached_keys)
    estimates = preset.get("unit_minutes", {})

    def minutes(unit) -> float:
        return 0.0 if out and _done(Path(out) / unit.key, unit) else float(estimates.get(unit.key, {}).get(unit.kind, 1.0))
    return deps, minutes


def _done(folder: Path, unit) -> bool:
    """Whether teacher ``unit.key``'s run folder holds ``unit``'s result (a resumed unit reuses it)."""
    from lana.run.folder import TABLE

    if unit.kind == "distill":
        return (folder / f"seed{unit.arg:g}" / f"{TABLE}.parquet").is_file()
    if unit.kind in ("budget", "long"):
        return (folder / f"{'budget' if unit.kind == 'budget' else 'long'}_{unit.arg:g}.pt").is_file()
    return False  # the teacher has no unit once cached; the final pass always times every network again


def run_scheduled(keys: list[str], jobs: int, mode: str, out: str, data_root: str | None, overrides: list[str],
                  shares: list[float], seeds: list[int], methods: list[str], recipe_overrides: dict | None,
                  long_shares: list[float] | None) -> list[pd.DataFrame]:
    """Every teacher's work as units over ``jobs`` processes (``benchmarks.schedule``); the teachers' frames."""
    from benchmarks.schedule import run_units

    deps, minutes = units_of(mode, keys, seeds, shares, methods, recipe_overrides, long_shares, out)
    _quiet_logging("schedule")
    results = run_units(deps, minutes, jobs, run_unit, (mode, out, data_root, overrides, shares, seeds, methods,
                                                         recipe_overrides, long_shares))
    return [results[u] for u in sorted(results, key=lambda u: keys.index(u.key)) if u.kind == "final"]


def plan_text(mode: str, keys: list[str], jobs: int, seeds: list[int], shares: list[float], methods: list[str],
              recipe_overrides: dict | None, long_shares: list[float] | None, out: str | None = None) -> str:
    """``--plan``: every unit with its estimated minutes (0 where the run folder ``out`` holds it),
    and the estimated wall on ``jobs`` workers."""
    from benchmarks.schedule import simulate

    deps, minutes = units_of(mode, keys, seeds, shares, methods, recipe_overrides, long_shares, out)
    times = simulate(deps, minutes, jobs)
    lines = ["| unit | needs | estimate (min) | starts at (min) |", "| --- | --- | --- | --- |"]
    for unit, (start, _) in sorted(times.items(), key=lambda item: item[1]):
        needs = ", ".join(str(u) for u in sorted(deps[unit])) or "-"
        lines.append(f"| {unit} | {needs} | {minutes(unit):g} | {start:g} |")
    work = sum(minutes(u) for u in deps)
    wall = max(end for _, end in times.values())
    lines.append(f"\n{len(deps)} units, {work:g} min of work left: about {wall:g} min on {jobs} worker(s) "
                 f"(estimates per unit: the mode's unit_minutes; 0: done in {out}).")
    return "\n".join(lines)


def _teachers_named(recipe) -> set[str]:
    """The teacher keys a recipe's ``init``/``kd`` entries name, however deep."""
    if isinstance(recipe, dict):
        return ({recipe["key"]} if isinstance(recipe.get("key"), str) else set()).union(
            *(_teachers_named(v) for v in recipe.values()))
    return set()

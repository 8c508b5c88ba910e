"""``lana solve`` on a run folder: read its table, measured latency and config; write
``selection.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lana.errors import (
    ConfigError,
    RunFolderError,
)
from lana.latency.drift import drift_pct, speed_ratio
from lana.names import DEFAULT_SOLVER, LATENCY
from lana.selection import (
    SolveInputs,
    build_problem,
    read_table,
    solve_inputs,
    write_json_atomic,
)


def load_run(run_dir: Path) -> SolveInputs:
    """The candidates table, measured latencies and ``solve`` config of a run folder."""
    hint = f"run `lana distill --run {run_dir}` first"
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} not found; {hint}")
    table_path = next((run_dir / f"candidates{s}" for s in (".parquet", ".csv") if (run_dir / f"candidates{s}").is_file()), None)
    if table_path is None:
        raise RunFolderError(f"{run_dir} has no candidates.parquet (or .csv); {hint}")
    latency_path = run_dir / "latency.json"
    if not latency_path.is_file():
        raise RunFolderError(f"{run_dir} has no latency.json; {hint}")
    try:
        latency = json.loads(latency_path.read_text())
        teacher_ms, offset_ms = float(latency["teacher_latency_ms"]), float(latency.get("fixed_latency_ms", 0.0))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunFolderError(f"{latency_path} is corrupted or lacks teacher_latency_ms ({exc}); {hint}") from None
    config: dict = {}
    if (run_dir / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{run_dir / 'config.yaml'} is not valid YAML ({str(exc).splitlines()[0]}); fix it") from None
        config = (loaded.get("solve") or {}) if isinstance(loaded, dict) else {}
        if not isinstance(config, dict):
            raise ConfigError(f"{run_dir / 'config.yaml'}: 'solve' must be a section (budget, solver, top_k), "
                              f"found {type(config).__name__} {config!r}; fix it")

    offsets, teachers = latency_offsets(latency)
    offsets.pop(LATENCY, None)
    teachers = {k: v for k, v in teachers.items() if k != LATENCY and v is not None}
    table = read_table(table_path)
    speed = reference_speed(run_dir, latency)
    if speed != 1.0:  # the one drift conversion: figures at the machine's present speed, so an ms budget means ms now
        table[LATENCY] = table[LATENCY] * speed
        teacher_ms, offset_ms = teacher_ms * speed, offset_ms * speed
    inputs = SolveInputs(table, run_dir, run_dir, teacher_ms, offset_ms, config, offsets, teachers)
    inputs.reference_drift_pct = drift_pct(speed) if speed != 1.0 else None
    inputs.reference_speed = speed
    return inputs


def reference_speed(run_dir: Path, latency: dict) -> float:
    """Teacher now / teacher at profiling from ``RUN/reference.json`` (1 without one, or a stale one).

    A reference taken for another profile (other tag, or before the run was re-profiled) is
    ignored: its teacher figure does not belong to these figures.
    """
    path = run_dir / "reference.json"
    if not path.is_file():
        return 1.0
    try:
        ref = json.loads(path.read_text())
        if ref["tag"] != latency.get("tag") or abs(ref["teacher_profiled_ms"] - latency["teacher_latency_ms"]) > 1e-9:
            return 1.0
        return speed_ratio(float(ref["teacher_now_ms"]), float(ref["teacher_profiled_ms"]))
    except (ValueError, KeyError, TypeError):
        return 1.0


def solve_run(run: Any, budget: str | None = None, solver: str | None = None, time_limit: float | None = None,
              max_params: str | None = None, max_macs: str | None = None, *, costs: list[str] | None = None,
              top_k: int = 1, out: Path | None = None, inputs: SolveInputs | None = None) -> dict:
    """Solve a run folder for ``budget`` (default: its config's) and write ``RUN/selection.json``.

    ``lana solve --run``, ``Run.solve`` and the budget check all solve a run through here.

    Args:
        run: the run folder (a path or anything with a ``path``).
        budget: e.g. ``"5ms"`` or ``"50%"``; default ``solve.budget`` of ``RUN/config.yaml``
            (none needed where ``costs``, ``max_params`` or ``max_macs`` limit the solve).
        solver: a solver name; default ``solve.solver`` of the config, else ``auto``.
        time_limit: seconds the solver may take.
        max_params, max_macs: further limits, e.g. ``"3M"``.
        costs: further limits ``'COLUMN<=VALUE'`` (``lana solve --cost``).
        top_k: also describe the K best distinct selections (``top_k`` in the record).
        out: where to write the record (default ``RUN/selection.json``).
        inputs: the run already read by :func:`load_run` (read here when None).
    Returns:
        The selection record that was written.
    """
    inputs = inputs or load_run(Path(getattr(run, "path", run)))
    if budget is None and (inputs.config.get("budget") is not None or not (costs or max_params or max_macs)):
        budget = _config_budget(inputs)
    problem, limits = build_problem(inputs, budget, max_params, max_macs, costs)
    record = solve_inputs(inputs, problem, limits, solver or inputs.config.get("solver") or DEFAULT_SOLVER, time_limit, top_k)
    write_json_atomic(out if out is not None else inputs.run_dir / "selection.json", record)
    return record


def _config_budget(inputs: SolveInputs) -> str:
    budget = inputs.config.get("budget")
    if budget is None:
        raise ConfigError(f"no --budget given and {inputs.run_dir / 'config.yaml'} has no solve.budget; pass e.g. --budget 5ms or 50%")
    return str(budget)


def latency_offsets(latency: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Per latency column: the fixed part to add, and the measured teacher latency (for ``50%`` budgets)."""
    offsets = {LATENCY: latency.get("fixed_latency_ms", 0.0)}
    teacher = {LATENCY: latency.get("teacher_latency_ms")}
    for tag, record in (latency.get("profiles") or {}).items():
        offsets[f"{LATENCY}:{tag}"] = record.get("fixed_latency_ms", 0.0)
        teacher[f"{LATENCY}:{tag}"] = record.get("teacher_latency_ms")
    return offsets, teacher

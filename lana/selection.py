"""Solving a candidates table under limits: parse budgets and limits, build the
:class:`solvers.SelectionProblem`, solve, describe the selection; Pareto sweeps.

Torch-free, so that ``lana solve --table`` starts fast.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lana.errors import (
    BudgetError,
    ConfigError,
    InfeasibleError,
    TableError,
)
from lana.lazy import lazy_import
from lana.names import LATENCY, TEACHER_OP
from lana.run.folder import atomic_write_bytes, atomic_write_text
from solvers import (
    Selection,
    SelectionProblem,
    best_reachable,
    round_outward,
    solve_selection,
    standard_cost_columns,
    sweep_budgets,
    top_k_selections,
)

pd = lazy_import("pandas")  # loaded when a table is first used: `lana solve --help` never pays for it

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_BUDGET = re.compile(rf"^\s*(-?){_NUMBER}\s*(ms|us|µs|s|%)?\s*$", re.IGNORECASE)  # a sign only to say it must be positive
_COUNT = re.compile(rf"^\s*{_NUMBER}\s*([kmgb]?)\s*$", re.IGNORECASE)
_LIMIT = re.compile(r"^\s*(.+?)\s*(<=|>=)\s*(.+?)\s*$")
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_COUNT_UNIT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_OPTION = {"latency_ms": "--budget (budget= in Python)", "params": "--max-params (max_params=)",
           "macs": "--max-macs (max_macs=)"}


# -- parsing ---------------------------------------------------------------------------
def parse_budget(text: str, reference_ms: float | None) -> float:
    """A latency budget in milliseconds from ``5ms``, ``500us``, ``0.005s``, ``2.5 ms`` or ``50%``.

    Args:
        text: the budget as typed.
        reference_ms: what ``100%`` is (the teacher's measured latency), or None if unknown.
    Raises:
        BudgetError: no unit, not a number, not positive, or a share with no reference.
    """
    match = _BUDGET.match(str(text))
    if not match:
        raise BudgetError(f"budget '{text}' is not a latency; write e.g. 5ms, 500us, 0.005s or 50%")
    value, unit = float(match.group(1) + match.group(2)), (match.group(3) or "").lower()
    if not unit:
        raise BudgetError(f"budget '{text}' has no unit; write e.g. 5ms, 500us, 0.005s or 50%")
    if value <= 0:
        raise BudgetError(f"budget '{text}' must be positive; write e.g. 5ms or 50%")
    if unit == "%":
        if reference_ms is None:
            raise BudgetError(f"budget '{text}' is a share of the teacher's latency, which is not known here; "
                              f"write an absolute budget such as 5ms (or use --run, or add 'teacher' rows)")
        return value / 100.0 * reference_ms
    return value * _TO_MS[unit]


def parse_count(text: str, option: str) -> float:
    """A count such as ``3M``, ``500k``, ``1.5G`` or ``3000000``."""
    match = _COUNT.match(str(text))
    if not match:
        raise BudgetError(f"{option} '{text}' is not a count; write e.g. 3M, 500k or 3000000")
    return float(match.group(1)) * _COUNT_UNIT[match.group(2).lower()]


def parse_limit(text: str, references: dict[str, float]) -> tuple[str, str, float]:
    """``COLUMN<=VALUE`` or ``COLUMN>=VALUE`` -> (column, sense, value); latency columns take units."""
    match = _LIMIT.match(text)
    if not match:
        raise BudgetError(f"--cost '{text}' is not a limit; write e.g. 'latency_ms:cuda-b64-float16-eager<=2ms' or 'params<=3M'")
    column, sense, value = match.groups()
    if column.startswith(LATENCY):
        return column, sense, parse_budget(value, references.get(column))
    return column, sense, parse_count(value, f"--cost {column}")


# -- inputs ----------------------------------------------------------------------------
@dataclass
class SolveInputs:
    """The table to solve and what the run folder says about it."""

    table: pd.DataFrame
    home: Path  # where outputs go by default (run folder, or the table's folder)
    run_dir: Path | None = None
    teacher_ms: float | None = None  # measured whole-teacher latency
    offset_ms: float = 0.0  # measured latency no choice changes
    config: dict = field(default_factory=dict)  # the run config's ``solve`` section
    # per extra latency column ``latency_ms:<tag>`` (other profiles): fixed part and teacher latency
    tag_offsets: dict = field(default_factory=dict)
    tag_teacher_ms: dict = field(default_factory=dict)
    # teacher now vs at profiling (RUN/reference.json), in %: latency figures were converted with it
    reference_drift_pct: float | None = None
    reference_speed: float = 1.0  # the same as a factor (teacher now / at profiling): latency_ms = profiled × this


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet candidates table; any problem is a one-line TableError."""
    if not path.is_file():
        raise TableError(f"table {path} not found; pass an existing CSV or Parquet file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise TableError(f"table {path} should end in .csv or .parquet, found '{suffix}'; convert or rename it")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TableError(f"table {path} cannot be read ({reason}); fix or rewrite it") from None


def teacher_index(problem: SelectionProblem) -> np.ndarray | None:
    """Local row of the ``teacher`` candidate in every block, or None if a block lacks one."""
    rows = []
    for a, z in zip(problem.block_start[:-1], problem.block_start[1:]):
        hits = np.flatnonzero(problem.candidates[a:z] == TEACHER_OP)
        if len(hits) == 0:
            return None
        rows.append(a + hits[0])
    return np.array(rows)


# -- the stage -------------------------------------------------------------------------
@dataclass
class Limits:
    """Limits on cost totals (offsets included) and how the latency budget was written."""

    upper: dict[str, float] = field(default_factory=dict)
    lower: dict[str, float] = field(default_factory=dict)
    budget_text: str | None = None


def build_problem(inputs: SolveInputs, budget: str | None, max_params: str | None = None,
                  max_macs: str | None = None, costs: list[str] | None = None) -> tuple[SelectionProblem, Limits]:
    """Parse every limit and build the selection problem (latency offset from the run folder)."""
    offsets = {LATENCY: inputs.offset_ms} if inputs.offset_ms and LATENCY in inputs.table.columns else {}
    offsets.update({c: v for c, v in inputs.tag_offsets.items() if v and c in inputs.table.columns})
    unlimited = SelectionProblem.from_frame(inputs.table, offsets=offsets, costs=_cost_columns(inputs.table, costs))
    teacher = teacher_index(unlimited)
    references = {} if teacher is None else dict(zip(unlimited.cost_names, unlimited.totals(teacher)))
    if inputs.teacher_ms is not None:
        references[LATENCY] = inputs.teacher_ms
    references.update(inputs.tag_teacher_ms)
    limits = Limits(budget_text=budget)
    if budget is not None:
        limits.upper[LATENCY] = parse_budget(budget, references.get(LATENCY))
    for column, text, option in (("params", max_params, "--max-params"), ("macs", max_macs, "--max-macs")):
        if text is not None:
            limits.upper[column] = parse_count(text, option)
    for text in costs or []:
        column, sense, value = parse_limit(text, references)
        side = limits.upper if sense == "<=" else limits.lower
        if column in side:
            raise ConfigError(f"'{column}' is limited twice (by '{text}' and another option); keep one")
        side[column] = value
    return unlimited.with_limits(limits.upper, limits.lower), limits


def _cost_columns(table: pd.DataFrame, costs: list[str] | None) -> list[str]:
    named = [m.group(1) for m in (_LIMIT.match(t) for t in costs or []) if m]
    return list(dict.fromkeys([*standard_cost_columns(table.columns), *named]))


def describe(selection: Selection, inputs: SolveInputs, limits: Limits) -> dict[str, Any]:
    """The selection as the JSON record written to ``selection.json`` and printed by ``--json``."""
    acc = inputs.table["acc_delta"].iloc[selection.rows] if "acc_delta" in inputs.table.columns else None
    return {
        "choice": selection.choice,
        "budget": limits.budget_text,
        "budget_ms": limits.upper.get(LATENCY),
        "predicted_latency_ms": selection.totals.get(LATENCY),
        "predicted_acc_delta": None if acc is None or acc.isna().any() else float(acc.sum()),
        "objective": selection.objective,
        "totals": selection.totals,
        "solver": selection.solver,
        "optimal": selection.optimal,
        "gap": selection.gap,
        "seconds": selection.seconds,
        "limits": {"upper": limits.upper, "lower": limits.lower, "offsets": {LATENCY: inputs.offset_ms, **inputs.tag_offsets}},
        "reference_drift_pct": inputs.reference_drift_pct,
        "reference_speed": inputs.reference_speed,
    }


def explain(error: InfeasibleError, limits: Limits, offsets: dict[str, float] | None = None) -> InfeasibleError:
    """Reword a solver's infeasibility in terms of the command-line options; where the part of
    the network outside the blocks (``offsets``) takes half the budget or more, say so."""
    report = getattr(error, "report", None)
    if report is None or report.kind != "upper":
        return error
    fix = round_outward(report.reachable, "upper")
    option = _OPTION.get(report.cost, f"--cost '{report.cost}<=...'")
    unit = " ms" if report.cost.startswith(LATENCY) else ""
    what = "latency budget" if report.cost == LATENCY else f"{report.cost} limit"
    word = "fastest" if report.cost.startswith(LATENCY) else "smallest"
    under = f" under {', '.join(report.others)}" if report.others else ""
    message = (f"{what} {report.limit:.4g}{unit} is below the {word} reachable {report.reachable:.4g}{unit}{under}; "
               f"raise {option} to at least {fix}{unit.strip()}")
    fixed = (offsets or {}).get(report.cost, 0.0)
    if report.cost.startswith(LATENCY) and fixed >= 0.5 * report.limit:
        message += (f" (the layers outside the replaceable blocks alone take {fixed:.4g} ms: name more of them as "
                    "blocks, teacher.blocks or blocks=, to replace them too)")
    new = InfeasibleError(message)
    new.report = report
    return new


def solve_inputs(inputs: SolveInputs, problem: SelectionProblem, limits: Limits, solver: str,
                 time_limit: float | None = None, top_k: int = 1) -> dict[str, Any]:
    """Solve and describe: the best selection's record, with ``top_k`` alternatives when asked."""
    try:
        if top_k > 1:
            found = top_k_selections(problem, top_k, solver, time_limit)
        else:
            found = [solve_selection(problem, solver, time_limit)]
    except InfeasibleError as error:
        raise explain(error, limits, problem.offsets) from None
    record = describe(found[0], inputs, limits)
    if top_k > 1:
        record["top_k"] = [describe(s, inputs, limits) for s in found]
    return record


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (strict: NaN is refused rather than written as invalid JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# -- Pareto sweep ----------------------------------------------------------------------
def sweep_inputs(inputs: SolveInputs, problem: SelectionProblem, points: int, solver: str,
                 time_limit: float | None, folder: Path) -> tuple[pd.DataFrame, Path, Path]:
    """Solve ``points`` budgets from the fastest reachable latency to the teacher's; write CSV and PNG."""
    if LATENCY not in problem.cost_names:
        raise TableError(f"--sweep needs a '{LATENCY}' column; found {', '.join(map(str, inputs.table.columns))}")
    fastest = best_reachable(problem, LATENCY, "upper", solver)[0]
    teacher = teacher_index(problem)
    slowest = problem.totals(teacher) if teacher is not None else problem.max_totals()
    budgets = np.linspace(fastest, max(fastest, float(slowest[problem.cost_names.index(LATENCY)])), points)
    rows = []
    for budget, result in zip(budgets, sweep_budgets(problem, LATENCY, list(budgets), solver, time_limit)):
        row: dict[str, Any] = {"budget_ms": float(budget), "feasible": isinstance(result, Selection)}
        if isinstance(result, Selection):
            record = describe(result, inputs, Limits(upper={LATENCY: float(budget)}))
            row.update({k: record[k] for k in ("predicted_latency_ms", "predicted_acc_delta", "objective",
                                                "optimal", "gap", "seconds", "solver")})
            row["changed_blocks"] = sum(op != TEACHER_OP for op in result.choice.values())
            row["choice"] = json.dumps(result.choice)
        rows.append(row)
    frame = pd.DataFrame(rows)
    csv_path, png_path = folder / "sweep.csv", folder / "sweep.png"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    atomic_write_bytes(png_path, plot_sweep(frame, folder, inputs.teacher_ms))
    return frame, csv_path, png_path


def plot_sweep(frame: pd.DataFrame, folder: Path, teacher_ms: float | None) -> bytes:
    """PNG bytes: predicted accuracy change (or objective) against predicted latency, with marks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = frame[frame["feasible"]].sort_values("predicted_latency_ms") if "predicted_latency_ms" in frame else frame.iloc[:0]
    y = "predicted_acc_delta" if done.get("predicted_acc_delta") is not None and done["predicted_acc_delta"].notna().all() else "objective"
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(done):
        ax.plot(done["predicted_latency_ms"], done[y], "-o", ms=4, label="optimal selection per budget (Pareto)")
    marks = _marks(folder)
    if "selection" in marks:
        ax.plot(*marks["selection"], "*", ms=14, color="tab:red", label="current selection.json")
    if teacher_ms is not None:
        ax.axvline(teacher_ms, color="grey", ls=":", label=f"teacher measured {teacher_ms:.3g} ms")
    if "measured" in marks:
        twin = ax.twinx()
        twin.plot(*marks["measured"], "s", color="tab:green", label="measured")
        twin.set_ylabel("measured accuracy (measured.csv)")
        twin.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("predicted accuracy change (points)" if y == "predicted_acc_delta" else "objective (summed score)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _marks(folder: Path) -> dict[str, tuple]:
    marks = {}
    selection = folder / "selection.json"
    if selection.is_file():
        try:
            record = json.loads(selection.read_text())
            if record.get("predicted_latency_ms") is not None:
                marks["selection"] = (record["predicted_latency_ms"], record.get("predicted_acc_delta") or record["objective"])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a mark is a courtesy; a broken file must not stop the sweep
    measured = folder / "measured.csv"
    if measured.is_file():
        table = read_table(measured)
        if {"latency_ms_measured", "acc_measured"} <= set(table.columns):
            marks["measured"] = (table["latency_ms_measured"], table["acc_measured"])
    return marks

"""``lana solve``: choose one candidate per block under a latency budget and other limits.

Reads a run folder (``candidates.parquet``, ``latency.json``, ``config.yaml``) or any CSV /
Parquet table with ``block``, ``candidate``, ``score`` and cost columns, builds a
:class:`solvers.SelectionProblem`, solves it and writes the selection atomically. Also: Pareto
sweeps over budgets (CSV + PNG) and the K best distinct selections.
"""
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
import yaml

from lana.rundir import atomic_write_bytes, atomic_write_text
from lana.errors import BudgetError, ConfigError, InfeasibleError, RunFolderError, TableError
from solvers import (
    Selection, SelectionProblem, best_reachable, round_outward, solve_selection, standard_cost_columns, sweep_budgets,
    top_k_selections,
)

LATENCY = "latency_ms"
TEACHER = "teacher"
DEFAULT_SOLVER = "auto"
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_BUDGET = re.compile(rf"^\s*{_NUMBER}\s*(ms|us|µs|s|%)?\s*$", re.IGNORECASE)
_COUNT = re.compile(rf"^\s*{_NUMBER}\s*([kmgb]?)\s*$", re.IGNORECASE)
_LIMIT = re.compile(r"^\s*(.+?)\s*(<=|>=)\s*(.+?)\s*$")
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_COUNT_UNIT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_OPTION = {"latency_ms": "--budget", "params": "--max-params", "macs": "--max-macs"}


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
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
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
        raise BudgetError(f"--cost '{text}' is not a limit; write e.g. 'latency_ms:cuda-b64-fp16<=2ms' or 'params<=3M'")
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
            loaded = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{run_dir / 'config.yaml'} is not valid YAML ({str(exc).splitlines()[0]}); fix it") from None
        config = (loaded.get("solve") or {}) if isinstance(loaded, dict) else {}
    from lana.profile import latency_offsets

    offsets, teachers = latency_offsets(latency)
    offsets.pop(LATENCY, None)
    teachers = {k: v for k, v in teachers.items() if k != LATENCY and v is not None}
    return SolveInputs(read_table(table_path), run_dir, run_dir, teacher_ms, offset_ms, config, offsets, teachers)


def teacher_index(problem: SelectionProblem) -> np.ndarray | None:
    """Local row of the ``teacher`` candidate in every block, or None if a block lacks one."""
    rows = []
    for a, z in zip(problem.block_start[:-1], problem.block_start[1:]):
        hits = np.flatnonzero(problem.candidates[a:z] == TEACHER)
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
    }


def explain(error: InfeasibleError, limits: Limits) -> InfeasibleError:
    """Reword a solver's infeasibility in terms of the command-line options."""
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
        raise explain(error, limits) from None
    record = describe(found[0], inputs, limits)
    if top_k > 1:
        record["top_k"] = [describe(s, inputs, limits) for s in found]
    return record


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (strict: NaN is refused rather than written as invalid JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def solve_run(run: Any, budget: str | None = None, solver: str | None = None, time_limit: float | None = None) -> dict:
    """Solve a run folder for ``budget`` (default: its config's) and write ``RUN/selection.json``.

    Args:
        run: the run folder (a path or anything with a ``path``).
        budget: e.g. ``"5ms"`` or ``"50%"``; default ``solve.budget`` of ``RUN/config.yaml``.
        solver: a solver name; default ``solve.solver`` of the config, else ``auto``.
    Returns:
        The selection record that was written.
    """
    inputs = load_run(Path(getattr(run, "path", run)))
    budget = budget if budget is not None else _config_budget(inputs)
    problem, limits = build_problem(inputs, budget)
    record = solve_inputs(inputs, problem, limits, solver or inputs.config.get("solver") or DEFAULT_SOLVER, time_limit)
    write_json_atomic(inputs.run_dir / "selection.json", record)
    return record


def _config_budget(inputs: SolveInputs) -> str:
    budget = inputs.config.get("budget")
    if budget is None:
        raise ConfigError(f"no --budget given and {inputs.run_dir / 'config.yaml'} has no solve.budget; pass e.g. --budget 5ms or 50%")
    return str(budget)


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
            row["changed_blocks"] = sum(op != TEACHER for op in result.choice.values())
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


# -- printing --------------------------------------------------------------------------
def print_selection(record: dict, inputs: SolveInputs) -> None:
    """A readable table of the choice, then the predicted totals and how the solve went."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="selection")
    for name in ("block", "chosen op", "latency ms", "acc_delta"):
        table.add_column(name, justify="left" if name in ("block", "chosen op") else "right")
    keyed = inputs.table.assign(block=inputs.table["block"].astype(str), candidate=inputs.table["candidate"].astype(str))
    keyed = keyed.set_index(["block", "candidate"])
    for block, op in record["choice"].items():
        row = keyed.loc[(block, op)]
        style = "dim" if op == TEACHER else None
        table.add_row(block, op, _fmt(row.get(LATENCY)), _fmt(row.get("acc_delta")), style=style)
    console.print(table)
    if record["predicted_latency_ms"] is not None:
        console.print(f"predicted latency     {record['predicted_latency_ms']:.4g} ms (budget {_fmt(record['budget_ms'])} ms)")
    if record["predicted_acc_delta"] is not None:
        console.print(f"predicted acc change  {record['predicted_acc_delta']:+.3f} points")
    for name, total in record["totals"].items():
        if name != LATENCY:
            console.print(f"total {name:<15} {total:.4g}")
    proof = "proven optimal" if record["optimal"] else f"not proven optimal (gap {_fmt(record['gap'])} score units)"
    console.print(f"objective {record['objective']:.6g}; solver {record['solver']}, {record['seconds']:.3f} s, {proof}")
    for rank, alt in enumerate(record.get("top_k", [])[1:], start=2):
        changed = sum(alt["choice"][b] != op for b, op in record["choice"].items())
        console.print(f"#{rank}: objective {alt['objective']:.6g}, latency {_fmt(alt['predicted_latency_ms'])} ms, "
                      f"{changed} block(s) differ from #1")


def _fmt(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


# -- the command -----------------------------------------------------------------------
def solve_command(
    run: Annotated[Optional[Path], typer.Option("--run", metavar="DIR", help="Run folder written by `lana distill` (reads candidates.parquet, latency.json, config.yaml).")] = None,
    table: Annotated[Optional[Path], typer.Option("--table", metavar="FILE", help="Bring-your-own CSV or Parquet table with columns block, candidate, score and cost columns (latency_ms, params, macs, ...).")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", metavar="TEXT", help="Latency budget on the predicted total: 5ms, 500us, 0.005s or 50% of the teacher's latency. Run mode default: solve.budget of config.yaml.")] = None,
    solver: Annotated[Optional[str], typer.Option("--solver", metavar="NAME", help="auto (exact DP for one latency limit, MIP otherwise), pulp (CBC), cpsat, scip, mckp or brute. Run mode default: solve.solver of config.yaml, else auto.")] = None,
    cost: Annotated[Optional[list[str]], typer.Option("--cost", metavar="'COLUMN<=VALUE'", help="Extra limit 'COLUMN<=VALUE' or 'COLUMN>=VALUE', repeatable, e.g. 'latency_ms:cuda-b64-fp16<=2ms' or 'params<=3M'.")] = None,
    max_params: Annotated[Optional[str], typer.Option("--max-params", metavar="COUNT", help="Limit on total parameters: 3M, 500k or 3000000.")] = None,
    max_macs: Annotated[Optional[str], typer.Option("--max-macs", metavar="COUNT", help="Limit on total multiply-accumulates: 600M, 1.2G, ...")] = None,
    sweep: Annotated[Optional[int], typer.Option("--sweep", metavar="N", help="Solve N budgets from the fastest reachable latency to the teacher's; write sweep.csv and sweep.png.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", help="Return the K best distinct selections, best first.")] = 1,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", metavar="SECONDS", help="Seconds per solve; when reached, the best selection found is returned with its proven gap.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (nothing else).")] = False,
    export: Annotated[bool, typer.Option("--export", help="Run mode: export the selected student right after solving.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Where to write the selection JSON (run mode default: RUN/selection.json).")] = None,
) -> None:
    """Choose one candidate per block: highest predicted accuracy within the latency budget and other limits."""
    if (run is None) == (table is None):
        raise ConfigError("give exactly one of --run DIR or --table FILE")
    if export and run is None:
        raise ConfigError("--export needs --run (a table alone has no weights to export)")
    if top_k < 1 or (sweep is not None and sweep < 1) or (time_limit is not None and time_limit <= 0):
        raise ConfigError("--top-k and --sweep must be at least 1 and --time-limit positive")
    inputs = load_run(run) if run is not None else SolveInputs(read_table(table), table.parent)
    solver = solver or inputs.config.get("solver") or DEFAULT_SOLVER
    folder = out.parent if out is not None else inputs.home
    if sweep is not None:
        if budget is not None or export:
            raise ConfigError("--sweep chooses its own budgets; drop --budget and --export")
        problem, _ = build_problem(inputs, None, max_params, max_macs, cost)
        frame, csv_path, png_path = sweep_inputs(inputs, problem, sweep, solver, time_limit, folder)
        if as_json:
            rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
            typer.echo(json.dumps({"sweep": rows, "csv": str(csv_path), "png": str(png_path)}))
        else:
            _print_sweep(frame, csv_path, png_path)
        return
    if budget is None and run is not None:
        budget = _config_budget(inputs)
    if budget is None and not (cost or max_params or max_macs):
        raise ConfigError("no limit given; pass --budget 5ms (or --max-params, --max-macs, --cost)")
    problem, limits = build_problem(inputs, budget, max_params, max_macs, cost)
    record = solve_inputs(inputs, problem, limits, solver, time_limit, top_k)
    target = out if out is not None else (run / "selection.json" if run is not None else None)
    if target is not None:
        write_json_atomic(target, record)
    if as_json:
        typer.echo(json.dumps(record))
    else:
        print_selection(record, inputs)
        if target is not None:
            typer.echo(f"selection written to {target}")
    if export:
        from lana.export import export_selection

        export_selection(run, target)


def _print_sweep(frame: pd.DataFrame, csv_path: Path, png_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Pareto sweep")
    for name in ("budget ms", "latency ms", "acc change", "objective", "changed blocks", "proven"):
        table.add_column(name, justify="right")
    for row in frame.to_dict("records"):
        if not row["feasible"]:
            table.add_row(_fmt(row["budget_ms"]), "infeasible", "", "", "", "")
            continue
        table.add_row(_fmt(row["budget_ms"]), _fmt(row["predicted_latency_ms"]), _fmt(row["predicted_acc_delta"]),
                      _fmt(row["objective"]), str(row["changed_blocks"]), "yes" if row["optimal"] else f"gap {_fmt(row['gap'])}")
    console = Console()
    console.print(table)
    console.print(f"written: {csv_path} and {png_path}")

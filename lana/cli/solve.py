"""``lana solve``: parse, solve a run folder or a table, print or write the selection."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from lana.cli.report import console
from lana.errors import ConfigError
from lana.lazy import lazy_import
from lana.names import DEFAULT_SOLVER, LATENCY, TEACHER_OP
from lana.selection import (
    SolveInputs,
    build_problem,
    read_table,
    solve_inputs,
    sweep_inputs,
    write_json_atomic,
)
from lana.stages.solve import load_run, solve_run

pd = lazy_import("pandas")  # loaded when a table is first used: `lana solve --help` never pays for it

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# -- printing --------------------------------------------------------------------------
def print_selection(record: dict, inputs: SolveInputs) -> None:
    """A readable table of the choice, then the predicted totals and how the solve went."""
    out = console()
    table = Table(title="selection")
    for name in ("block", "chosen op", "latency ms", "acc_delta"):
        table.add_column(name, justify="left" if name in ("block", "chosen op") else "right")
    keyed = inputs.table.assign(block=inputs.table["block"].astype(str), candidate=inputs.table["candidate"].astype(str))
    keyed = keyed.set_index(["block", "candidate"])
    for block, op in record["choice"].items():
        row = keyed.loc[(block, op)]
        style = "dim" if op == TEACHER_OP else None
        table.add_row(block, op, _fmt(row.get(LATENCY)), _fmt(row.get("acc_delta")), style=style)
    out.print(table)
    if record["predicted_latency_ms"] is not None:
        out.print(f"predicted latency     {record['predicted_latency_ms']:.4g} ms (budget {_fmt(record['budget_ms'])} ms)")
    if record["predicted_acc_delta"] is not None:
        out.print(f"predicted acc change  {record['predicted_acc_delta']:+.3f} points")
    for name, total in record["totals"].items():
        if name != LATENCY:
            out.print(f"total {name:<15} {total:.4g}")
    proof = "proven optimal" if record["optimal"] else f"not proven optimal (gap {_fmt(record['gap'])} score units)"
    out.print(f"objective {record['objective']:.6g}; solver {record['solver']}, {record['seconds']:.3f} s, {proof}")
    for rank, alt in enumerate(record.get("top_k", [])[1:], start=2):
        changed = sum(alt["choice"][b] != op for b, op in record["choice"].items())
        out.print(f"#{rank}: objective {alt['objective']:.6g}, latency {_fmt(alt['predicted_latency_ms'])} ms, "
                      f"{changed} block(s) differ from #1")


def _fmt(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


# -- the command -----------------------------------------------------------------------
@app.command("solve")
def solve_command(
    ctx: typer.Context,
    run: Annotated[
        Optional[Path],
        typer.Option(
            "--run", metavar="DIR", help="Run folder written by `lana distill` (reads candidates.parquet, latency.json, config.yaml)."
        ),
    ] = None,
    table: Annotated[
        Optional[Path],
        typer.Option(
            "--table",
            metavar="FILE",
            help="Bring-your-own CSV or Parquet table with columns block, candidate, score and cost columns "
            "(latency_ms, params, macs, ...).",
        ),
    ] = None,
    budget: Annotated[
        Optional[str],
        typer.Option(
            "--budget",
            metavar="TEXT",
            help="Latency budget on the predicted total: 5ms, 500us, 0.005s or 50% of the teacher's latency. "
            "Run mode default: solve.budget of config.yaml.",
        ),
    ] = None,
    solver: Annotated[
        Optional[str],
        typer.Option(
            "--solver",
            metavar="NAME",
            help="auto (exact DP for one latency limit, MIP otherwise), pulp (CBC), cpsat, scip, mckp or brute. "
            "Run mode default: solve.solver of config.yaml, else auto.",
        ),
    ] = None,
    cost: Annotated[
        Optional[list[str]],
        typer.Option(
            "--cost",
            metavar="'COLUMN<=VALUE'",
            help="Extra limit 'COLUMN<=VALUE' or 'COLUMN>=VALUE', repeatable, "
            "e.g. 'latency_ms:cuda-b64-float16-eager<=2ms' or 'params<=3M'.",
        ),
    ] = None,
    max_params: Annotated[
        Optional[str], typer.Option("--max-params", metavar="COUNT", help="Limit on total parameters: 3M, 500k or 3000000.")
    ] = None,
    max_macs: Annotated[
        Optional[str], typer.Option("--max-macs", metavar="COUNT", help="Limit on total multiply-accumulates: 600M, 1.2G, ...")
    ] = None,
    sweep: Annotated[
        Optional[int],
        typer.Option(
            "--sweep",
            metavar="N",
            help="Solve N budgets from the fastest reachable latency to the teacher's; write sweep.csv and sweep.png.",
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", help="Return the K best distinct selections, best first.")] = 1,
    time_limit: Annotated[
        Optional[float],
        typer.Option(
            "--time-limit",
            metavar="SECONDS",
            help="Seconds per solve; when reached, the best selection found is returned with its proven gap.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (nothing else).")] = False,
    export: Annotated[bool, typer.Option("--export", help="Run mode: export the selected student right after solving.")] = False,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", metavar="FILE", help="Where to write the selection JSON (run mode default: RUN/selection.json)."),
    ] = None,
) -> None:
    """Choose one candidate per block: highest predicted accuracy within the latency budget and other limits."""
    if (run is None) == (table is None):
        raise ConfigError("give exactly one of --run DIR or --table FILE")
    if export and run is None:
        raise ConfigError("--export needs --run (a table alone has no weights to export)")
    if export and out is not None:
        raise ConfigError("--export exports RUN/selection.json; drop --out (or run `lana export` later)")
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
    target = out if out is not None else (run / "selection.json" if run is not None else None)
    if run is not None:
        record = solve_run(run, budget, solver, time_limit, max_params, max_macs, costs=cost, top_k=top_k, out=out, inputs=inputs)
    else:
        if budget is None and not (cost or max_params or max_macs):
            raise ConfigError("no limit given; pass --budget 5ms (or --max-params, --max-macs, --cost)")
        problem, limits = build_problem(inputs, budget, max_params, max_macs, cost)
        record = solve_inputs(inputs, problem, limits, solver, time_limit, top_k)
        if target is not None:
            write_json_atomic(target, record)
    if as_json:
        typer.echo(json.dumps(record))
    else:
        print_selection(record, inputs)
        if target is not None:
            typer.echo(f"selection written to {target}")
    if export:  # `lana export` itself, loaded only now (it needs torch; solving does not)
        ctx.find_root().command.main(args=["export", "--run", str(run)], prog_name="lana", standalone_mode=False)


def _print_sweep(frame: pd.DataFrame, csv_path: Path, png_path: Path) -> None:
    table = Table(title="Pareto sweep")
    for name in ("budget ms", "latency ms", "acc change", "objective", "changed blocks", "proven"):
        table.add_column(name, justify="right")
    for row in frame.to_dict("records"):
        if not row["feasible"]:
            table.add_row(_fmt(row["budget_ms"]), "infeasible", "", "", "", "")
            continue
        table.add_row(_fmt(row["budget_ms"]), _fmt(row["predicted_latency_ms"]), _fmt(row["predicted_acc_delta"]),
                      _fmt(row["objective"]), str(row["changed_blocks"]), "yes" if row["optimal"] else f"gap {_fmt(row['gap'])}")
    out = console()
    out.print(table)
    out.print(f"written: {csv_path} and {png_path}")

"""The ``lana`` command line: parse, load the config, call the stage, print the result.

``main()`` turns every ``LanaError`` into one line on stderr and a non-zero exit code;
``--debug`` (or ``LANA_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lana.errors import LanaError

app = typer.Typer(
    help="lana: latency-aware network acceleration. Replace a trained CNN's blocks with cheaper ops, "
    "chosen by an integer linear program under a latency budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

RunOpt = typer.Option(..., "--run", help="Run folder (created by `lana distill`; every stage reads and writes it).")
SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set distill.epochs=0.5 (repeatable).")


def _state() -> dict:
    return {"debug": os.environ.get("LANA_DEBUG") == "1"}


STATE = _state()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    if debug:
        STATE["debug"] = True


@app.command()
def distill(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (defaults: the demo teacher on Fashion-MNIST)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder (default runs/<name>). An existing folder resumes."),
    overrides: Optional[list[str]] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Redo distillation, scoring and timing even if their results exist."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory per device for training candidates, e.g. 8GB "
                                             "(default auto: what the device has free); candidates train in groups that fit."),
) -> None:
    """Distil every candidate of every block, score each by swap-one and time it on the device.

    Resumes where a stopped run left off. On several GPUs or machines run it under torchrun:
    `torchrun --nproc_per_node=N -m lana -- distill ...` (docs/scaling.md).
    """
    from lana.config import load_config
    from lana.pipeline import distill_stage
    from lana.rundir import RunFolder

    if config is None and run is not None and (run / "config.yaml").is_file():
        config = run / "config.yaml"
    cfg = load_config(config, [*(overrides or []), *([f"distill.max_memory={max_memory}"] if max_memory else [])])
    folder = RunFolder(run or Path("runs") / cfg.name)
    table = distill_stage(cfg, folder, force=force)
    if table is None:  # a torchrun rank other than 0: rank 0 reports
        return
    out.print(f"{len(table)} candidates over {table['block'].nunique()} blocks -> {folder.file('candidates.parquet')}")
    out.print(f"next: lana solve --run {folder.path} --budget {cfg.solve.budget}")


@app.command()
def finetune(run: Path = RunOpt, overrides: Optional[list[str]] = SetOpt) -> None:
    """Fine-tune the selected student end to end (logit KL from the teacher plus label loss)."""
    from lana.rundir import RunFolder
    from lana.student import run_finetune

    result = run_finetune(RunFolder(run), overrides)
    out.print(
        f"validation top-1 {result['val_acc_before']:.2f} % -> {result['val_acc_after']:.2f} % "
        f"(loss {result['val_loss_before']:.3f} -> {result['val_loss_after']:.3f}); weights in {run / 'student.pt'}"
    )


@app.command()
def export(
    run: Path = RunOpt,
    output: Optional[Path] = typer.Option(None, "--out", help="TorchScript file to write (default RUN/student.ts)."),
    no_finetune: bool = typer.Option(False, "--no-finetune", help="Export distilled weights even if fine-tuned ones exist."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Export the student as TorchScript, check it against eager, measure it and write report.json."""
    from lana.export import run_export
    from lana.rundir import RunFolder

    report = run_export(RunFolder(run), overrides, finetuned=not no_finetune, out=output)
    _print_report(report)


@app.command()
def demo(
    run: Path = typer.Option(Path("runs/demo"), "--run", help="Run folder; stages already done there are reused."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder with Fashion-MNIST idx files (default Debian's)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Latency budget (default 50% of the teacher)."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Run the whole pipeline on the embedded default: train a teacher, accelerate it, report."""
    from lana.demo import run_demo

    report = run_demo(run, str(data) if data else None, budget, overrides)
    _print_report(report)
    stages = report.get("stage_seconds", {})
    if stages:
        out.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))


@app.command()
def ops(
    pattern: str = typer.Argument("*", help="Glob over op names, e.g. 'mbconv*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Also list the ops registered by this config's ops.modules."),
) -> None:
    """List the op zoo: every candidate op with its family, description and source."""
    import op_zoo

    if config is not None:
        from lana.config import load_config

        op_zoo.import_op_modules(list(load_config(config).ops.modules))
    defs = op_zoo.list_ops(pattern)
    if not defs:
        from lana.errors import UnknownOpError

        raise UnknownOpError(f"no op matches '{pattern}'; `lana ops` lists all {len(op_zoo.list_ops())}")
    if as_json:
        print(json.dumps([{"name": d.name, "family": d.family, "description": d.description, "source": d.source} for d in defs], indent=1))
        return
    table = Table(title=f"{len(defs)} ops")
    for col in ("name", "family", "description", "source"):
        table.add_column(col)
    for d in defs:
        table.add_row(d.name, d.family, d.description, d.source)
    out.print(table)


@app.command()
def blocks(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Show the teacher's replaceable blocks and how many candidates each gets."""
    from lana.blocks import describe_blocks, discover_blocks
    from lana.candidates import build_all_candidates
    from lana.config import load_config
    from lana.teacher import load_teacher

    cfg = load_config(config, overrides)
    teacher = load_teacher(cfg.teacher.model, cfg.teacher.checkpoint, cfg.teacher.kwargs)
    if cfg.data.image_size:
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    else:  # the native size of the data (28×28 for Fashion-MNIST)
        from lana.data import load_data

        shape = load_data(cfg.data).input_shape
    specs = discover_blocks(teacher, (1, *shape), cfg.teacher.blocks)
    counts = {b: len(c) for b, c in build_all_candidates(specs, cfg.ops).items()}
    table = Table(title=f"{len(specs)} blocks of {cfg.teacher.model}")
    for col in ("block", "class", "input", "output", "stride", "act", "candidates"):
        table.add_column(col)
    for row in describe_blocks(specs):
        table.add_row(row["name"], row["class"], str(row["in_shape"]), str(row["out_shape"]), str(row["stride"]), row["act"], str(counts[row["name"]]))
    out.print(table)


@app.command()
def show(
    run: Path = RunOpt,
    block: Optional[str] = typer.Option(None, "--block", help="Only this block's candidates."),
    sort: str = typer.Option("score", "--sort", help="Column to sort by (descending)."),
    limit: int = typer.Option(20, "--limit", help="Rows per block to print (0 = all)."),
) -> None:
    """Print a run's candidates table (and report, if any)."""
    from lana.rundir import RunFolder

    folder = RunFolder(run)
    frame = folder.load_table()
    if block:
        frame = frame[frame["block"] == block]
    if sort not in frame.columns:
        raise LanaError(f"no column '{sort}' in the table; columns are {', '.join(frame.columns)}")
    cols = [c for c in ("block", "candidate", "params", "macs", "distill_loss", "acc_delta", "score", "latency_ms", "status") if c in frame]
    for name, group in frame.groupby("block", sort=False):
        group = group.sort_values(sort, ascending=False)
        group = group.head(limit) if limit else group
        table = Table(title=f"{name}: {len(frame[frame['block'] == name])} candidates")
        for col in cols[1:]:
            table.add_column(col)
        for _, row in group.iterrows():
            table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols[1:]])
        out.print(table)
    if folder.file("report.json").is_file():
        from lana.demo import load_report

        _print_report(load_report(folder))


@app.command("config")
def show_config(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config to resolve."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Print the resolved config (defaults, then the file, then --set overrides)."""
    from lana.config import dump_config, load_config

    print(dump_config(load_config(config, overrides)), end="")


def _print_report(report: dict) -> None:
    from lana.demo import summary_rows

    table = Table(title=f"teacher vs student on {report['data']} ({report['device']})")
    for col in ("", "teacher", "student"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    out.print(table)
    out.print(f"TorchScript: {report['export']['path']} (max |diff| vs eager {report['export']['max_abs_diff']:.1e})")


def _register_solve() -> None:
    from lana.solve import solve_command

    app.command("solve")(solve_command)


_register_solve()


def _register_latency() -> None:
    from lana.cli_latency import latency_check_command, profile_command, proxy_command

    app.command("profile")(profile_command)
    app.command("latency-check")(latency_check_command)
    app.command("proxy")(proxy_command)


_register_latency()


def main() -> None:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    import warnings

    # TorchScript is lana's export format; torch >= 2.10 marks it deprecated on every call.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
    try:
        code = app(standalone_mode=False)  # typer returns Ctrl-C as exit code 130 instead of raising
        if code == 130:
            raise KeyboardInterrupt
    except LanaError as exc:
        if STATE["debug"]:
            raise
        err.print(f"lana: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("lana: interrupted; progress so far is saved in the run folder", markup=False)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

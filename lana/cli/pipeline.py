"""The pipeline's commands: ``lana demo``, ``distill``, ``finetune``, ``export``, ``show``,
``blocks``, ``ops`` and ``config``. Thin: parse, call the stage, print the result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

import op_zoo
from lana.cli.report import console, print_report
from lana.config import dump_config, load_config
from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.errors import LanaError, UnknownOpError
from lana.run.folder import RunFolder, read_json
from lana.stages.demo import run_demo
from lana.stages.distill import distill_stage
from lana.stages.export import run_export
from lana.stages.finetune import run_finetune
from lana.teacher.blocks import describe_blocks, discover_blocks
from lana.teacher.load import load_teacher

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
out = console()

RunOpt = typer.Option(..., "--run", help="Run folder (created by `lana distill`; every stage reads and writes it).")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set distill.epochs=0.5 (repeatable).")


@app.command()
def distill(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (defaults: the demo teacher on Fashion-MNIST)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder (default runs/<name>). An existing folder resumes."),
    overrides: Optional[list[str]] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Redo distillation, scoring and timing even if their results exist."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory per device for training candidates, e.g. 8GB "
                                             "(default auto: what the process holds plus half the free memory, 85 % of it on a GPU); "
                                             "candidates train in groups that fit."),
) -> None:
    """Distil every candidate of every block, score each by swap-one and time it on the device.

    Resumes where a stopped run left off. On several GPUs or machines run it under torchrun:
    `torchrun --nproc_per_node=N -m lana -- distill ...` (docs/scaling.md).
    """
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
    result = run_finetune(RunFolder(run), overrides)
    if result["val_acc_after"] is None:  # a teacher of feature maps: no top-1, the distance from its outputs
        what = f"validation feature distance {result['val_loss_before']:.4f} -> {result['val_loss_after']:.4f}"
    else:
        what = (f"validation top-1 {result['val_acc_before']:.2f} % -> {result['val_acc_after']:.2f} % "
                f"(loss {result['val_loss_before']:.3f} -> {result['val_loss_after']:.3f})")
    out.print(f"{what}; weights in {run / 'student.pt'}")


@app.command()
def export(
    run: Path = RunOpt,
    output: Optional[Path] = typer.Option(None, "--out", help="TorchScript file to write (default RUN/student.ts)."),
    no_finetune: bool = typer.Option(False, "--no-finetune", help="Export distilled weights even if fine-tuned ones exist."),
    formats: Optional[str] = typer.Option(
        None, "--format", help="torchscript,pt2,aoti,onnx or all (installed ones); default export.formats."
    ),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Export the student in each format, check each reload against eager, time it there and write report.json."""
    report = run_export(RunFolder(run), overrides, finetuned=not no_finetune, out=output, formats=formats)
    print_report(report, out)


@app.command()
def demo(
    run: Path = typer.Option(Path("runs/demo"), "--run", help="Run folder; stages already done there are reused."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder with Fashion-MNIST idx files (default Debian's)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Latency budget (default 50% of the teacher)."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Run the whole pipeline on the embedded default: train a teacher, accelerate it, report."""
    report = run_demo(run, str(data) if data else None, budget, overrides)
    print_report(report, out)
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
    if config is not None:
        op_zoo.import_op_modules(list(load_config(config).ops.modules))
    defs = op_zoo.list_ops(pattern)
    if not defs:
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
    cfg = load_config(config, overrides)
    teacher = load_teacher(cfg.teacher.model, cfg.teacher.checkpoint, cfg.teacher.kwargs)
    if cfg.data.image_size:
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    else:  # the native size of the data (28×28 for Fashion-MNIST)
        shape = load_data(cfg.data).input_shape
    specs = discover_blocks(teacher, (1, *shape), cfg.teacher.blocks)
    counts = {b: len(c) for b, c in build_all_candidates(specs, cfg.ops).items()}
    table = Table(title=f"{len(specs)} blocks of {cfg.teacher.model}")
    for col in ("block", "class", "input", "output", "stride", "act", "candidates"):
        table.add_column(col)
    for row in describe_blocks(specs):
        table.add_row(row["name"], row["class"], str(row["in_shape"]), str(row["out_shape"]), str(row["stride"]), row["act"],
                      str(counts[row["name"]]))
    out.print(table)


@app.command()
def show(
    run: Path = RunOpt,
    block: Optional[str] = typer.Option(None, "--block", help="Only this block's candidates."),
    sort: str = typer.Option("score", "--sort", help="Column to sort by (descending)."),
    limit: int = typer.Option(20, "--limit", help="Rows per block to print (0 = all)."),
) -> None:
    """Print a run's candidates table (and report, if any)."""
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
        print_report(read_json(folder.file("report.json")), out)


@app.command("config")
def show_config(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config to resolve."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Print the resolved config (defaults, then the file, then --set overrides)."""
    print(dump_config(load_config(config, overrides)), end="")

"""The latency commands of the CLI: ``lana profile``, ``lana latency-check``, ``lana proxy``.

Thin: parse, call ``lana.profile`` / ``lana.latency_check`` / ``lana.proxy``, print.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lana.cli.report import console
from lana.errors import ConfigError, RunFolderError
from lana.latency.proxy import proxy_report
from lana.run.folder import RunFolder
from lana.selection import read_table
from lana.stages import profile
from lana.stages.check import check_run

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

out = console()
RunArg = Annotated[Path, typer.Option("--run", help="Run folder written by `lana distill`.")]
SetArg = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set latency.batch_size=1 (repeatable)."),
]


def _folder(run: Path):

    if not (run / "latency.json").is_file():
        raise RunFolderError(f"{run} has no latency.json; run `lana distill --run {run}` first")
    return RunFolder(run)


@app.command("profile")
def profile_command(
    run: RunArg,
    device: Annotated[
        Optional[str],
        typer.Option("--device", help="Measure on this device (cpu, cuda, cuda:N); other settings with --set latency.KEY=VALUE."),
    ] = None,
    overrides: SetArg = None,
    primary: Annotated[
        bool,
        typer.Option("--primary", help="Make this the profile `lana solve` uses (latency_ms); the old one becomes latency_ms:<tag>."),
    ] = False,
    bundle: Annotated[
        Optional[Path],
        typer.Option(
            "--bundle",
            help="Write a self-contained TorchScript bundle with a torch-only runner to this folder instead of measuring.",
        ),
    ] = None,
    networks: Annotated[int, typer.Option("--networks", help="With --bundle: whole networks to include for the correction fit.")] = 6,
    import_file: Annotated[
        Optional[Path], typer.Option("--import", help="Merge the CSV a bundle's runner.py wrote on another machine.")
    ] = None,
    reference: Annotated[
        bool,
        typer.Option("--reference", help="Only time the teacher now (RUN/reference.json): `lana solve` converts ms budgets with it."),
    ] = False,
) -> None:
    """(Re)measure a run's candidates for another device or setting, adding latency_ms:<tag> columns."""
    folder = _folder(run)
    if reference:
        ref = profile.time_reference(folder, overrides)
        out.print(f"reference (teacher) now {ref['teacher_now_ms']:.4g} ms, at profiling {ref['teacher_profiled_ms']:.4g} ms "
                  f"({ref['drift_pct']:+.1f} %); `lana solve` converts figures with it ({run / 'reference.json'})")
        return
    if bundle is not None and import_file is not None:
        raise ConfigError("give either --bundle DIR or --import FILE, not both")
    if bundle is not None:
        manifest = profile.write_bundle(folder, bundle, networks, overrides)
        out.print(f"bundle of {len(manifest['entries'])} TorchScript modules in {bundle}; on the target machine run:\n"
                  f"  python {bundle / 'runner.py'} --device cuda --out latency.csv\n"
                  f"then: lana profile --run {run} --import latency.csv")
        return
    if import_file is not None:
        record = profile.import_csv(folder, import_file, primary)
    else:
        record = profile.profile_run(folder, overrides, device, primary)
    column = "latency_ms" if primary else f"latency_ms:{record['tag']}"
    fixed = record["fixed_latency_ms"]
    out.print(f"profile {record['tag']} ({record['method']}): teacher {record['teacher_latency_ms']:.4g} ms, "
              f"fixed part {fixed:.4g} ms, {len(record['candidates'])} candidates -> column {column}")
    if record.get("calibration"):
        cal = record["calibration"]
        out.print(f"correction from {cal['networks']} measured networks: {cal['fixed_ms']:.4g} ms + {cal['scale']:.4f} x sum")


@app.command("latency-check")
def latency_check_command(
    run: RunArg,
    networks: Annotated[
        int, typer.Option("--networks", help="Random networks to build and measure (besides the solver's picks and the teacher).")
    ] = 12,
    fit: Annotated[
        bool,
        typer.Option(
            "--fit",
            help="Choose a correction (none, offset, offset + scale) by nested leave-one-out error over every measured network "
            "and store it so `lana solve` uses it.",
        ),
    ] = False,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Which latency profile (default: the primary one).")] = None,
    overrides: SetArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Build networks, measure each end to end and report predicted vs measured latency (CSV, PNG, errors)."""
    if networks < 2 or (fit and networks < 4):
        raise ConfigError(f"--networks must be at least 2 (at least 4 with --fit, to judge a correction); got {networks}")
    result = check_run(_folder(run), networks, fit, tag=tag, overrides=overrides)
    summary = result["summary"]
    if as_json:
        typer.echo(json.dumps(summary, default=float))
        return
    table = Table(title=f"predicted vs measured ({summary['tag']})")
    for col in ("kind", "predicted ms", "measured ms", "error %", "changed blocks"):
        table.add_column(col, justify="right")
    for row in result["frame"].itertuples():
        table.add_row(row.kind, f"{row.predicted_ms:.4g}", f"{row.measured_ms:.4g}", f"{row.error_pct:+.1f}", str(row.changed_blocks))
    out.print(table)
    before = summary["before"]
    out.print(f"error: median {before['median_error_pct']:.1f} %, worst {before['worst_error_pct']:.1f} % "
              f"over {before['networks']} networks; "
              f"noise floor (the same networks in a second window) median {before['median_noise_pct']:.1f} %, "
              f"worst {before['worst_noise_pct']:.1f} %; "
              f"reference (teacher) moved {summary['reference_drift_pct']:+.1f} % since profiling "
              f"(predictions converted with it)")
    if summary.get("choice"):
        choice, cal = summary["choice"], summary["correction"]
        out.print(f"corrections, leave-one-out over {choice['networks']} networks:")
        for kind, stats in choice["kinds"].items():
            mark = "chosen" if kind == choice["chosen"] else ("" if stats["eligible"] else "refused: worse than none")
            out.print(f"  {kind:<13} median {stats['median_pct']:5.1f} %   mean {stats['mean_pct']:5.1f} %   "
                      f"worst {stats['worst_pct']:5.1f} %   {mark}")
        nested = choice["nested"]
        folds = ", ".join(f"{kind} {count}" for kind, count in nested["per_fold"].items())
        out.print(f"  the choice itself held out (nested leave-one-out): median {nested['median_pct']:5.1f} %   mean "
                  f"{nested['mean_pct']:5.1f} %   worst {nested['worst_pct']:5.1f} %   (chosen per fold: {folds})")
        out.print(f"chosen {choice['chosen']} ({cal['fixed_ms']:.4g} ms + {cal['scale']:.4f} x sum): {choice['why']}; "
                  f"stored in latency.json")
    out.print(f"written: {run / 'latency_check.csv'}, {run / 'latency_check.png'}, {run / 'latency_check.json'}")


def _proxy_table(run: Optional[Path], table: Optional[Path]):
    if (run is None) == (table is None):
        raise ConfigError("give exactly one of --run DIR or --table FILE")
    if run is not None:
        return _folder(run).load_table()
    return read_table(table)


@app.command("proxy")
def proxy_command(
    proxy: Annotated[str, typer.Option("--proxy", help="Latency column of the proxy device, e.g. latency_ms.")],
    target: Annotated[
        str, typer.Option("--target", help="Latency column of the target device, e.g. 'latency_ms:cuda-b64-float16-eager'.")
    ],
    run: Annotated[Optional[Path], typer.Option("--run", help="Run folder whose table holds both columns.")] = None,
    table: Annotated[
        Optional[Path], typer.Option("--table", help="Or a CSV/Parquet table with block, candidate, family, score and both columns.")
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Fit a per-family correction on this many target rows (0: rank report only).")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Which rows are sampled.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Can one device's latencies stand in for another's? Rank correlation, correction, Pareto check."""
    report = proxy_report(_proxy_table(run, table), proxy, target, samples, seed)
    if as_json:
        typer.echo(json.dumps({k: (v.to_dict("records") if hasattr(v, "to_dict") else v) for k, v in report.items()}, default=float))
        return
    rank = report["rank"]
    out.print(f"Spearman rho {proxy} vs {target}: overall {rank['overall']:.3f}, per block median {rank['median_block']:.3f}, "
              f"worst {rank['worst_block'][1]:.3f} ({rank['worst_block'][0]})")
    for name in ("pareto_raw", "pareto_corrected"):
        frame = report.get(name)
        if frame is not None and len(frame):
            kept = int(frame["on_front"].sum())
            out.print(f"{name.replace('pareto_', '')} proxy: {kept}/{len(frame)} selections on the target's Pareto front "
                      f"(largest score gap {frame['score_gap'].max():.4g})")
    if report["correction"]:
        err = report.get("corrected_error_pct") or {}
        factors = ", ".join(f"{k} x{v:.3g}" for k, v in report["correction"].items())
        out.print(f"per-family correction from {report['samples']} samples: {factors}")
        if err:
            out.print(f"corrected proxy vs target on the other rows: median {err['median']:.1f} %, worst {err['worst']:.1f} %")

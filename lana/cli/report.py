"""Printing for the CLI: consoles that never cut names, and the teacher-vs-student report."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

WIDE = 400  # where output is not a terminal (logs, CI, pipes) rich would cut cells to 80 columns


def console(stderr: bool = False) -> Console:
    """A rich console; off a terminal it is wide enough that tables keep block names whole."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=WIDE)


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(what, teacher, student) rows of a report."""
    rows = [
        ("top-1 accuracy (test)", _pct(report.get("teacher_top1")), _pct(report.get("student_top1"))),
        (f"latency ({report['latency_settings']})", f"{report['teacher_latency_ms']:.2f} ms", f"{report['student_latency_ms']:.2f} ms"),
        ("predicted latency", "", f"{report['predicted_student_latency_ms']:.2f} ms" if report.get("predicted_student_latency_ms") else ""),
        ("speed-up (measured)", "1.00×", f"{report['speedup']:.2f}×"),
    ]
    if report.get("teacher_agreement") is not None:
        rows.insert(1, ("top-1 agreement with the teacher", "100.00 %", _pct(report["teacher_agreement"])))
    if report.get("feature_distance") is not None:  # a teacher of feature maps: no top-1
        rows[0] = ("feature distance from the teacher (test)", "0", f"{report['feature_distance']:.4f}")
    if report.get("budget_target_ms") is not None:
        rows.append((f"budget ({report['budget']})", "", budget_cell(report)))
    return rows


def budget_cell(report: dict) -> str:
    """``5.00 ms: measured 0.97× — met`` (``over`` / ``under`` where it misses the [0.95, 1.00] band)."""
    return f"{report['budget_target_ms']:.2f} ms: measured {report['budget_ratio']:.2f}× — {report['budget_verdict']}"


def _pct(value) -> str:
    return "" if value is None else f"{value:.2f} %"


def print_report(report: dict, out: Console | None = None) -> None:
    """The teacher-vs-student table of ``report.json`` and where the exports are."""
    out = out or console()
    table = Table(title=f"teacher vs student on {report['data']} ({report['device']})")
    for col in ("", "teacher", "student"):
        table.add_column(col)
    for row in summary_rows(report):
        table.add_row(*row)
    out.print(table)
    check = report.get("budget_check") or {}
    if check:
        first = check["first_attempt"]
        out.print(f"budget check: first student measured {first['student_latency_ms']:.3g} ms ({first['budget_verdict']}); "
                  f"measured / predicted {check['measured_ratio']:.2f}, corrected budget {check['corrected_budget_ms']:.3g} ms"
                  + ("; re-solved once" if check.get("resolved") else ""))
    if check.get("note"):
        out.print(f"note: {check['note']}")
    export = report.get("export") or {}
    if "path" in export and not report.get("exports"):  # reports from before the per-format rows
        out.print(f"TorchScript: {export['path']} (max |diff| vs eager {export['max_abs_diff']:.1e})")
    for row in report.get("exports") or []:
        out.print(export_line(row))


def export_line(row: dict) -> str:
    """One line per exported format: file, check, latency and speed-up in its own runtime (or why it failed)."""
    if not row.get("file"):
        return f"{row['format']}: not exported ({row.get('error')})"
    timing = f", {row['latency_ms']:.3f} ms" if row.get("latency_ms") is not None else ""
    timing += f" on {row['latency_settings']}" if timing and row.get("latency_settings") else ""
    timing += f"; not timed: {row['timing_error']}" if row.get("timing_error") else ""
    speedup = f", {row['speedup']:.2f}× the teacher in {row['format']}" if row.get("speedup") else ""
    return f"{row['format']}: {row['file']} (max |diff| vs eager {row['max_abs_diff']:.1e}{timing}{speedup})"

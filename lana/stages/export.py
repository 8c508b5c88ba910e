"""Export: the student as TorchScript, checked against eager, plus the run's report.

Re-parameterisable candidates are fused first; the module is scripted (traced where a
third-party module cannot be scripted), saved, reloaded from disk and compared with the
eager student on real held-out images. Whole-network latency of teacher and student is
measured here, in the same session and under the same settings: report figures are always
measured, never predicted."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from lana.data import take_tensors
from lana.distill.score import evaluate, teacher_targets
from lana.export.torchscript import export_torchscript
from lana.latency.measure import measure_networks, settings_tag
from lana.latency.runtimes import export_onnx
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, atomic_write_bytes, read_json, write_json
from lana.stages.finetune import load_selection, load_student, score_kind

log = logging.getLogger("lana")


def export_stage(ctx: Context, selection: dict, finetuned: bool = True, out: Path | None = None) -> dict:
    """Export the selection's student and write ``report.json`` with measured figures.

    Args:
        ctx: the prepared run.
        selection: the solver's selection.
        finetuned: use ``student.pt`` when it belongs to this selection.
        out: TorchScript path (default ``RUN/student.ts``).

    Returns:
        The report (also written to ``RUN/report.json``).
    """
    cfg = ctx.config
    student, was_finetuned = load_student(ctx, selection, finetuned)
    test_x, test_y = take_tensors(ctx.splits.test, cfg.data.test_limit)
    out = out or ctx.run.file("student.ts")
    export = export_torchscript(student, out, test_x[: cfg.export.check_images], cfg.export.atol)
    if cfg.latency.runtime == "onnxruntime":  # the deployment runtime's artefact too (needs onnx + onnxruntime)

        atomic_write_bytes(out.with_suffix(".onnx"), export_onnx(student, test_x[:2]))
        export["onnx"] = str(out.with_suffix(".onnx"))
    write_json(out.with_suffix(".json"), {**export, "choice": selection["choice"]})

    agreement = evaluate(student, test_x, teacher_targets(ctx.teacher, test_x))[1]
    if ctx.splits.labelled:
        teacher_loss, teacher_acc = evaluate(ctx.teacher, test_x, test_y)
        student_loss, student_acc = evaluate(student, test_x, test_y)
    else:  # no labels: no accuracy to quote, only agreement with the teacher
        teacher_loss = teacher_acc = student_loss = student_acc = None
    # Time the deployed artefact against the teacher in the same settings, interleaved.
    deployed = torch.jit.load(str(out), map_location="cpu")
    teacher_timing, student_timing = measure_networks(
        [ctx.teacher, deployed if cfg.latency.runtime == "torchscript" else student], ctx.input_shape, cfg.latency,
        time_cap_s=6 * cfg.latency.time_cap_s)
    teacher_latency, student_latency = teacher_timing["median_ms"], student_timing["median_ms"]
    predicted = selection.get("predicted_latency_ms")
    report = {
        "teacher": cfg.teacher.model,
        "data": ctx.splits.source,
        "device": cfg.latency.device,
        "latency_settings": settings_tag(cfg.latency),
        "batch_size": cfg.latency.batch_size,
        "dtype": cfg.latency.dtype,
        "budget": selection.get("budget"),
        "budget_ms": selection.get("budget_ms"),
        "teacher_top1": teacher_acc,
        "student_top1": student_acc,
        "top1_drop": None if teacher_acc is None else teacher_acc - student_acc,
        "teacher_agreement": agreement,  # student's top-1 agreement with the teacher, percent
        "score_kind": score_kind(ctx),
        "teacher_test_loss": teacher_loss,
        "student_test_loss": student_loss,
        "test_images": len(test_x),
        "teacher_latency_ms": teacher_latency,
        "student_latency_ms": student_latency,
        "predicted_student_latency_ms": predicted,
        # measured, never predicted: medians of interleaved runs, with the median's 95 % CI half-width
        "teacher_latency_ci_ms": teacher_timing["ci_ms"],
        "student_latency_ci_ms": student_timing["ci_ms"],
        "prediction_error_pct": None if not predicted else (predicted / student_latency - 1) * 100,
        "speedup": teacher_latency / student_latency,
        "finetuned": was_finetuned,
        "choice": selection["choice"],
        "export": export,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    stage_file = ctx.run.file("stage_seconds.json")
    if stage_file.is_file():
        report["stage_seconds"] = read_json(stage_file)
    write_json(ctx.run.file("report.json"), report)
    return report


def run_export(run: RunFolder, overrides: list[str] | None = None, finetuned: bool = True, out: Path | None = None) -> dict:
    """``lana export``: export the run's selected (and fine-tuned) student."""
    config = run.load_config(overrides)
    ctx = prepare(config, run)
    return export_stage(ctx, load_selection(run), finetuned, out)


def export_selection(run_dir: str | Path, selection_path: str | Path) -> dict:
    """Export the student of a just-written selection (``lana solve --export``)."""
    run = RunFolder(run_dir)
    ctx = prepare(run.load_config(), run)
    return export_stage(ctx, load_selection(run, Path(selection_path)), finetuned=True)

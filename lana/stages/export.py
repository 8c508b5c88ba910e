"""Export: the student in every asked format, each checked and timed in its runtime, plus
the run's report.

Every format fuses re-parameterisable candidates first, writes its file in the run folder,
reloads it from disk in its own runtime and compares it with the eager student on real
held-out images at two batch sizes (``lana.export.verify``). The teacher is exported the
same way, and both artefacts are timed interleaved, so a format's speed-up is the one its
runtime would serve. A format that cannot export the student (an op it cannot capture) is
recorded in the report with the block and op that broke it; the other formats go on.
Report figures are always measured, never predicted."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lana.data import take_tensors
from lana.device import Placement
from lana.errors import ExportError
from lana.export.pt2 import export_program
from lana.export.torchscript import to_torchscript
from lana.export.verify import FORMATS, export_and_verify, format_module, parse_formats
from lana.latency.measure import measure_callables, measure_networks, settings_tag
from lana.latency.profiles import REFERENCE_FILE, reference_record
from lana.names import TEACHER_OP
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, read_json, write_json
from lana.stages.finetune import load_selection, load_student, score_kind, split_figures

log = logging.getLogger("lana")

# The export format whose file is the deployment runtime's own artefact (written even when not asked).
RUNTIME_FORMAT = {"torchscript": "torchscript", "aoti": "aoti", "onnxruntime": "onnx"}


def resolve_formats(formats: str | list[str] | None, default: list[str], runtime: str) -> list[str]:
    """The formats to export: ``formats`` (text or list; ``all``), else the config's, plus the runtime's own."""
    chosen = parse_formats(formats if isinstance(formats, str) else ",".join(formats or default))
    own = RUNTIME_FORMAT.get(runtime)
    if own and own not in chosen:
        log.info("export: adding %s, the artefact latency.runtime %s serves", own, runtime)
        chosen.append(own)
    return chosen


def _blame(name: str, student: nn.Module, ctx: Context, choice: dict[str, str]) -> str:
    """``block B (op O): `` for the first replaced block that format ``name`` cannot capture alone, or ``""``."""
    for spec in ctx.specs:
        op = choice.get(spec.name, TEACHER_OP)
        if op == TEACHER_OP:
            continue
        example = torch.randn(2, spec.in_channels, *spec.in_size)
        try:
            if name == "torchscript":
                to_torchscript(student.get_submodule(spec.name), example)
            else:  # pt2, aoti and onnx all start from the torch.export capture
                export_program(student.get_submodule(spec.name), example)
        except ExportError:
            return f"block {spec.name} (op {op}): "
    return ""


def _load(name: str, path: Path, threads: int | None):
    return format_module(name).load(path, threads=threads) if name == "onnx" else format_module(name).load(path)


def export_formats(ctx: Context, student: nn.Module, formats: list[str], images: torch.Tensor,
                   choice: dict[str, str], paths: dict[str, Path] | None = None) -> list[dict]:
    """Export ``student`` in each format, verify it, and time it against the teacher exported alike.

    Args:
        ctx: the prepared run (teacher, blocks, settings).
        student: the eager student.
        formats: format names (see :data:`lana.export.verify.FORMATS`).
        images: real inputs for the reload check.
        choice: the selection (block -> op), to name the op a format cannot export.
        paths: file per format (default ``RUN/student<suffix>``).

    Returns:
        One row per format: ``format``, ``file``, ``bytes``, ``max_abs_diff``, ``latency_ms``,
        ``latency_ci_ms``, ``teacher_latency_ms``, ``speedup`` and the format's own info
        (method, compile seconds, ...); a failed format has ``file`` None and ``error``.
    """
    cfg = ctx.config
    # Artefacts are written for the CPU in float32 (pt2 and ts reload there): time them there.
    timing_cfg = cfg.latency.model_copy(update={"device": "cpu", "dtype": "float32", "channels_last": False})
    atol = cfg.export.atol
    rows = []
    with tempfile.TemporaryDirectory(prefix="lana-teacher-") as scratch:
        for name in formats:
            path = Path((paths or {}).get(name) or ctx.run.file(f"student{FORMATS[name].suffix}"))
            start = time.perf_counter()
            try:
                info = export_and_verify(name, student, path, images, atol)
            except ExportError as exc:
                message = f"{_blame(name, student, ctx, choice)}{exc}"
                log.warning("export: %s failed, the other formats go on: %s", name, message)
                rows.append({"format": name, "file": None, "error": message})
                continue
            threads = timing_cfg.threads
            teacher_path = Path(scratch) / f"teacher{FORMATS[name].suffix}"
            try:
                export_and_verify(name, ctx.teacher, teacher_path, images, atol)
            except ExportError as exc:  # the student's file stands; only its speed-up has no reference
                log.warning("export: the teacher cannot be exported as %s, so that speed-up is not measured: %s", name, exc)
                (student_t,) = measure_callables([_load(name, path, threads)], ctx.input_shape, timing_cfg)
                teacher_t = {"median_ms": None, "ci_ms": None}
                info["teacher_error"] = str(exc)
            else:
                teacher_t, student_t = measure_callables([_load(name, teacher_path, threads), _load(name, path, threads)],
                                                         ctx.input_shape, timing_cfg)
            rows.append({**{k: v for k, v in info.items() if k != "path"}, "format": name, "file": str(path),
                         "bytes": path.stat().st_size, "latency_ms": student_t["median_ms"], "latency_ci_ms": student_t["ci_ms"],
                         "teacher_latency_ms": teacher_t["median_ms"], "teacher_latency_ci_ms": teacher_t["ci_ms"],
                         "speedup": teacher_t["median_ms"] / student_t["median_ms"] if teacher_t["median_ms"] else None, "seconds": round(time.perf_counter() - start, 1),
                         "latency_settings": settings_tag(timing_cfg).replace("-eager", f"-{name}", 1), "error": None})
            log.info("export: %s -> %s (max |diff| %.1e, %.3f ms, speed-up %s in %s)", name, path.name,
                     info["max_abs_diff"], student_t["median_ms"], rows[-1]["speedup"], name)
    return rows


def export_stage(ctx: Context, selection: dict, finetuned: bool = True, out: Path | None = None,
                 formats: str | list[str] | None = None) -> dict:
    """Export the selection's student and write ``report.json`` with measured figures.

    Args:
        ctx: the prepared run.
        selection: the solver's selection.
        finetuned: use ``student.pt`` when it belongs to this selection.
        out: TorchScript path (default ``RUN/student.ts``).
        formats: ``"torchscript,pt2"``, ``"all"`` or a list (default ``export.formats``).

    Returns:
        The report (also written to ``RUN/report.json``); ``exports`` has one row per format.
    """
    cfg = ctx.config
    chosen = resolve_formats(formats, cfg.export.formats, cfg.latency.runtime)
    student, was_finetuned = load_student(ctx, selection, finetuned)
    # Test figures on the compute device, streamed: the test split is never held in memory.
    place = Placement.for_config(cfg)
    place.model(student)
    place.model(ctx.teacher).eval()
    figures = split_figures(ctx, {"teacher": ctx.teacher, "student": student}, place, "test", cfg.data.test_limit)
    agreement = figures["student"]["agreement"]
    if ctx.splits.labelled:
        teacher_loss, teacher_acc = figures["teacher"]["loss"], figures["teacher"]["acc"]
        student_loss, student_acc = figures["student"]["loss"], figures["student"]["acc"]
    else:  # no labels: no accuracy to quote, only agreement with the teacher
        teacher_loss = teacher_acc = student_loss = student_acc = None
    # Artefacts are written and checked on the CPU in float32: the reload check reads only
    # export.check_images test images.
    place.offload(student)
    place.offload(ctx.teacher)
    images, _ = take_tensors(ctx.splits.test, min(cfg.export.check_images, cfg.data.test_limit or cfg.export.check_images),
                             cfg.score.batch_size, ctx.splits.batch_fn, ctx.splits.num_workers)
    images = images.cpu().contiguous()
    rows = export_formats(ctx, student, chosen, images, selection["choice"], {"torchscript": out} if out else None)
    by_format = {row["format"]: row for row in rows}
    ts = by_format.get("torchscript") or {}
    export = {"path": ts["file"], "method": ts["method"], "max_abs_diff": ts["max_abs_diff"], "images": ts["images"]} if ts.get("file") else {}
    write_json(ctx.run.file("student.json"), {**export, "exports": rows, "choice": selection["choice"]})

    # Time the deployed student against the teacher in the profile's settings, interleaved
    # (the saved TorchScript file itself when that is the runtime).
    deployed = torch.jit.load(ts["file"], map_location="cpu") if cfg.latency.runtime == "torchscript" and ts.get("file") else student
    teacher_timing, student_timing = measure_networks([ctx.teacher, deployed], ctx.input_shape, cfg.latency,
                                                      time_cap_s=6 * cfg.latency.time_cap_s)
    teacher_latency, student_latency = teacher_timing["median_ms"], student_timing["median_ms"]
    predicted = selection.get("predicted_latency_ms")
    reference = _reference(ctx, teacher_latency)  # the teacher timed now: how far the machine moved
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
        "test_images": figures["student"]["images"],
        "compute_device": str(place.device),
        "teacher_latency_ms": teacher_latency,
        "student_latency_ms": student_latency,
        "predicted_student_latency_ms": predicted,
        # measured, never predicted: medians of interleaved runs, with the median's 95 % CI half-width
        "teacher_latency_ci_ms": teacher_timing["ci_ms"],
        "student_latency_ci_ms": student_timing["ci_ms"],
        "prediction_error_pct": None if not predicted else (predicted / student_latency - 1) * 100,
        "teacher_profiled_ms": reference and reference["teacher_profiled_ms"],
        "reference_drift_pct": reference and reference["drift_pct"],
        "speedup": teacher_latency / student_latency,
        "finetuned": was_finetuned,
        "choice": selection["choice"],
        "export": export,
        "exports": rows,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    stage_file = ctx.run.file("stage_seconds.json")
    if stage_file.is_file():
        report["stage_seconds"] = read_json(stage_file)
    write_json(ctx.run.file("report.json"), report)
    return report


def _reference(ctx: Context, teacher_now_ms: float) -> dict | None:
    """Write ``RUN/reference.json`` from the teacher timed here (when the settings are the profile's)."""
    path = ctx.run.file("latency.json")
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("tag") != settings_tag(ctx.config.latency):
        return None
    reference = reference_record(record, teacher_now_ms, "export")
    write_json(ctx.run.file(REFERENCE_FILE), reference)
    return reference


def run_export(run: RunFolder, overrides: list[str] | None = None, finetuned: bool = True, out: Path | None = None,
               formats: str | list[str] | None = None) -> dict:
    """``lana export``: export the run's selected (and fine-tuned) student in ``formats``."""
    config = run.load_config(overrides)
    ctx = prepare(config, run)
    return export_stage(ctx, load_selection(run), finetuned, out, formats)


def export_selection(run_dir: str | Path, selection_path: str | Path) -> dict:
    """Export the student of a just-written selection (``lana solve --export``)."""
    run = RunFolder(run_dir)
    ctx = prepare(run.load_config(), run)
    return export_stage(ctx, load_selection(run, Path(selection_path)), finetuned=True)

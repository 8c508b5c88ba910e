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

import copy
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lana.config import LatencyConfig
from lana.data import take_tensors
from lana.device import Placement
from lana.errors import ExportError
from lana.export.pt2 import export_program
from lana.export.torchscript import to_torchscript
from lana.export.verify import FORMATS, export_and_verify, format_module, parse_formats
from lana.latency.measure import (
    DTYPES,
    example_input,
    measure_callables,
    measure_networks,
    resolve_device,
    resolved_threads,
    settings_tag,
)
from lana.latency.profiles import REFERENCE_FILE, reference_record
from lana.latency.runtimes import OrtCallable
from lana.names import TEACHER_OP
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, read_json, write_json
from lana.stages.budget import report_budget
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
        example = torch.randn(2, *spec.in_shape)
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


def artifact_timing_config(cfg: LatencyConfig) -> LatencyConfig:
    """Where exported files are timed: on ``latency.device``, in ``latency.dtype`` (each file is its own runtime)."""
    return cfg.model_copy(update={"runtime": "eager", "channels_last": False, "cuda_graphs": False})


def _captured_here(name: str, cfg: LatencyConfig) -> bool:
    """Whether format ``name`` is timed from the file written (CPU float32), not captured again for the target."""
    return name in ("torchscript", "onnx") or (cfg.device == "cpu" and cfg.dtype == "float32")


def _onnx_runnable(path: Path, cfg: LatencyConfig):
    if cfg.dtype != "float32":
        raise ExportError(f"the ONNX file holds float32 weights, so it is not timed in {cfg.dtype} "
                          "(convert it to float16 with onnxconverter-common and time it in ONNX Runtime)")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ExportError("this onnxruntime has no CUDAExecutionProvider, so the ONNX file is not timed on "
                              f"{cfg.device} (pip install onnxruntime-gpu)")
        return OrtCallable(Path(path).read_bytes(), device, None)
    return _load("onnx", path, resolved_threads(cfg))


def _runnable(name: str, model: nn.Module, path: Path, scratch: Path, cfg: LatencyConfig, example: torch.Tensor):
    """Format ``name``'s artefact as the target runs it: on ``cfg.device``, in ``cfg.dtype``.

    TorchScript: the file, loaded onto the device and cast. ONNX: the file in ONNX Runtime
    (the CUDA provider on a GPU; float32 only). pt2 and AOTInductor capture (and compile)
    for one device and dtype: the file where that is the CPU in float32, else ``model``
    captured again for the target into ``scratch``.
    """
    if name == "onnx":
        return _onnx_runnable(path, cfg)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    if name == "torchscript":
        return torch.jit.load(str(path), map_location=device).eval().to(dtype)
    if _captured_here(name, cfg):
        return _load(name, path, None)
    target = scratch / f"{path.name.split('.')[0]}-{device.type}-{cfg.dtype}{FORMATS[name].suffix}"
    format_module(name).save(copy.deepcopy(model).eval().to(device=device, dtype=dtype), target, example)
    return format_module(name).load(target)


def export_formats(ctx: Context, student: nn.Module, formats: list[str], images: torch.Tensor,
                   choice: dict[str, str], paths: dict[str, Path] | None = None) -> list[dict]:
    """Export ``student`` in each format, verify it, and time it against the teacher exported alike.

    Files are written for the CPU in float32 and checked there; each is timed where it will
    run, on ``latency.device`` in ``latency.dtype`` (see :func:`_runnable`); a format that
    cannot run there keeps its file and says why in ``timing_error``.

    Args:
        ctx: the prepared run (teacher, blocks, settings).
        student: the eager student.
        formats: format names (see :data:`lana.export.verify.FORMATS`).
        images: real inputs for the reload check.
        choice: the selection (block -> op), to name the op a format cannot export.
        paths: file per format (default ``RUN/student<suffix>``).

    Returns:
        One row per format: ``format``, ``file``, ``bytes``, ``max_abs_diff``, ``latency_ms``,
        ``latency_ci_ms``, ``teacher_latency_ms``, ``speedup``, ``latency_settings`` and the
        format's own info (method, compile seconds, ...); a failed format has ``file`` None
        and ``error``.
    """
    cfg = ctx.config
    timing_cfg = artifact_timing_config(cfg.latency)
    atol = cfg.export.atol
    example = example_input(ctx.input_shape, timing_cfg)  # on the target device, in its dtype (checks the device is there)
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
            tag = settings_tag(timing_cfg).replace("-eager", f"-{name}", 1)
            row = {**{k: v for k, v in info.items() if k != "path"}, "format": name, "file": str(path), "bytes": path.stat().st_size,
                   "latency_ms": None, "latency_ci_ms": None, "teacher_latency_ms": None, "teacher_latency_ci_ms": None,
                   "speedup": None, "latency_settings": tag, "error": None}
            teacher_path = Path(scratch) / f"teacher{FORMATS[name].suffix}"
            try:
                if _captured_here(name, timing_cfg):
                    export_and_verify(name, ctx.teacher, teacher_path, images, atol)
                fns = [_runnable(name, ctx.teacher, teacher_path, Path(scratch), timing_cfg, example)]
            except Exception as exc:  # noqa: BLE001 -- the student's file stands; only its speed-up has no reference
                log.warning("export: the teacher cannot be exported as %s, so that speed-up is not measured: %s", name, exc)
                row["teacher_error"], fns = _first_line(exc), []
            try:
                fns.append(_runnable(name, student, path, Path(scratch), timing_cfg, example))
            except Exception as exc:  # noqa: BLE001 -- e.g. no CUDA provider, or a cast the artefact refuses
                row["timing_error"] = _first_line(exc)
                log.warning("export: %s is written and checked but not timed on %s in %s: %s", name, timing_cfg.device,
                            timing_cfg.dtype, row["timing_error"])
                rows.append({**row, "seconds": round(time.perf_counter() - start, 1)})
                continue
            timings = measure_callables(fns, ctx.input_shape, timing_cfg)
            student_t, teacher_t = timings[-1], (timings[0] if len(timings) == 2 else {"median_ms": None, "ci_ms": None})
            row.update({"latency_ms": student_t["median_ms"], "latency_ci_ms": student_t["ci_ms"],
                        "teacher_latency_ms": teacher_t["median_ms"], "teacher_latency_ci_ms": teacher_t["ci_ms"],
                        "speedup": teacher_t["median_ms"] / student_t["median_ms"] if teacher_t["median_ms"] else None,
                        "seconds": round(time.perf_counter() - start, 1)})
            rows.append(row)
            log.info("export: %s -> %s (max |diff| %.1e, %.3f ms, speed-up %s in %s on %s %s)", name, path.name,
                     info["max_abs_diff"], student_t["median_ms"], row["speedup"], name, timing_cfg.device, timing_cfg.dtype)
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, ExportError) else f"{type(exc).__name__}: {text}"


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
    distance = figures["student"].get("distance")  # feature maps: the distance from the teacher's, no top-1
    if ctx.splits.labelled and distance is None:
        teacher_loss, teacher_acc = figures["teacher"]["loss"], figures["teacher"]["acc"]
        student_loss, student_acc = figures["student"]["loss"], figures["student"]["acc"]
    else:  # no labels (or no logits): no accuracy to quote, only agreement with (or distance from) the teacher
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
    export = (
        {"path": ts["file"], "method": ts["method"], "max_abs_diff": ts["max_abs_diff"], "images": ts["images"]} if ts.get("file") else {}
    )
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
        **report_budget(selection, student_latency, teacher_latency),  # the measured student against the budget asked for
        "teacher_top1": teacher_acc,
        "student_top1": student_acc,
        "top1_drop": None if teacher_acc is None else teacher_acc - student_acc,
        "teacher_agreement": agreement,  # student's top-1 agreement with the teacher, percent
        "feature_distance": distance,  # feature maps: student's mean normalised distance from the teacher's outputs
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
    resolve_formats(formats, config.export.formats, config.latency.runtime)  # a bad --format fails before any work
    ctx = prepare(config, run)
    return export_stage(ctx, load_selection(run), finetuned, out, formats)


def export_selection(run_dir: str | Path, selection_path: str | Path) -> dict:
    """Export the student of a just-written selection (``lana solve --export``)."""
    run = RunFolder(run_dir)
    ctx = prepare(run.load_config(), run)
    return export_stage(ctx, load_selection(run, Path(selection_path)), finetuned=True)

"""The export stage in every format (files, reload checks, timings and speed-ups in the
report), its errors, and latency timed in each deployment runtime (compiled once, cached,
in-context falling back to isolated, the latency check working there)."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys

import pandas as pd
import pytest
import torch
from conftest import run_main, tiny_config
from torch import nn

from lana.errors import ConfigError, ExportError
from lana.export import aoti, onnx
from lana.export.verify import FORMATS
from lana.latency import runtimes
from lana.latency.measure import time_module
from lana.names import TEACHER_OP
from lana.run.folder import RunFolder
from lana.stages.check import check_run
from lana.stages.export import run_export
from lana.stages.profile import profile_run
from lana.stages.solve import solve_run

ROW_KEYS = {"format", "file", "bytes", "max_abs_diff", "latency_ms", "speedup", "teacher_latency_ms", "method", "error"}


@pytest.fixture(scope="module")
def export_run(trained_run, tmp_path_factory):
    """A private copy of the tiny run with a selection that replaces at least one block."""
    source = trained_run[0]
    run = RunFolder(tmp_path_factory.mktemp("export") / "tiny")
    shutil.copytree(source.path, run.path)
    selection = solve_run(run, "50%")
    assert any(op != TEACHER_OP for op in selection["choice"].values())
    return run, selection


def _installed() -> list[str]:
    return ["torchscript", "pt2"] + (["aoti"] if aoti.available() else []) + (["onnx"] if onnx.available() else [])


def test_default_formats_write_ts_and_pt2(export_run, one_thread):
    run, _ = export_run
    report = run_export(run, finetuned=False)
    assert [row["format"] for row in report["exports"]] == ["torchscript", "pt2"]
    for row in report["exports"]:
        assert ROW_KEYS <= set(row) and row["error"] is None
        assert row["file"] == str(run.file(f"student{FORMATS[row['format']].suffix}")) and row["bytes"] > 0
        assert row["max_abs_diff"] <= 1e-3 and row["latency_ms"] > 0 and row["teacher_latency_ms"] > 0
        assert row["speedup"] == pytest.approx(row["teacher_latency_ms"] / row["latency_ms"])
    assert report["export"]["path"] == str(run.file("student.ts")) and report["speedup"] > 0  # old keys still there
    # the measured student against the budget it was solved for, in its unit
    assert report["budget"] == "50%" and report["budget_target_ms"] == pytest.approx(0.5 * report["teacher_latency_ms"])
    assert report["budget_ratio"] == pytest.approx(report["student_latency_ms"] / report["budget_target_ms"])
    assert report["budget_verdict"] in ("met", "over", "under") and report["budget_met"] == (report["budget_verdict"] == "met")
    assert json.loads(run.file("report.json").read_text())["exports"][1]["format"] == "pt2"


def test_all_formats_round_trip_through_the_stage(export_run, one_thread):
    run, _ = export_run
    report = run_export(run, finetuned=False, formats="all")
    rows = {row["format"]: row for row in report["exports"]}
    assert list(rows) == _installed()
    for name, row in rows.items():
        assert row["error"] is None, row["error"]
        assert run.file(f"student{FORMATS[name].suffix}").stat().st_size == row["bytes"]
        assert row["max_abs_diff"] <= 1e-3 and row["speedup"] > 0
    if "aoti" in rows:
        assert rows["aoti"]["compile_s"] > 0
    if "onnx" in rows:
        assert rows["onnx"]["method"] == "dynamo"


def test_bad_formats_fail_before_any_file(export_run, monkeypatch, capsys, one_thread):
    run, _ = export_run
    def no_work(*args, **kwargs):  # a bad format is said before the data and the teacher are loaded
        raise AssertionError("the run was prepared before its formats were checked")
    monkeypatch.setattr("lana.stages.export.prepare", no_work)
    code, err = run_main(["export", "--run", str(run.path), "--format", "pt2,tflite"], monkeypatch, capsys)
    assert code != 0 and "unknown export format(s) tflite" in err and len(err.strip().splitlines()) == 1
    before = sorted(p.name for p in run.path.iterdir())
    with pytest.raises(ConfigError, match="unknown export format.*tflite"):
        run_export(run, finetuned=False, formats="pt2,tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if onnxruntime were not installed
    with pytest.raises(ExportError, match=r"pip install 'lana\[onnx\]'"):
        run_export(run, finetuned=False, formats="onnx")
    with pytest.raises(ConfigError, match="unknown export format"):
        run_export(run, overrides=["export.formats=[bogus]"], finetuned=False)
    assert sorted(p.name for p in run.path.iterdir()) == before


class ValueBranch(nn.Module):
    """A drop-in block whose Python ``if`` reads a tensor's value: TorchScript scripts it, no graph can."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if y.mean() > 1e9:
            return -y
        return y


def test_an_op_a_format_cannot_export_is_named_and_the_others_go_on(export_run, monkeypatch, one_thread):
    from lana.stages import export as stage

    run, selection = export_run
    block = next(b for b, op in selection["choice"].items() if op != TEACHER_OP)
    original = stage.load_student

    def patched(ctx, sel, finetuned=True):
        student, done = original(ctx, sel, finetuned)
        student.set_submodule(block, ValueBranch(student.get_submodule(block)))
        return student, done

    monkeypatch.setattr(stage, "load_student", patched)
    report = run_export(run, finetuned=False, formats="torchscript,pt2")
    rows = {row["format"]: row for row in report["exports"]}
    assert rows["torchscript"]["error"] is None and rows["torchscript"]["speedup"] > 0
    assert rows["pt2"]["file"] is None
    assert rows["pt2"]["error"].startswith(f"block {block} (op {selection['choice'][block]}): ")
    assert "branches on a tensor's value" in rows["pt2"]["error"]
    assert json.loads(run.file("report.json").read_text())["exports"][1]["error"] == rows["pt2"]["error"]


def test_report_prints_latency_and_speedup_per_format():
    from lana.cli.report import export_line

    ok = {"format": "onnx", "file": "runs/x/student.onnx", "max_abs_diff": 2e-6, "latency_ms": 1.234, "speedup": 2.5}
    assert export_line(ok) == "onnx: runs/x/student.onnx (max |diff| vs eager 2.0e-06, 1.234 ms, 2.50× the teacher in onnx)"
    where = {**ok, "latency_settings": "cuda-b64-float16-onnx"}
    assert export_line(where) == ("onnx: runs/x/student.onnx (max |diff| vs eager 2.0e-06, 1.234 ms on cuda-b64-float16-onnx, "
                                  "2.50× the teacher in onnx)")
    untimed = {**ok, "latency_ms": None, "speedup": None, "timing_error": "the ONNX file holds float32 weights"}
    assert export_line(untimed) == "onnx: runs/x/student.onnx (max |diff| vs eager 2.0e-06; not timed: the ONNX file holds float32 weights)"
    failed = {"format": "pt2", "file": None, "error": "block layer1 (op x): torch.export cannot capture"}
    assert export_line(failed) == "pt2: not exported (block layer1 (op x): torch.export cannot capture)"


# -- latency in the runtime ------------------------------------------------------------------------
CPU_RUNTIMES = ["eager", "torchscript", "inductor", "onnxruntime"]


@pytest.mark.parametrize("runtime", CPU_RUNTIMES + [pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed (pip install 'lana[openvino]')"))])
def test_deployable_matches_eager_and_compiles_once(runtime, one_thread, caplog):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(3, 4, 8, 8)
    with caplog.at_level(logging.INFO, logger="lana"), torch.inference_mode():
        first = runtimes.deployable(module, x, runtime)
        torch.testing.assert_close(torch.as_tensor(first(x)), module(x), atol=1e-5, rtol=0)
        again = runtimes.deployable(module, x, runtime)
    compiled = caplog.text.count(f"for {runtime} at (3, 4, 8, 8)")
    if runtime in runtimes.COMPILED:
        assert again is first and compiled == 1  # the compile is cached and logged once
    else:
        assert compiled == 0


def test_missing_and_misplaced_runtimes_are_one_line_errors(monkeypatch):
    cfg = tiny_config().latency
    conv = nn.Conv2d(2, 2, 1)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        time_module(conv, (2, 4, 4), cfg.model_copy(update={"runtime": "tensorrt"}))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=r"pip install 'lana\[openvino\]'"):
        time_module(conv, (2, 4, 4), cfg.model_copy(update={"runtime": "openvino"}))
    with pytest.raises(ConfigError, match="cuda_graphs applies to eager and torchscript, not inductor"):
        time_module(conv, (2, 4, 4), cfg.model_copy(update={"runtime": "inductor", "cuda_graphs": True}))


@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime", "inductor"])
def test_profile_and_latency_check_in_each_cpu_runtime(runtime, trained_run, tmp_path, caplog, one_thread):
    run = RunFolder(tmp_path / "tiny")
    shutil.copytree(trained_run[0].path, run.path)
    with caplog.at_level(logging.INFO, logger="lana"):
        record = profile_run(run, [f"latency.runtime={runtime}"])
    assert record["tag"].endswith(f"-{runtime}-t1") and all(r["median_ms"] > 0 for r in record["candidates"])
    if runtime in runtimes.CLOCKABLE:
        assert record["method"] == "context"
    else:  # a whole-graph compiler has no seam for block clocks: said, and timed alone
        assert record["method"] == "isolated" and f"{runtime} cannot be clocked block by block" in caplog.text
    summary = check_run(run, networks=2, shares=(0.5,), tag=record["tag"])["summary"]
    assert summary["tag"] == record["tag"] and summary["method"] == record["method"]
    frame = pd.read_csv(run.file("latency_check.csv"))
    assert len(frame) >= 3 and (frame["measured_ms"] > 0).all()


@pytest.mark.parametrize("device, dtype", [("cpu", "bfloat16"), pytest.param("cuda", "float16", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_exported_formats_are_timed_on_the_latency_device_in_its_dtype(export_run, one_thread, device, dtype):
    run, _ = export_run
    formats = "torchscript,pt2" + (",onnx" if onnx.available() else "")
    report = run_export(run, [f"latency.device={device}", f"latency.dtype={dtype}"], finetuned=False, formats=formats)
    rows = {row["format"]: row for row in report["exports"]}
    assert report["latency_settings"].startswith(f"{device}-b4-{dtype}-eager")
    for name in ("torchscript", "pt2"):  # files are written and checked as CPU float32, timed where they will run
        row = rows[name]
        assert row["error"] is None and row["max_abs_diff"] <= 1e-3 and run.file(f"student{FORMATS[name].suffix}").is_file()
        assert row["latency_settings"].startswith(f"{device}-b4-{dtype}-{name}") and row["latency_ms"] > 0 and row["speedup"] > 0
    if "onnx" in rows:  # the ONNX file is float32: written and checked, and the report says why it is not timed
        assert rows["onnx"]["error"] is None and rows["onnx"]["latency_ms"] is None
        assert "float32 weights" in rows["onnx"]["timing_error"]

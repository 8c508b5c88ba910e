"""Solve, fine-tune, export and the CLI around them, on the tiny trained run."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_main
from typer.testing import CliRunner

from lana.cli.app import app
from lana.errors import CheckpointError, RunFolderError

runner = CliRunner()


@pytest.fixture(scope="module")
def solved_run(trained_run):
    from lana.stages.solve import solve_run

    run, config, table = trained_run
    selection = solve_run(run, "70%")
    return run, config, table, selection


def test_solve_picks_one_op_per_block_within_budget(solved_run):
    run, config, table, selection = solved_run
    assert set(selection["choice"]) == set(table["block"])
    chosen = table.set_index(["block", "candidate"]).loc[list(selection["choice"].items())]
    latency = json.loads(run.file("latency.json").read_text())
    predicted = chosen["latency_ms"].sum() + latency["fixed_latency_ms"]
    assert predicted == pytest.approx(selection["predicted_latency_ms"], rel=1e-6)
    assert predicted <= 0.7 * latency["teacher_latency_ms"] + 1e-9
    assert run.file("selection.json").is_file()


def test_budget_below_fastest_names_the_fastest(solved_run):
    result = runner.invoke(app, ["solve", "--run", str(solved_run[0].path), "--budget", "1us"])
    assert result.exit_code != 0
    assert "fastest" in str(result.exception) or "fastest" in result.output


def test_finetune_then_export_matches_and_reports(solved_run):
    from lana.stages.export import run_export
    from lana.stages.finetune import run_finetune

    run, config, table, selection = solved_run
    result = run_finetune(run)
    assert result["val_acc_after"] >= result["val_acc_before"] - 5
    stored = torch.load(run.file("student.pt"), weights_only=True)
    assert stored["choice"] == selection["choice"]

    report = run_export(run)
    for key in ("teacher_top1", "student_top1", "teacher_latency_ms", "student_latency_ms", "predicted_student_latency_ms", "speedup",
                "budget", "device"):
        assert report[key] is not None, key
    assert report["finetuned"] is True
    assert json.loads(run.file("report.json").read_text())["speedup"] == pytest.approx(report["speedup"])

    scripted = torch.jit.load(str(run.file("student.ts")))
    from lana.data import load_data, take_tensors
    from lana.run.context import prepare
    from lana.stages.finetune import load_student

    ctx = prepare(config, run)
    student, finetuned = load_student(ctx, selection)
    x, _ = take_tensors(load_data(config.data).test, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), student(x), atol=1e-4)
    assert finetuned


def test_corrupted_weights_and_missing_selection_are_one_line_errors(solved_run, tmp_path):
    from lana.run.folder import RunFolder, load_tensors
    from lana.stages.finetune import load_selection

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_tensors(bad)
    with pytest.raises(RunFolderError, match="lana solve"):
        load_selection(RunFolder(tmp_path))


def test_cli_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("distill", "solve", "finetune", "export", "demo", "ops", "blocks", "show", "config"):
        assert command in result.output
    for command in ("distill", "solve", "finetune", "export", "demo"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--run" in sub.output


def test_cli_ops_and_show(solved_run):
    result = runner.invoke(app, ["ops", "mbconv*", "--json"])
    assert result.exit_code == 0
    names = [row["name"] for row in json.loads(result.output)]
    assert "mbconv_k3_e6_se" in names and all(n.startswith("mbconv") for n in names)
    shown = runner.invoke(app, ["show", "--run", str(solved_run[0].path), "--limit", "3"])
    assert shown.exit_code == 0 and "teacher" in shown.output


def test_main_turns_errors_into_one_line(monkeypatch, capsys, tmp_path):
    code, err = run_main(["distill", "--config", str(tmp_path / "none.yaml")], monkeypatch, capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "lana: error: config file" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  model: timm:resnet181\n")
    code, err = run_main(["blocks", "--config", str(cfg)], monkeypatch, capsys)
    assert code == 2 and "resnet18" in err and "Traceback" not in err
    code, err = run_main(["show", "--run", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "lana distill" in err


def test_demo_falls_back_to_digits_and_says_so(tmp_path, capsys):
    from lana.run.folder import RunFolder
    from lana.stages.demo import DEMO_OPS, demo_config

    config = demo_config(RunFolder(tmp_path / "demo"), str(tmp_path / "no-fashion-here"), ["distill.max_steps=5"])
    assert config.data.kind == "digits" and config.data.image_size == 28
    assert config.distill.max_steps == 5 and config.ops.include == DEMO_OPS
    assert "handwritten digits" in capsys.readouterr().err
    assert len(DEMO_OPS) >= 12

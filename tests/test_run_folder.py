"""A run folder works from any working directory and after being moved."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import run_main, tiny_config

from lana.config import load_config
from lana.run.folder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_made_in_a_relative_folder_works_moved_and_from_elsewhere(trained_run, tmp_path, monkeypatch, capsys) -> None:
    source, _, _ = trained_run
    made = tmp_path / "made"
    (made / "runs").mkdir(parents=True)
    monkeypatch.chdir(made)
    shutil.copytree(source.path, "runs/demo", ignore=shutil.ignore_patterns("selection.json", "student*", "logs"))
    run = RunFolder("runs/demo")  # as `lana demo --run runs/demo` records it
    run.save_config(tiny_config(teacher={"checkpoint": "runs/demo/teacher.pt"}))
    stored = yaml.safe_load(run.file("config.yaml").read_text())
    assert stored["teacher"]["checkpoint"] == "teacher.pt"  # inside the folder: relative to it
    assert stored["data"]["root"].startswith("/")  # outside it: absolute

    moved = tmp_path / "moved" / "demo"
    moved.parent.mkdir()
    shutil.move(str(made / "runs" / "demo"), moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert RunFolder(moved).load_config().teacher.checkpoint == str(moved / "teacher.pt")
    code, err = run_main(["solve", "--run", str(moved), "--budget", "90%"], monkeypatch, capsys)
    assert code == 0, err
    code, err = run_main(["finetune", "--run", str(moved)], monkeypatch, capsys)  # loads the checkpoint
    assert code == 0, err
    assert "val_acc_after" in json.loads((moved / "finetune.json").read_text())


def test_overrides_stay_relative_to_the_working_directory(trained_run, tmp_path, monkeypatch) -> None:
    source, _, _ = trained_run
    monkeypatch.chdir(tmp_path)
    config = RunFolder(source.path).load_config(["teacher.checkpoint=mine.pt"])
    assert config.teacher.checkpoint == "mine.pt"


def test_older_folder_with_paths_relative_to_where_it_was_made(trained_run, tmp_path, monkeypatch) -> None:
    source, _, _ = trained_run
    monkeypatch.chdir(tmp_path)
    shutil.copytree(source.path, "runs/old", ignore=shutil.ignore_patterns("weights", "*.parquet", "*.csv"))
    text = (tmp_path / "runs/old/config.yaml").read_text()
    (tmp_path / "runs/old/config.yaml").write_text(text.replace("checkpoint: teacher.pt", "checkpoint: runs/old/teacher.pt"))
    assert "runs/old/teacher.pt" in (tmp_path / "runs/old/config.yaml").read_text()
    checkpoint = RunFolder("runs/old").load_config().teacher.checkpoint
    assert checkpoint == "runs/old/teacher.pt" and (tmp_path / checkpoint).is_file()  # as it always worked there


def test_config_file_paths_are_found_beside_it_first(tmp_path, monkeypatch) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "teacher.pt").write_bytes(b"")
    (tmp_path / "data").mkdir()
    config_file = tmp_path / "configs" / "mine.yaml"
    config_file.write_text("teacher:\n  checkpoint: teacher.pt\ndata:\n  root: data\nops:\n  modules: [my_ops.py, mypkg.ops]\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(config_file)
    assert config.teacher.checkpoint == str(tmp_path / "configs" / "teacher.pt")  # beside the file
    assert config.data.root == "data"  # only in the working directory: as written
    assert config.ops.modules == ["my_ops.py", "mypkg.ops"]


def test_a_process_that_goes_on_to_another_run_stops_writing_the_earlier_runs_log(tmp_path):
    import logging

    from lana.run.folder import setup_logging

    first, second = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    log = setup_logging(first)
    log.info("budget 0.5 of run a")
    setup_logging(second).info("budget 0.3 of run b")
    setup_logging(second).info("run b again")  # the same run: one handler, each line once
    for handler in logging.getLogger("lana").handlers:
        handler.flush()
    a, b = ((tmp_path / r / "logs" / "lana.log").read_text() for r in "ab")
    assert "run a" in a and "run b" not in a
    assert "run a" not in b and b.count("budget 0.3 of run b") == 1 and b.count("run b again") == 1

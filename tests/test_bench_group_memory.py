"""benchmarks/group_memory.py: the planner's one-group estimate and the measured rise, a row per config."""
from __future__ import annotations

import json
import subprocess

from benchmarks import group_memory


def test_the_estimate_and_the_rise_of_one_group(trained_run, one_thread):  # measure sets one thread; put back after
    run, _, _ = trained_run
    row = group_memory.measure(str(run.file("config.yaml")), 1)
    assert row["candidates"] > 0 and row["blocks"] > 0 and row["estimate_mib"] > 0 and row["rise_mib"] >= 0


def test_a_row_per_config_each_measured_in_its_own_process(monkeypatch, capsys):
    def child(cmd, **kwargs):  # what the child process prints: its row, or a failure
        path = cmd[cmd.index("--child") + 1]
        if path == "missing.yaml":
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nFileNotFoundError: missing.yaml\n")
        row = {"config": path, "candidates": 12, "blocks": 3, "estimate_mib": 40.0, "before_mib": 900.0, "rise_mib": 20.0}
        return subprocess.CompletedProcess(cmd, 0, "progress\n" + json.dumps(row) + "\n", "")
    monkeypatch.setattr(group_memory.subprocess, "run", child)
    rows = group_memory.main(["a.yaml", "missing.yaml", "--steps", "2"])
    assert [r["config"] for r in rows] == ["a.yaml"]
    out = capsys.readouterr().out
    assert "| a.yaml | 3 | 12 | 40 | 20 | 900 |" in out and "| missing.yaml | failed: FileNotFoundError: missing.yaml |" in out

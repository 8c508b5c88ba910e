"""benchmarks/group_memory.py: the planner's one-group estimate and the measured rise, a row per config."""
from __future__ import annotations

from benchmarks import group_memory


def test_a_row_per_config_with_the_estimate_and_the_rise(trained_run, tmp_path, capsys):
    run, _, _ = trained_run
    rows = group_memory.main([str(run.file("config.yaml")), "--steps", "1"])
    assert len(rows) == 1 and rows[0]["candidates"] > 0 and rows[0]["blocks"] > 0
    assert rows[0]["estimate_mib"] > 0 and rows[0]["rise_mib"] >= 0
    missing = group_memory.main([str(tmp_path / "none.yaml")])  # a config that is not there: a row that says so
    assert missing == [] and "failed" in capsys.readouterr().out

"""benchmarks/eval_rate.py: a row per CPU-mode teacher, the fast evaluation's loss equal to the plain one's."""
from __future__ import annotations

from benchmarks import eval_rate


def test_a_row_per_teacher_with_the_same_loss_both_ways(capsys):
    rows = eval_rate.main(["--images", "20", "--rounds", "1"])
    assert [r["teacher"] for r in rows] == ["resnet", "mobilenet", "efficientnet", "vit"]
    assert all(r["plain_s"] > 0 and r["fast_s"] > 0 and r["loss_diff"] < 1e-4 for r in rows)
    assert capsys.readouterr().out.count("\n| ") == 1 + len(rows)  # the separator line and the rows

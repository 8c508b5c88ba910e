"""benchmarks/coverage.py: one process per model, a row per model, a one-line reason for a
model that fails (the run goes on), finished models skipped on a rerun."""
from __future__ import annotations

import json
import re

import torch
from torch import nn

from benchmarks import coverage


class _Unit(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


def tiny_net(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Built by the benchmark's child process as ``tests.test_bench_coverage:tiny_net``.

    32 channels, so that the two blocks hold most of the time and the benchmark's 50 % budget is
    reachable with room to spare: at 8 channels the stem and head were 35-55 % of the teacher's
    batch-1 latency, and a loaded CI machine once measured the fastest reachable student above 50 %.
    """
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), _Unit(width), _Unit(width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def _rows(doc) -> dict[str, list[str]]:
    """Rows by model: side, blocks, cands/block, assembles, TorchScript, .pt2, speed-up, vs budget, e2e, s, reason."""
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in doc.read_text().splitlines()
            if line.startswith("| ") and "---" not in line]
    return {row[0]: row[1:] for row in rows[1:]}


def test_a_row_per_model_and_a_one_line_reason_for_a_failure(tmp_path):
    doc, results = tmp_path / "coverage.md", tmp_path / "results"
    ok, one_channel = "tests.test_bench_coverage:tiny_net", "lana.teacher.demo_net:demo_resnet"  # in_chans=1: no RGB
    args = ["--models", ok, one_channel, "--results", str(results), "--doc", str(doc), "--sizes", "16", "--limit", "150"]
    records = coverage.main(args)
    good = records[ok]
    assert good["end_to_end"] and good["assembles"] and good["torchscript"] and good["pt2"] and good["speedup"] > 1
    assert good["blocks"] == 2 and good["candidates"][0] >= 1 and good["size"] == 16
    bad = records[one_channel]
    assert not bad["end_to_end"] and bad["reason"].startswith("build: RuntimeError: no side of [16] runs")
    assert "\n" not in bad["reason"]
    rows = _rows(doc)
    assert rows[ok][:2] == ["16", "2 (nchw 2)"] and rows[ok][8] == "yes" and rows[ok][10] == ""  # no reason
    assert rows[one_channel][8] == "**no**" and "expected input" in rows[one_channel][10]
    assert "**1 of 2 models end to end** (50 %)" in doc.read_text()

    # a rerun skips what is recorded; --force redoes it, here past a time limit, with the stage it stopped in
    before = json.loads((results / f"{coverage.slug(ok)}.json").read_text())
    assert coverage.main(args)[ok] == before
    forced = coverage.main(args[:2] + args[3:-1] + ["1", "--force"])[ok]
    assert not forced["end_to_end"] and forced["reason"].startswith("time limit 1 s reached in ")
    assert "Partial run" not in doc.read_text() and "time limit 1 s" in _rows(doc)[ok][10]

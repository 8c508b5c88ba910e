"""The quality benchmark, reduced: one teacher (a tiny timm ResNet), one budget, few steps.

Checks that every method's pipeline runs end to end and that each network it reports meets
the measured budget, plus the pieces a wrong comparison would hide in: random selections
that always meet the table budget, budget searches that stop at the boundary, and the
verdict's arithmetic.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from benchmarks.baselines import prune, random_selection, width_scaled
from benchmarks.compare import summarise, verdict
from lana.errors import ConfigError, InfeasibleError
from solvers import SelectionProblem

ROOT = Path(__file__).resolve().parents[1]
TINY_RESNET = {"num_classes": 10, "in_chans": 1, "channels": [16, 32, 64, 64], "stem_width": 8}


def _table(rng: np.random.Generator, blocks: int = 6, per_block: int = 5) -> pd.DataFrame:
    rows = []
    for b in range(blocks):
        for c in range(per_block):
            rows.append({"block": f"b{b}", "candidate": "teacher" if c == 0 else f"op{c}",
                         "latency_ms": 1.0 if c == 0 else float(rng.uniform(0.05, 1.2)), "score": -float(rng.uniform(0, 1)) if c else 0.0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.5, 4.0])
def test_random_selection_meets_the_table_budget_and_varies(factor):
    rng = np.random.default_rng(0)
    table = _table(rng)
    budget = factor * table.groupby("block")["latency_ms"].min().sum()
    problem = SelectionProblem.from_frame(table).with_limits({"latency_ms": budget})
    draws = [random_selection(problem, rng) for _ in range(40)]
    lat = table.set_index(["block", "candidate"])["latency_ms"]
    for choice in draws:
        assert list(choice) == [f"b{b}" for b in range(6)]
        assert sum(lat[(b, op)] for b, op in choice.items()) <= budget + 1e-9
    if factor > 1:
        assert len({tuple(d.values()) for d in draws}) > 10  # random, not one fixed answer


def test_random_selection_below_the_fastest_is_infeasible():
    rng = np.random.default_rng(1)
    table = _table(rng)
    fastest = table.groupby("block")["latency_ms"].min().sum()
    problem = SelectionProblem.from_frame(table).with_limits({"latency_ms": 0.9 * fastest})
    with pytest.raises(InfeasibleError):
        random_selection(problem, rng)


def test_prune_keeps_the_classifier_and_shrinks_the_network(one_thread):
    from lana.teacher.load import build_model

    torch.manual_seed(0)
    teacher = build_model("timm:resnet18d", TINY_RESNET).eval()
    pruned = prune(teacher, (1, 16, 16), 0.5, num_classes=10)
    x = torch.randn(3, 1, 16, 16)
    assert pruned(x).shape == (3, 10)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned) < 0.5 * count(teacher)
    assert count(prune(teacher, (1, 16, 16), 0.0, 10)) == count(teacher)
    # an inner layer with as many channels as classes is still pruned; only the head is kept
    ten = build_model("timm:resnet18d", {**TINY_RESNET, "channels": [10, 32, 64, 64]}).eval()
    inner = prune(ten, (1, 16, 16), 0.5, num_classes=10)
    assert inner.fc.out_features == 10 and inner.layer1[0].conv1.out_channels < 10


def test_width_scaling_builds_narrower_family_members():
    narrow = width_scaled("timm:resnet18d", TINY_RESNET, 0.5)
    assert narrow.layer4[0].conv1.out_channels == 32 and narrow.conv1[0].out_channels == 8
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    mobile = width_scaled("torchvision:mobilenet_v2", {"num_classes": 10, "in_chans": 1}, 0.25)
    assert mobile.features[0][0].in_channels == 1 and mobile.features[0][0].out_channels == 8
    with pytest.raises(ConfigError, match="no width multiplier"):
        width_scaled("timm:efficientnet_b0", {"num_classes": 10}, 0.5)


def test_verdict_and_summary_arithmetic():
    frame = pd.DataFrame([
        {"teacher": "t", "method": "teacher", "share": 1.0, "budget_ms": None, "latency_ms": 10.0, "top1": 90.0, "setting": "", "finetune_s": 0},
        {"teacher": "t", "method": "lana", "share": 0.5, "budget_ms": 5.0, "latency_ms": 5.0, "top1": 89.7, "setting": "a", "finetune_s": 1},
        {"teacher": "t", "method": "torch-pruning", "share": 0.5, "budget_ms": 5.0, "latency_ms": 4.9, "top1": 89.9, "setting": "r", "finetune_s": 1},
        {"teacher": "t", "method": "random", "share": 0.5, "budget_ms": 5.0, "latency_ms": 4.0, "top1": 85.0, "setting": "x", "finetune_s": 1},
        {"teacher": "t", "method": "random", "share": 0.5, "budget_ms": 5.0, "latency_ms": 4.5, "top1": 87.0, "setting": "y", "finetune_s": 1},
    ])
    frame["speedup"] = 10.0 / frame["latency_ms"]
    frame["latency_share"] = frame["latency_ms"] / 10.0
    frame["drop"] = 90.0 - frame["top1"]
    lines = verdict(frame)
    assert "LOSES" in lines[0] and "torch-pruning 89.90" in lines[0]
    assert "2.00×" in lines[1] and "0.30 points below the teacher" in lines[1]  # within 0.5 points
    summary = summarise(frame)
    random_mean = summary[summary["method"].str.startswith("random (mean")].iloc[0]
    assert random_mean["top1"] == pytest.approx(86.0)
    assert summary[summary["method"] == "random (best)"].iloc[0]["setting"] == "y"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_benchmark_runs_every_method(tmp_path, monkeypatch, one_thread):
    """One tiny timm ResNet teacher, one budget, few steps: every method's pipeline runs."""
    bench = _load_benchmark()
    config = tiny_config(latency={"batch_size": 16, "warmup": 1, "repeats": 5, "threads": 1, "clock": "process", "time_cap_s": 0.1},
                         data={"image_size": 32})
    tree = config.model_dump(mode="json")
    tree["teacher"] = {"model": "timm:resnet18d", "kwargs": TINY_RESNET}
    tree["ops"] = {"include": ["identity", "conv_k1", "pruned_keep50", "lowrank_r50"]}
    tree["finetune"]["epochs"] = 0.2
    tree["teacher_training"]["epochs"] = 0.5
    monkeypatch.setitem(bench.MODES, "tiny", {"image_size": 32, "tree": tree, "random": 2, "threads": 1,
                                              "teachers": {"resnet": ("timm:resnet18d", TINY_RESNET)}})
    code = bench.main(["--mode", "tiny", "--teachers", "resnet", "--shares", "0.85", "--run", str(tmp_path / "q"),
                       "--docs", str(tmp_path / "docs"), "--jobs", "1", "--lana-shares", "0.95"])
    assert code == 0
    frame = pd.read_csv(tmp_path / "q" / "quality.csv")
    assert set(frame["method"]) == {"teacher", "lana", "torch-pruning", "width", "random"}
    assert (frame["method"] == "random").sum() == 2
    assert sorted(frame.loc[frame["method"] == "lana", "share"]) == [0.85, 0.95]  # --lana-shares: lana alone
    assert frame["top1"].notna().all(), frame[frame["top1"].isna()]["setting"].tolist()  # every method reached the budget
    students = frame[frame["method"] != "teacher"]
    # searched to the budget on measured latency (2 % slack, as the benchmark allows)
    assert (students["search_share"] <= students["share"] * 1.02 + 1e-9).all()
    assert students["top1"].between(0, 100).all() and (students["finetune_s"] > 0).all()
    text = (tmp_path / "docs" / "quality.md").read_text()
    assert "timm:resnet18d" in text and "| lana |" in text and "torch-pruning" in text
    assert (tmp_path / "docs" / "quality.png").stat().st_size > 1000
    # --report-only rewrites the docs from the run folder alone, with the run's figures
    (tmp_path / "docs" / "quality.md").unlink()
    assert bench.main(["--mode", "tiny", "--teachers", "resnet", "--run", str(tmp_path / "q"), "--docs", str(tmp_path / "docs"),
                       "--report-only"]) == 0
    assert (tmp_path / "docs" / "quality.md").read_text() == text


def test_unknown_method_is_one_usage_line(capsys):
    with pytest.raises(SystemExit) as info:
        _load_benchmark().main(["--methods", "lana,prunning"])
    assert info.value.code == 2 and "prunning" in capsys.readouterr().err


def test_report_only_without_a_finished_run_says_what_is_missing(tmp_path, capsys):
    bench = _load_benchmark()
    with pytest.raises(SystemExit) as info:
        bench.main(["--run", str(tmp_path / "nothing"), "--report-only"])
    assert info.value.code == 2 and "quality.csv" in capsys.readouterr().err

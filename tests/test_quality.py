"""The quality benchmark, reduced: one teacher (a tiny timm ResNet), one budget, few steps.

Checks that every method's pipeline runs end to end and that every reachable network was
measured inside its band by the shared search, plus the pieces a wrong comparison would
hide in: the pruners, the win/tie rule and the headline chosen on validation. The band search
itself is in ``test_quality_search.py``, the teacher cache in ``test_quality_teachers.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import quality_benchmark, tiny_config
from torch import nn

from benchmarks.baselines import EFFICIENTNET, MEMBERS, prune_magnitude, prune_taylor, width_scaled
from benchmarks.report import cells, close_to_teacher, headline, judge, long_verdict, verdict
from lana.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_RESNET = {"num_classes": 10, "in_chans": 1, "channels": [16, 32, 64, 64], "stem_width": 8}


def test_pruners_keep_the_classifier_and_shrink_the_network(one_thread):
    from lana.teacher.load import build_model

    torch.manual_seed(0)
    teacher = build_model("timm:resnet18d", TINY_RESNET).eval()
    x = torch.randn(3, 1, 16, 16)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    uniform = prune_magnitude(teacher, (1, 16, 16), 0.5, num_classes=10)
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    taylor = prune_taylor(teacher, batches, 0.5, num_classes=10)
    for pruned in (uniform, taylor):
        assert pruned(x).shape == (3, 10) and pruned.fc.out_features == 10
        assert count(pruned) < 0.7 * count(teacher)
    assert count(prune_taylor(teacher, batches, 0.0, 10)) == count(teacher)

    # global ranking: Taylor prunes layers unevenly, the uniform pruner evenly
    def widths(m):
        return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]

    ratios = np.array(widths(taylor)) / np.array(widths(teacher))
    assert ratios.std() > 0.01 and all(p.grad is None for p in taylor.parameters())


def test_width_scaling_and_members_build_narrower_family_networks():
    narrow = width_scaled("timm:resnet18d", TINY_RESNET, 0.5)
    assert narrow.layer4[0].conv1.out_channels == 32 and narrow.conv1[0].out_channels == 8
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    mobile = width_scaled("torchvision:mobilenet_v2", {"num_classes": 10, "in_chans": 1}, 0.25)
    assert mobile.features[0][0].in_channels == 1 and mobile.features[0][0].out_channels == 8
    for _, model, extra in MEMBERS["timm:resnet18d"] + MEMBERS[EFFICIENTNET]:
        kwargs = TINY_RESNET if "resnet" in model else {"num_classes": 10, "in_chans": 1, "width": 0.25}
        net = width_scaled(model, {**kwargs, **extra}, 1.0)
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    b0 = width_scaled(EFFICIENTNET, {"num_classes": 10, "in_chans": 1}, 0.5)
    e = width_scaled(EFFICIENTNET, {"num_classes": 10, "in_chans": 1, "depth": 0.6}, 0.5)
    assert len(list(e.blocks.modules())) < len(list(b0.blocks.modules()))  # fewer repeats
    with pytest.raises(ConfigError, match="no width multiplier"):
        width_scaled("timm:efficientnet_b0", {"num_classes": 10}, 0.5)


def _rows(*cells_):
    rows = [{"teacher": "t", "method": "teacher", "budget": 1.0, "seed": None, "share": 1.0, "final_share": 1.0,
             "val_top1": 89.5, "top1": 89.0, "search_s": 0, "train_s": 0, "setting": ""}]
    for method, budget, vals, tests, share in cells_:
        for seed, (v, t) in enumerate(zip(vals, tests)):
            rows.append({"teacher": "t", "method": method, "budget": budget, "seed": seed, "share": share,
                         "final_share": share, "val_top1": v, "top1": t, "search_s": 1, "train_s": 1, "setting": "s"})
    return pd.DataFrame(rows)


def test_win_needs_more_than_the_larger_spread_and_choices_use_validation():
    frame = _rows(("lana", 0.5, [89.0, 89.2], [88.0, 88.4], 0.49), ("tp-taylor", 0.5, [88.0, 88.0], [87.0, 87.9], 0.49),
                  ("width", 0.5, [80.0, 80.0], [85.0, 85.2], 0.5),
                  ("lana", 0.3, [86.0, 86.0], [88.9, 88.9], 0.29))
    table = cells(frame).set_index(["budget", "method"])
    assert judge(table.loc[(0.5, "lana")], table.loc[(0.5, "tp-taylor")]) == "tie"  # 0.75 apart, spread 0.9
    assert judge(table.loc[(0.5, "lana")], table.loc[(0.5, "width")]) == "win"
    assert judge(table.loc[(0.5, "width")], table.loc[(0.5, "lana")]) == "loss"
    judged, lines = verdict(frame)
    # the best other is picked on validation (tp-taylor, 88.0), not on test
    assert "ties with the best other by validation, tp-taylor" in lines[0]
    assert set(judged["result"]) == {"tie", "win"}
    # headline on validation: 0.3× has the best test top-1 but is 4 validation points down
    text = headline(frame, cells(frame))
    assert "budget 0.5×" in text and f"{1 / 0.49:.2f}×" in text


def test_long_fine_tune_rows_are_judged_apart_and_can_make_the_headline():
    frame = _rows(("lana", 0.5, [89.0, 89.2], [88.0, 88.4], 0.49), ("tp-taylor", 0.5, [88.0, 88.0], [87.0, 87.9], 0.49),
                  ("lana (long fine-tune)", 0.4, [92.8, 92.9], [92.5, 92.6], 0.39),
                  ("tp-taylor (long fine-tune)", 0.4, [91.0, 91.2], [90.7, 91.0], 0.39))
    frame.loc[frame["method"].str.endswith("(long fine-tune)"), "protocol"] = "long"
    teacher = {"teacher": "t", "method": "teacher", "budget": 1.0, "seed": None, "share": 1.0, "final_share": 1.0,
               "val_top1": 93.0, "top1": 92.9, "search_s": 0, "train_s": 1}
    frame = pd.concat([pd.DataFrame([teacher]), frame], ignore_index=True)
    judged, lines = verdict(frame)
    assert set(judged["other"]) == {"tp-taylor"}  # the long rows are not judged against the comparison's
    assert not any("0.4×" in line and "cannot reach" in line for line in lines)
    assert "2.56× (budget 0.4×, long fine-tune" in lines[-1]  # within 0.5 validation points only after the long one
    long = long_verdict(frame)
    assert long == [("t at 0.4×: lana (long fine-tune) 92.55 ± 0.05 % wins against the best other by validation, "
                    "tp-taylor (long fine-tune) 90.85 ± 0.15 %")]
    assert long_verdict(frame[frame["protocol"].ne("long")]) == []


def test_the_headline_reads_the_pairwise_median_where_the_run_timed_one():
    frame = _rows(("lana", 0.5, [89.2, 89.4], [88.0, 88.4], 0.49), ("lana", 0.7, [89.4, 89.6], [88.9, 88.9], 0.69))
    students = frame["method"] == "lana"
    # the round-robin put 0.5× at 0.49, pairwise with the teacher it reads 0.53 and 0.55 (median of 5 rounds)
    frame.loc[students, "headline_share"] = [0.53, 0.55, 0.68, 0.70]
    frame.loc[students, "headline_rounds"] = 5
    text = headline(frame, cells(frame))
    assert f"{1 / 0.54:.2f}× (budget 0.5×" in text and "median of 5 rounds; one round-robin of every network: 2.04×" in text
    # one seed without it (a run before the pairwise timing): the cell falls back to the round-robin
    frame.loc[frame.index[2], "headline_share"] = float("nan")
    assert f"{1 / 0.49:.2f}× (budget 0.5×" in headline(frame, cells(frame))


def test_median_shares_take_every_model_once_per_round_and_keep_the_median(monkeypatch):
    from benchmarks import search

    reads = {"a": iter([0.50, 0.80, 0.52]), "b": iter([0.30, 0.31, 0.20])}
    order = []
    monkeypatch.setattr(search, "measure_share", lambda model, ref, shape, cfg: (order.append(model) or 1.0, next(reads[model])))
    assert search.median_shares(["a", "b"], "teacher", (1, 8, 8), None, rounds=3) == [0.52, 0.30]
    assert order == ["a", "b"] * 3  # round after round: a slow spell touches one round of each


TINY_BAND = (0.88, 1.00)


def _tiny_mode(monkeypatch, tmp_path):
    """The benchmark with a mode "tiny": one tiny timm ResNet teacher on digits, one budget, two seeds, few steps."""
    bench = quality_benchmark()
    config = tiny_config(latency={"batch_size": 16, "warmup": 1, "repeats": 5, "threads": 1, "clock": "process", "time_cap_s": 0.15},
                         data={"image_size": 32})
    tree = config.model_dump(mode="json")
    tree["teacher"] = {"model": "timm:resnet18d", "kwargs": TINY_RESNET}
    tree["ops"] = {"include": ["identity", "conv_k1", "pruned_keep50", "lowrank_r50"]}
    tree["finetune"]["epochs"] = 0.2
    tree["teacher_training"]["epochs"] = 0.3
    tree["score"]["val_images"] = 120  # of the 200 validation images: the other 80 make the choices
    recipe = {"epochs": 1, "batch_size": 32, "lr": 0.05,
              "data": {"kind": "digits", "image_size": 32, "val_size": 200, "train_limit": 400, "mean": [0.3], "std": [0.42]}}
    monkeypatch.setenv("LANA_TEACHER_CACHE", str(tmp_path / "teachers"))
    monkeypatch.setitem(bench.MODES, "tiny", {"image_size": 32, "tree": tree, "random": 2, "threads": 1, "jobs": 1, "recipe": recipe,
                                              "shares": [0.7], "seeds": [0, 1], "max_measurements": 10, "max_equal_epochs": 0.4,
                                              "long_finetune": {"shares": [0.7], "steps": 4, "methods": ["lana", "tp-taylor"]},
                                              "band": TINY_BAND,
                                              "teachers": {"resnet": ("timm:resnet18d", TINY_RESNET)}})
    return bench


def test_reduced_benchmark_runs_every_method_inside_the_band(tmp_path, monkeypatch, one_thread, caplog):
    """One tiny timm ResNet teacher, one budget, two seeds, few steps: every method runs, every network is in its band."""
    bench = _tiny_mode(monkeypatch, tmp_path)
    from benchmarks import compare

    trained_on = {}  # fine-tune label → training images
    real_finetune = compare._finetune

    def counting_finetune(ctx, model, targets, seed, epochs=None, lr=None, desc="", splits=None):
        trained_on.setdefault(desc, len((splits or ctx.splits).train))
        return real_finetune(ctx, model, targets, seed, epochs, lr, desc, splits)
    monkeypatch.setattr(compare, "_finetune", counting_finetune)
    code = bench.main(["--mode", "tiny", "--run", str(tmp_path / "q"), "--docs", str(tmp_path / "docs")])
    assert code == 0
    frame = pd.read_csv(tmp_path / "q" / "quality.csv")
    # the long fine-tune: lana's and Torch-Pruning's networks again, on every training image, judged apart
    long = frame[frame["protocol"].eq("long")]
    assert set(long["method"]) <= {"lana (long fine-tune)", "tp-taylor (long fine-tune)"} and not long.empty
    assert (long.dropna(subset=["top1"])["finetune_steps"] == 4).all()
    short_sizes = {n for d, n in trained_on.items() if "long" not in d}
    long_sizes = {n for d, n in trained_on.items() if "long fine-tune" in d}
    assert long_sizes and max(short_sizes) < min(long_sizes), trained_on  # tree's train_limit lifted
    assert "## Long fine-tune" in (tmp_path / "docs" / "quality.md").read_text()
    all_rows, frame = frame, frame[frame["protocol"].ne("long")]
    expected = {"lana", "random", "random-best", "tp-taylor", "tp-magnitude", "width", "member:resnet14t", "member:resnet10t"}
    assert expected <= set(frame["method"]), set(frame["method"])
    networks = frame[frame["method"] != "teacher"].dropna(subset=["top1"])
    unreached = frame[(frame["method"] != "teacher") & frame["top1"].isna()]
    assert unreached["note"].str.contains("cannot reach|missed the band").all()
    # The tiny teacher's timings are noisy (the same network reads 8 % apart on a loaded machine),
    # so this run's band is wider than the benchmark's 3 %; any one search may still miss it
    # and then says so above; most must land in it.
    assert networks["method"].nunique() >= len(expected) // 2, unreached["note"].tolist()
    # the equal-latency rule: every reachable network was measured inside 0.7 × TINY_BAND
    low, high = 0.7 * TINY_BAND[0], 0.7 * TINY_BAND[1]
    assert networks["share"].between(low - 1e-9, high + 1e-9).all(), networks[["method", "share"]]
    assert f"[{TINY_BAND[0]:.2f}, {TINY_BAND[1]:.2f}]" in (tmp_path / "docs" / "quality.md").read_text()
    missed = set(unreached["method"])  # a per-seed search (lana, random, tp-taylor) may miss for one seed only
    # an equal-compute row exists only for the seeds its base method reached
    assert all(n == 2 or m.removesuffix(" (lana's compute)") in missed
               for m, n in networks.groupby("method")["seed"].nunique().items())
    if "lana" in set(networks["method"]):  # the equal-compute row needs lana's network at that budget
        assert any(m.endswith("(lana's compute)") for m in networks["method"])
    lana = networks[networks["method"] == "lana"]
    timing = pd.read_json(tmp_path / "q" / "resnet" / "quality_timing.json", typ="series")
    per_seed = timing["distill_score_latency_s_per_seed"]
    assert all(r.train_s >= per_seed[str(int(r.seed))] for r in lana.itertuples())  # its own distillation is in its training
    # every seed distilled lana's candidates in its own run; the teacher came from the cache, trained once
    assert {p.name for p in (tmp_path / "q" / "resnet").glob("seed*")} == {"seed0", "seed1"}
    assert len(list((tmp_path / "teachers").glob("*/teacher.pt"))) == 1
    assert networks["top1"].between(0, 100).all() and networks["val_top1"].between(0, 100).all()
    assert networks["final_share"].notna().all() and (networks["search_s"] > 0).all()
    # the headline's students, lana's cells within 0.5 validation points of the teacher, alone were timed again pairwise
    close = close_to_teacher(cells(all_rows), all_rows.loc[all_rows["method"] == "teacher", "val_top1"].iloc[0])
    timed = all_rows.dropna(subset=["headline_share"])
    assert set(zip(timed["budget"], timed["method"])) == set(zip(close["budget"], close["method"]))
    assert (timed["headline_share"] > 0).all() and (timed["headline_rounds"] == compare.HEADLINE_ROUNDS).all()
    docs_csv = pd.read_csv(tmp_path / "docs" / "quality.csv")
    assert list(docs_csv.columns[:9]) == ["teacher", "method", "budget", "seed", "share", "val_top1", "top1", "search_s", "train_s"]
    assert len(docs_csv) == len(all_rows)
    text = (tmp_path / "docs" / "quality.md").read_text()
    assert "| lana |" in text and "tp-taylor" in text
    assert "min of benchmark work in all (each teacher's under Teachers; on 2 workers, `--jobs 2`, these units take" in text
    assert ("wins | ties | losses" if "lana" in set(networks["method"]) else "No cell where lana") in text
    assert (tmp_path / "docs" / "quality.png").stat().st_size > 1000
    # --report-only rewrites the docs from the run folder alone, with the run's figures
    (tmp_path / "docs" / "quality.md").unlink()
    assert bench.main(["--mode", "tiny", "--run", str(tmp_path / "q"), "--docs", str(tmp_path / "docs"), "--report-only"]) == 0
    assert (tmp_path / "docs" / "quality.md").read_text() == text
    # a run started again reuses every finished budget: no network is searched or fine-tuned again
    monkeypatch.setattr(compare.Comparison, "train_and_add", lambda *a, **k: pytest.fail("a finished budget was redone"))
    monkeypatch.setattr(compare.Comparison, "search", lambda *a, **k: pytest.fail("a finished budget was searched again"))
    assert bench.main(["--mode", "tiny", "--run", str(tmp_path / "q"), "--docs", ""]) == 0
    again = pd.read_csv(tmp_path / "q" / "quality.csv")
    pd.testing.assert_series_equal(again.loc[frame.index, "top1"], frame["top1"])
    # a longer long fine-tune redoes the long rows alone; the budget's rows are still reused
    retrained = []
    monkeypatch.setattr(compare.Comparison, "train_and_add", lambda self, method, *a, **k: retrained.append(method))
    monkeypatch.setattr(compare.Comparison, "search", lambda self, method, share, seed, *a: self.rows.append(
        {"method": method, "budget": share, "seed": seed, "note": "missed the band"}))  # a miss row, no network
    monkeypatch.setitem(bench.MODES["tiny"], "long_finetune", {"shares": [0.7], "steps": 5, "methods": ["lana", "tp-taylor"]})
    assert bench.main(["--mode", "tiny", "--run", str(tmp_path / "q"), "--docs", ""]) == 0
    assert retrained == [] and "made with {'steps': 4" in caplog.text
    longer = pd.read_csv(tmp_path / "q" / "quality.csv")
    redone = longer[longer["protocol"].eq("long")]
    assert not redone.empty and redone["top1"].isna().all() and redone["note"].eq("missed the band").all()
    pd.testing.assert_series_equal(longer.loc[frame.index, "top1"], frame["top1"])


def test_jobs_run_the_work_in_units_that_a_single_job_run_then_reuses(tmp_path, monkeypatch, one_thread):
    """--jobs 2: the teacher's training, each seed's distillation, the budget, the long budget and the final
    pass run as units (threads here; processes in a real run); a later --jobs 1 run redoes none of it."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks import compare, schedule

    bench = _tiny_mode(monkeypatch, tmp_path)
    monkeypatch.setattr(schedule, "ProcessPoolExecutor", lambda max_workers, mp_context, **_: ThreadPoolExecutor(max_workers))
    monkeypatch.setitem(bench.MODES["tiny"], "long_finetune", {"shares": [0.7], "steps": 4, "methods": ["lana"]})
    args = ["--mode", "tiny", "--methods", "lana", "--run", str(tmp_path / "q"), "--docs", ""]
    assert bench.main([*args, "--jobs", "2"]) == 0
    frame = pd.read_csv(tmp_path / "q" / "quality.csv")
    assert (frame["method"] == "teacher").sum() == 1  # the final pass alone adds the teacher
    assert set(frame["method"]) == {"teacher", "lana", "lana (long fine-tune)"}
    assert frame.loc[frame["method"] != "teacher", "seed"].dropna().astype(int).isin([0, 1]).all()
    assert frame.dropna(subset=["top1"])["final_share"].notna().all()
    units = [a.get("unit") for a in json.loads((tmp_path / "q" / "resnet" / "attempts.json").read_text())]
    assert sorted(units) == ["resnet 0.7×", "resnet distill seed 0", "resnet distill seed 1", "resnet final", "resnet long 0.7×"]
    assert len(list((tmp_path / "teachers").glob("*/teacher.pt"))) == 1  # trained once, by its own unit
    timing = json.loads((tmp_path / "q" / "resnet" / "quality_timing.json").read_text())
    assert timing["budget_0.7_s"] > 0 and set(timing["distill_score_latency_s_per_seed"]) == {"0", "1"}
    # one job, the same run folder: every unit's work is reused, the rows are the same
    monkeypatch.setattr(compare.Comparison, "train_and_add", lambda *a, **k: pytest.fail("a finished unit was redone"))
    monkeypatch.setattr(compare.Comparison, "search", lambda *a, **k: pytest.fail("a finished unit was searched again"))
    assert bench.main([*args, "--jobs", "1"]) == 0
    pd.testing.assert_series_equal(pd.read_csv(tmp_path / "q" / "quality.csv")["top1"], frame["top1"])


def test_plan_lists_the_units_with_their_estimates_and_counts_what_the_run_holds_as_done(tmp_path, monkeypatch, capsys):
    bench = quality_benchmark()
    monkeypatch.setenv("LANA_TEACHER_CACHE", str(tmp_path / "teachers"))  # none cached: each teacher is a unit
    run = tmp_path / "q"
    assert bench.main(["--plan", "--teachers", "resnet,vit", "--jobs", "1", "--run", str(run)]) == 0
    text = capsys.readouterr().out
    est = bench.MODES["cpu"]["unit_minutes"]
    assert "| vit teacher | resnet teacher | 875 |" in text and "| resnet 0.5× | resnet distill seed 0, resnet distill seed 1 |" in text
    work = (sum(est[k]["teacher"] + 2 * est[k]["distill"] + 3 * est[k]["budget"] + est[k]["final"] for k in ("resnet", "vit"))
            + 2 * est["resnet"]["long"])  # ResNet-18-D has two long budgets, the ViT none
    assert f"min of work left: about {work:g} min on 1 worker(s)" in text
    (run / "resnet").mkdir(parents=True)
    (run / "resnet" / "budget_0.5.pt").write_bytes(b"")  # a finished budget: nothing left to estimate
    assert bench.main(["--plan", "--teachers", "resnet,vit", "--jobs", "2", "--run", str(run)]) == 0
    text = capsys.readouterr().out
    assert "| resnet 0.5× | resnet distill seed 0, resnet distill seed 1 | 0 |" in text
    assert f"{work - est['resnet']['budget']:g} min of work left" in text and "on 2 worker(s)" in text


def test_the_docs_wall_on_two_workers_is_the_schedule_of_the_measured_units():
    from benchmarks.schedule import scheduled_wall, work_seconds

    # one teacher: 10 + 10 min of distillation, budgets of 30, 20 and 20 min, a final pass of 2 (+ 0.5 of logits)
    one = {"distill_score_latency_s_per_seed": {"0": 600, "1": 600}, "budget_0.3_s": 1800, "budget_0.5_s": 1200,
           "budget_0.7_s": 1200, "final_timing_s": 120, "teacher_logits_s": 30, "train_teacher_s": 9999}
    assert work_seconds(one) / 60 == 92.5  # the cached teacher's training is not the run's work
    assert scheduled_wall({"a": one}, 1) == 92.5
    # on two workers: both distillations (10), then 30 ‖ 20 + 20 (40), then the final pass
    assert scheduled_wall({"a": one}, 2) == 10 + 40 + 2.5
    # a second teacher's units fill the idle worker: less than the two walls one after the other
    two = {"a": one, "b": {**one, "long_0.33_s": 600}}
    assert 92.5 + 5 <= scheduled_wall(two, 2) < 2 * 52.5 + 10


def test_unknown_method_is_one_usage_line(capsys):
    with pytest.raises(SystemExit) as info:
        quality_benchmark().main(["--methods", "lana,prunning"])
    assert info.value.code == 2 and "prunning" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        quality_benchmark().main(["--long-shares", "0.4x"])
    assert info.value.code == 2 and "'0.4x'" in capsys.readouterr().err


def test_report_only_without_a_finished_run_says_what_is_missing(tmp_path, capsys):
    bench = quality_benchmark()
    with pytest.raises(SystemExit) as info:
        bench.main(["--run", str(tmp_path / "nothing"), "--report-only"])
    assert info.value.code == 2 and "quality.csv" in capsys.readouterr().err


def test_parallel_teachers_can_still_silence_progress_bars():
    """Importing the benchmark must not import tqdm: a worker sets TQDM_DISABLE before torch loads it."""
    import subprocess
    import sys

    code = ("import sys, benchmarks.quality, benchmarks.quality_run, benchmarks.schedule; "
            "print('tqdm' in sys.modules, 'torch' in sys.modules)")  # a worker unpickles quality_run.run_unit first
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]



def test_a_loss_to_an_equal_compute_row_is_explained_from_the_runs_rows():
    from benchmarks.report import losses_explained

    frame = _rows(("lana", 0.5, [90.4, 90.4], [89.8, 90.2], 0.49), ("tp-magnitude", 0.5, [89.5, 89.5], [89.8, 89.9], 0.49),
                  ("tp-magnitude (lana's compute)", 0.5, [90.7, 90.7], [91.0, 91.0], 0.49))
    frame.loc[frame["method"].str.endswith("compute)"), "setting"] = "8.0 fine-tune epochs"
    judged, _ = verdict(frame)
    lines = losses_explained(frame, judged)
    assert len(lines) == 4 and "tp-magnitude (lana's compute) 91.00 % against lana 90.00 %" in lines[-1]
    assert "fine-tuned for 8.0 fine-tune epochs" in lines[-1] and "tp-magnitude got 89.85 % and lana ties" in lines[-1]
    assert losses_explained(frame[~frame["method"].str.endswith("compute)")], verdict(frame.iloc[:4])[0]) == []
    # a row that repeats a baseline which had lana's compute already says so
    frame.loc[frame["method"].str.endswith("compute)"), "setting"] = "its own rows: 1800 s ≥ lana's 1700 s"
    line = losses_explained(frame, verdict(frame)[0])[-1]
    assert "tp-magnitude had lana's compute already (its own rows: 1800 s ≥ lana's 1700 s)" in line


def test_each_teacher_gets_its_own_long_fine_tune_settings_over_the_modes():
    bench = quality_benchmark()
    base = bench.MODES["cpu"]["long_finetune"]
    assert bench.long_finetune_for("cpu", "resnet") == {**base, "shares": [0.33, 0.3]}
    # its own budget and steps, the methods the mode's
    assert bench.long_finetune_for("cpu", "mobilenet") == {**base, "shares": [0.37], "steps": 24000}
    assert bench.long_finetune_for("cpu", "vit")["shares"] == []
    assert bench.long_finetune_for("cpu", "vit", shares=[0.5])["shares"] == [0.5]  # --long-shares wins

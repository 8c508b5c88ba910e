"""`lana profile` (another setting, bundle round trip, import), `lana latency-check` and `lana proxy` on a run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from lana.cli.app import app
from lana.errors import ConfigError, TableError
from lana.run.folder import RunFolder

runner = CliRunner()
QUICK = ["--set", "latency.threads=1", "--set", "latency.max_repeats=6"]


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """A private copy of the trained tiny run (these tests add profiles and corrections to it)."""
    source = trained_run[0].path
    target = tmp_path_factory.mktemp("latency") / "run"
    shutil.copytree(source, target)
    return RunFolder(target)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_profile_another_setting_adds_columns_and_keeps_the_primary(run_copy):
    before = run_copy.load_table()
    result = invoke("profile", "--run", run_copy.path, *QUICK, "--set", "latency.batch_size=2", "--set", "latency.method=isolated")
    assert result.exit_code == 0, result.output
    tag = "cpu-b2-float32-eager-t1"
    table = run_copy.load_table()
    assert {f"latency_ms:{tag}", f"latency_iqr_ms:{tag}", f"latency_isolated_ms:{tag}"} <= set(table.columns)
    assert table["latency_ms"].equals(before["latency_ms"]) and (table[f"latency_ms:{tag}"] > 0).all()
    latency = json.loads(run_copy.file("latency.json").read_text())
    stored = latency["profiles"][tag]
    assert stored["settings"]["batch_size"] == 2 and stored["settings"]["threads_used"] == 1 and stored["method"] == "isolated"
    assert stored["fixed_latency_ms"] == pytest.approx(stored["teacher_latency_ms"] - stored["blocks_sum_ms"])
    assert table["latency_settings"].iloc[0] == latency["tag"]  # the primary's tag beside its figures
    # solve limits the per-tag column too: a limit that binds changes the choice and holds
    free = invoke("solve", "--run", run_copy.path, "--budget", "100%", "--cost", f"latency_ms:{tag}<=1s", "--json")
    assert free.exit_code == 0, free.output
    free = json.loads(free.stdout)
    limit = 0.8 * free["totals"][f"latency_ms:{tag}"]
    solved = invoke("solve", "--run", run_copy.path, "--budget", "100%", "--cost", f"latency_ms:{tag}<={limit:.6f}ms", "--json")
    assert solved.exit_code == 0, solved.output
    solved = json.loads(solved.stdout)
    assert solved["totals"][f"latency_ms:{tag}"] <= limit * (1 + 1e-6) and solved["choice"] != free["choice"]
    # and the proxy report compares the two settings
    proxy = invoke("proxy", "--run", run_copy.path, "--proxy", "latency_ms", "--target", f"latency_ms:{tag}", "--samples", "4")
    assert proxy.exit_code == 0, proxy.output
    assert "Spearman" in proxy.output and "Pareto front" in proxy.output and "per-family correction" in proxy.output


def test_bundle_round_trip(run_copy, tmp_path):
    bundle = tmp_path / "bundle"
    result = invoke("profile", "--run", run_copy.path, "--bundle", bundle, "--networks", "2", *QUICK)
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    kinds = [e["kind"] for e in manifest["entries"]]
    table = run_copy.load_table()
    assert kinds.count("candidate") == len(table) and kinds.count("teacher") == 1 and kinds.count("network") == 2
    source = (bundle / "runner.py").read_text()
    assert "import lana" not in source and "from lana" not in source  # needs only torch

    csv_path = tmp_path / "remote.csv"
    done = subprocess.run([sys.executable, str(bundle / "runner.py"), "--out", str(csv_path), "--name", "testbox", "--threads", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(csv_path)
    assert len(rows) == len(manifest["entries"]) and (rows["median_ms"] > 0).all()

    imported = invoke("profile", "--run", run_copy.path, "--import", csv_path)
    assert imported.exit_code == 0, imported.output
    tag = rows["tag"].iloc[0]
    assert tag.startswith("cpu-b4-float32-eager") and tag.endswith("@testbox")
    latency = json.loads(run_copy.file("latency.json").read_text())
    record = latency["profiles"][tag]
    assert record["method"] == "imported" and record["calibration"]["networks"] == 3  # two networks + the teacher
    assert (run_copy.load_table()[f"latency_ms:{tag}"] > 0).all()

    broken = tmp_path / "broken.csv"
    rows.iloc[:-4].to_csv(broken, index=False)  # candidates missing
    from lana.stages.profile import import_csv

    with pytest.raises(TableError, match="does not match this run's candidates"):
        import_csv(run_copy, broken)


def test_latency_check_reports_and_fits_a_correction_that_solve_uses(run_copy):
    run_copy.file("reference.json").unlink(missing_ok=True)  # an export of the shared run times the teacher now; not here
    result = invoke("latency-check", "--run", run_copy.path, "--networks", "4", "--fit", *QUICK)
    assert result.exit_code == 0, result.output
    assert "median" in result.output and "noise floor" in result.output and "leave-one-out" in result.output
    assert "reference (teacher) moved" in result.output and "chosen" in result.output
    for name in ("latency_check.csv", "latency_check.png", "latency_check.json"):
        assert run_copy.file(name).is_file()
    frame = pd.read_csv(run_copy.file("latency_check.csv"))
    assert {"random", "teacher"} <= set(frame["kind"]) and (frame["measured_ms"] > 0).all()
    assert {"second_window_ms", "noise_pct"} <= set(frame.columns) and (frame["second_window_ms"] > 0).all()  # the noise floor's window
    summary = json.loads(run_copy.file("latency_check.json").read_text())
    assert summary["before"]["networks"] == len(frame) - 1 and "teacher_drift_pct" in summary  # the teacher is not judged
    kinds = summary["choice"]["kinds"]
    assert set(kinds) == {"none", "offset", "offset+scale"} and kinds["none"]["eligible"]
    chosen = kinds[summary["choice"]["chosen"]]
    assert chosen["median_pct"] <= kinds["none"]["median_pct"] and chosen["mean_pct"] <= kinds["none"]["mean_pct"]
    latency = json.loads(run_copy.file("latency.json").read_text())
    cal = latency["calibration"]
    assert cal["kind"] == summary["choice"]["chosen"] and cal["why"]
    assert cal["nested_leave_one_out"]["per_fold"] and "the choice itself held out" in result.output
    assert latency["fixed_latency_ms"] == cal["fixed_ms"]
    table = run_copy.load_table()
    assert table["latency_ms"].tolist() == pytest.approx((table["latency_context_ms"] * cal["scale"]).tolist())

    from lana.stages.solve import solve_run

    selection = solve_run(run_copy, "80%")
    chosen = table.set_index(["block", "candidate"]).loc[list(selection["choice"].items())]
    assert selection["predicted_latency_ms"] == pytest.approx(chosen["latency_ms"].sum() + cal["fixed_ms"], rel=1e-6)

    refused = invoke("latency-check", "--run", run_copy.path, "--networks", "3", "--fit")
    assert refused.exit_code != 0 and isinstance(refused.exception, ConfigError)


def test_solve_converts_figures_with_the_reference_timed_now(run_copy):
    from lana.stages.solve import solve_run

    run_copy.file("reference.json").unlink(missing_ok=True)
    before = solve_run(run_copy, "80%")
    assert before["reference_drift_pct"] is None
    result = invoke("profile", "--run", run_copy.path, "--reference", *QUICK)
    assert result.exit_code == 0, result.output
    assert "reference (teacher) now" in result.output
    latency = json.loads(run_copy.file("latency.json").read_text())
    reference = json.loads(run_copy.file("reference.json").read_text())
    assert reference["teacher_profiled_ms"] == latency["teacher_latency_ms"] and reference["teacher_now_ms"] > 0
    # the machine runs twice as slow now: a share budget picks the same, its ms double
    run_copy.file("reference.json").write_text(json.dumps({**reference, "teacher_now_ms": 2 * reference["teacher_profiled_ms"]}))
    slow = solve_run(run_copy, "80%")
    assert slow["choice"] == before["choice"] and slow["reference_drift_pct"] == pytest.approx(100.0)
    assert slow["predicted_latency_ms"] == pytest.approx(2 * before["predicted_latency_ms"])
    assert slow["budget_ms"] == pytest.approx(2 * before["budget_ms"])
    # a reference of another profiling is ignored
    run_copy.file("reference.json").write_text(json.dumps({**reference, "teacher_profiled_ms": 1.0, "teacher_now_ms": 5.0}))
    assert solve_run(run_copy, "80%")["predicted_latency_ms"] == pytest.approx(before["predicted_latency_ms"])
    run_copy.file("reference.json").unlink()


def test_primary_profile_swaps_and_keeps_the_old_one(run_copy):
    from lana.latency.measure import settings_tag

    old_tag = json.loads(run_copy.file("latency.json").read_text())["tag"]
    result = invoke("profile", "--run", run_copy.path, "--primary", *QUICK, "--set", "latency.batch_size=3",
                    "--set", "latency.method=isolated")
    assert result.exit_code == 0, result.output
    latency = json.loads(run_copy.file("latency.json").read_text())
    config = run_copy.load_config()
    assert latency["tag"] == settings_tag(config.latency) == "cpu-b3-float32-eager-t1" and config.latency.batch_size == 3
    assert old_tag in latency["profiles"]
    table = run_copy.load_table()
    assert (table["latency_settings"] == latency["tag"]).all() and f"latency_ms:{old_tag}" in table.columns
    missing = invoke("profile", "--run", run_copy.path, "--device", "cuda:7")
    assert missing.exit_code != 0 and "cuda" in str(missing.exception)


def _watch_builds(monkeypatch, stage_module):
    """The candidates a stage builds its modules from, and the modules held at each build."""
    from lana.distill import candidates as cmod

    seen, held = {}, []
    real_all, real_build = stage_module.build_all_candidates, cmod.Candidate.build

    def capture(*args, **kwargs):
        seen["candidates"] = real_all(*args, **kwargs)
        return seen["candidates"]

    def build(self):
        held.append(cmod.live_modules(seen["candidates"]))
        return real_build(self)
    monkeypatch.setattr(stage_module, "build_all_candidates", capture)
    monkeypatch.setattr(cmod.Candidate, "build", build)
    return seen, held


def test_the_bundle_holds_one_blocks_candidates_and_the_networks_ones(run_copy, tmp_path, monkeypatch):
    from lana.stages import profile

    seen, held = _watch_builds(monkeypatch, profile)
    profile.write_bundle(run_copy, tmp_path / "bundle", networks=2)
    cands = seen["candidates"]
    total, per_block, blocks = sum(map(len, cands.values())), max(map(len, cands.values())), len(cands)
    assert len(held) >= total > per_block + 2 * blocks  # every candidate saved; the bound below says something
    assert max(held) < per_block + 2 * blocks  # not the whole zoo at once


def test_the_latency_check_builds_only_the_candidates_its_networks_use(run_copy, monkeypatch):
    from lana.stages import check

    seen, held = _watch_builds(monkeypatch, check)
    run_copy.file("reference.json").unlink(missing_ok=True)
    check.check_run(run_copy, networks=3, overrides=["latency.threads=1", "latency.max_repeats=6"])
    cands = seen["candidates"]
    frame = pd.read_csv(run_copy.file("latency_check.csv"))
    networks = int((frame["kind"] != "teacher").sum())
    assert 0 < len(held) <= networks * len(cands) < sum(map(len, cands.values()))

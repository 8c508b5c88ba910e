"""``lana solve`` through typer: bring-your-own tables, run folders, limits, sweeps, errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lana.cli import pipeline
from lana.cli.app import app
from lana.errors import (
    BudgetError,
    ConfigError,
    InfeasibleError,
    LanaError,
    RunFolderError,
    SolverUnavailableError,
    TableError,
)
from lana.selection import parse_budget, parse_count, parse_limit
from lana.stages.solve import solve_run

HAND_WRITTEN = """block,candidate,score,latency_ms,params,macs,acc_delta,latency_ms:gpu
stem,teacher,0,1.0,1000,5e6,0,0.30
stem,mb3,-0.2,0.5,400,2e6,-0.2,0.25
stem,skip,-1.5,0.05,0,0,-1.5,0.01
layer2,teacher,0,2.0,5000,9e6,0,0.20
layer2,mb5,-0.1,1.1,2000,4e6,-0.1,0.40
layer2,ghost,-0.4,0.6,900,1e6,-0.4,0.10
"""


def invoke(*args: str):
    return CliRunner().invoke(app, ["solve", *args])


def failure(result, kind: type[LanaError]) -> str:
    """The one-line message of a command that failed with ``kind``."""
    assert result.exit_code != 0
    assert isinstance(result.exception, kind), result.output
    message = str(result.exception)
    assert message and "\n" not in message
    return message


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(HAND_WRITTEN)
    return path


@pytest.fixture
def run_dir(tmp_path):
    """A fake run folder as `lana distill` leaves it."""
    run = tmp_path / "run"
    run.mkdir()
    frame = pd.read_csv(pd.io.common.StringIO(HAND_WRITTEN)).assign(family="x")
    frame.to_parquet(run / "candidates.parquet")
    (run / "latency.json").write_text(json.dumps({"teacher_latency_ms": 3.4, "fixed_latency_ms": 0.4}))
    (run / "config.yaml").write_text("name: fake\nsolve:\n  budget: 50%\n  solver: auto\n")
    return run


# -- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("5ms", 5.0), ("500us", 0.5), ("0.005s", 5.0), ("2.5 ms", 2.5), ("50%", 1.5), ("1e1ms", 10.0)])
def test_parse_budget_units(text, expected):
    assert parse_budget(text, reference_ms=3.0) == pytest.approx(expected)


@pytest.mark.parametrize("text, fragment", [("5", "has no unit"), ("fast", "is not a latency"), ("-1ms", "must be positive"),
                                            ("0ms", "must be positive"), ("5 kg", "is not a latency")])
def test_parse_budget_rejects(text, fragment):
    with pytest.raises(BudgetError, match=fragment):
        parse_budget(text, reference_ms=3.0)


def test_percent_budget_needs_a_reference():
    with pytest.raises(BudgetError, match="not known here"):
        parse_budget("50%", reference_ms=None)


def test_parse_counts_and_limits():
    assert [parse_count(t, "--max-params") for t in ("3M", "500k", "3000000", "1.5G", "2e6")] == [3e6, 5e5, 3e6, 1.5e9, 2e6]
    with pytest.raises(BudgetError, match="not a count"):
        parse_count("3X", "--max-params")
    assert parse_limit("latency_ms:cuda-b64-float16-eager<=2ms", {}) == ("latency_ms:cuda-b64-float16-eager", "<=", 2.0)
    assert parse_limit("params >= 1k", {}) == ("params", ">=", 1000.0)


# -- bring-your-own tables ---------------------------------------------------------------
def test_hand_written_csv_json_output(table):
    result = invoke("--table", str(table), "--budget", "2ms", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["choice"] == {"stem": "mb3", "layer2": "mb5"}
    assert record["objective"] == pytest.approx(-0.3)
    assert record["totals"]["latency_ms"] == pytest.approx(1.6) and record["totals"]["params"] == 2400
    assert record["predicted_acc_delta"] == pytest.approx(-0.3)
    assert record["optimal"] is True and record["gap"] == 0.0 and record["solver"] == "auto:mckp"
    assert record["budget_ms"] == 2.0 and record["seconds"] >= 0


def test_readable_output_and_parquet_input(tmp_path, table):
    parquet = tmp_path / "mine.parquet"
    pd.read_csv(table).to_parquet(parquet)
    result = invoke("--table", str(parquet), "--budget", "2000us", "--solver", "pulp")
    assert result.exit_code == 0, result.output
    for fragment in ("mb3", "mb5", "predicted latency", "1.6 ms", "-0.300 points", "pulp", "proven optimal"):
        assert fragment in result.stdout


def test_several_limits_at_once(table):
    result = invoke("--table", str(table), "--budget", "2ms", "--max-params", "1.5k", "--json")
    assert json.loads(result.stdout)["choice"] == {"stem": "mb3", "layer2": "ghost"}
    # a per-device latency column limits the choice too (multi-device)
    result = invoke("--table", str(table), "--budget", "2ms", "--cost", "latency_ms:gpu<=400us", "--json")
    record = json.loads(result.stdout)
    assert record["totals"]["latency_ms:gpu"] == pytest.approx(0.4)
    assert record["choice"] == {"stem": "teacher", "layer2": "ghost"}  # the unlimited best needs 0.65 ms there
    assert invoke("--table", str(table), "--budget", "2ms", "--max-macs", "5M", "--json").exit_code == 0


def test_top_k_and_time_limit(table):
    result = invoke("--table", str(table), "--budget", "3.5ms", "--top-k", "4", "--time-limit", "5", "--json")
    record = json.loads(result.stdout)
    choices = [json.dumps(s["choice"], sort_keys=True) for s in record["top_k"]]
    assert len(choices) == 4 and len(set(choices)) == 4
    objectives = [s["objective"] for s in record["top_k"]]
    assert objectives == sorted(objectives, reverse=True) and record["choice"] == record["top_k"][0]["choice"]


def test_percent_budget_uses_teacher_rows_of_a_table(table):
    record = json.loads(invoke("--table", str(table), "--budget", "50%", "--json").stdout)
    assert record["budget_ms"] == pytest.approx(1.5)  # half of 1.0 + 2.0


@pytest.mark.parametrize("args, kind, fragment", [
    (["--budget", "5"], BudgetError, "has no unit"),
    (["--budget", "0.5ms"], InfeasibleError,
     "latency budget 0.5 ms is below the fastest reachable 0.65 ms; raise --budget (budget= in Python) to at least 0.65ms"),
    (["--budget", "1.5ms", "--max-params", "500"], InfeasibleError, "raise --max-params (max_params=) to at least 900"),
    (["--budget", "0.7ms", "--max-params", "100"], InfeasibleError, "raise --max-params"),
    (["--budget", "2ms", "--solver", "gurobi"], SolverUnavailableError, "unknown solver 'gurobi'"),
    (["--budget", "2ms", "--cost", "energy<=3"], TableError, "'energy'"),
    (["--budget", "2ms", "--cost", "latency_ms<=3ms"], ConfigError, "limited twice"),
    (["--budget", "2ms", "--export"], ConfigError, "--export needs --run"),
    ([], ConfigError, "no limit given"),
])
def test_error_paths_are_one_line_and_non_zero(table, args, kind, fragment):
    assert fragment in failure(invoke("--table", str(table), *args), kind)


def test_joint_infeasibility_names_the_other_limit(table):
    # each limit alone can be met; together the fastest selection with >= 3000 params takes 2.05 ms
    message = failure(invoke("--table", str(table), "--budget", "1.2ms", "--cost", "params>=3k"), InfeasibleError)
    assert message == ("latency budget 1.2 ms is below the fastest reachable 2.05 ms under params>=3000; "
                       "raise --budget (budget= in Python) to at least 2.05ms")


def test_a_budget_that_the_fixed_layers_alone_nearly_fill_says_so(run_dir):
    # the layers outside the blocks take 0.4 ms (latency.json); a 0.7 ms budget cannot be met
    message = failure(invoke("--run", str(run_dir), "--budget", "0.7ms"), InfeasibleError)
    assert message.startswith(
        "latency budget 0.7 ms is below the fastest reachable 1.05 ms; raise --budget (budget= in Python) to at least 1.05ms"
    )
    assert "outside the replaceable blocks alone take 0.4 ms" in message and "teacher.blocks" in message
    assert "outside" not in failure(invoke("--run", str(run_dir), "--budget", "0.9ms", "--max-params", "10"), InfeasibleError)


def test_missing_and_broken_tables(tmp_path):
    failure(invoke("--table", str(tmp_path / "nope.csv"), "--budget", "1ms"), TableError)
    (tmp_path / "bad.csv").write_text("block,candidate\n\"unterminated\n")
    failure(invoke("--table", str(tmp_path / "bad.csv"), "--budget", "1ms"), TableError)
    (tmp_path / "t.txt").write_text("x")
    assert ".csv or .parquet" in failure(invoke("--table", str(tmp_path / "t.txt"), "--budget", "1ms"), TableError)
    failure(invoke("--budget", "1ms"), ConfigError)


# -- run folders -----------------------------------------------------------------------
def test_run_folder_uses_config_budget_offset_and_writes_selection(run_dir):
    result = invoke("--run", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["budget_ms"] == pytest.approx(1.7)  # 50 % of the measured 3.4 ms
    written = json.loads((run_dir / "selection.json").read_text())
    assert written["choice"] == record["choice"]
    assert set(written) >= {"choice", "budget_ms", "predicted_latency_ms", "predicted_acc_delta", "objective", "totals",
                            "solver", "optimal", "gap", "seconds", "limits"}
    assert written["predicted_latency_ms"] == pytest.approx(1.1 + 0.4)  # mb3 + ghost + fixed latency
    assert written["limits"]["offsets"] == {"latency_ms": 0.4}
    assert not list(run_dir.glob(".*tmp"))  # no temp files left behind


def test_run_folder_errors(tmp_path, run_dir):
    assert "lana distill" in failure(invoke("--run", str(tmp_path / "none"), "--budget", "1ms"), RunFolderError)
    (run_dir / "latency.json").unlink()
    assert "latency.json" in failure(invoke("--run", str(run_dir), "--budget", "1ms"), RunFolderError)


def test_run_folder_without_config_budget(run_dir):
    (run_dir / "config.yaml").write_text("name: fake\n")
    assert "solve.budget" in failure(invoke("--run", str(run_dir)), ConfigError)
    assert invoke("--run", str(run_dir), "--budget", "2ms", "--out", str(run_dir / "other.json")).exit_code == 0
    assert (run_dir / "other.json").is_file() and not (run_dir / "selection.json").exists()
    # another limit stands alone: the run is solved under it, through the stage's solve_run
    assert invoke("--run", str(run_dir), "--max-params", "1G").exit_code == 0
    assert json.loads((run_dir / "selection.json").read_text())["budget"] is None


def test_export_calls_the_exporter(run_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(
        pipeline, "run_export", lambda run, overrides, finetuned, out, formats=None: calls.append((run.path, finetuned)) or {}
    )
    monkeypatch.setattr(pipeline, "print_report", lambda report, out: None)
    assert invoke("--run", str(run_dir), "--budget", "2ms", "--export").exit_code == 0
    assert calls == [(run_dir, True)] and (run_dir / "selection.json").is_file()
    assert "drop --out" in failure(
        invoke("--run", str(run_dir), "--budget", "2ms", "--export", "--out", str(run_dir / "x.json")), ConfigError
    )


def test_solve_run_for_the_demo(run_dir):
    record = solve_run(run_dir)
    assert record["budget"] == "50%" and (run_dir / "selection.json").is_file()


def test_sweep_writes_table_and_plot_with_marks(run_dir):
    (run_dir / "measured.csv").write_text("latency_ms_measured,acc_measured\n1.2,88.0\n2.9,90.5\n")
    chosen = invoke("--run", str(run_dir), "--budget", "2ms", "--json")  # a selection to mark
    assert chosen.exit_code == 0, chosen.output
    selected = json.loads(chosen.stdout)
    result = invoke("--run", str(run_dir), "--sweep", "6", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["sweep"]
    assert len(rows) == 6 and all(r["feasible"] and r["optimal"] for r in rows)
    assert rows[0]["budget_ms"] == pytest.approx(0.05 + 0.6 + 0.4)  # fastest reachable
    assert rows[-1]["budget_ms"] == pytest.approx(3.0 + 0.4)  # the teacher's predicted latency
    accs = [r["predicted_acc_delta"] for r in rows]
    assert accs == sorted(accs)
    assert len(pd.read_csv(run_dir / "sweep.csv")) == 6
    assert (run_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from lana.selection import _marks  # what the plot marks: the current selection and the measured rows

    marks = _marks(run_dir)
    assert marks["selection"] == (pytest.approx(selected["predicted_latency_ms"]), pytest.approx(selected["predicted_acc_delta"]))
    assert list(marks["measured"][0]) == [1.2, 2.9] and list(marks["measured"][1]) == [88.0, 90.5]
    readable = invoke("--run", str(run_dir), "--sweep", "3", "--max-params", "2k")
    assert readable.exit_code == 0 and "Pareto sweep" in readable.stdout
    assert "drop --budget" in failure(invoke("--run", str(run_dir), "--sweep", "3", "--budget", "2ms"), ConfigError)

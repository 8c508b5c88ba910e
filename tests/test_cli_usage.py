"""The command line's own messages: usage errors, the commands error messages point to, wide tables."""
from __future__ import annotations

import re
import shlex
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from lana.cli import app as cli
from lana.config import build_config
from lana.errors import ConfigError
from lana.run.folder import RunFolder


def lana(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``lana ARGS`` through ``lana.cli.app.main`` as the console script does."""
    monkeypatch.setattr("sys.argv", ["lana", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_unknown_key_message_names_a_command_that_lists_every_key(monkeypatch, capsys) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"distill": {"epochz": 2}})
    command = re.search(r"`(lana [^`]*)`", str(info.value)).group(1)
    code, out, err = lana(shlex.split(command)[1:], monkeypatch, capsys)
    assert code == 0, err
    tree = yaml.safe_load(out)
    assert "epochs" in tree["distill"] and set(tree) >= {"teacher", "data", "ops", "distill", "latency", "solve"}


@pytest.mark.parametrize("args, usage, problem", [
    (["distil"], "Usage: lana [OPTIONS] COMMAND", "No such command 'distil'"),
    (["solve", "--bogus"], "Usage: lana solve [OPTIONS]", "No such option: --bogus"),
    (["solve", "--budget"], "Usage: lana solve [OPTIONS]", "requires an argument"),
    (["--bogus"], "Usage: lana [OPTIONS] COMMAND", "No such option: --bogus"),
])
def test_usage_errors_print_the_usage_line_and_exit_2(args, usage, problem, monkeypatch, capsys) -> None:
    code, out, err = lana(args, monkeypatch, capsys)
    assert code == 2
    assert usage in err and problem in err
    assert "Traceback" not in out + err


# -- tables piped (not a terminal) keep names whole ------------------------------------
LONG = "a_rather_long_stage_name_that_rich_would_cut.0"
NARROW = {"COLUMNS": "80"}  # what CI and pipes often report


def table_cells(output: str) -> list[list[str]]:
    """The body rows of a rich table (one line each when nothing wraps), cells stripped."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


def test_show_piped_keeps_long_block_names_whole(trained_run, tmp_path) -> None:
    source, _, _ = trained_run
    run = RunFolder(tmp_path / "run")
    shutil.copytree(source.path, run.path, ignore=shutil.ignore_patterns("weights", "report.json"))
    frame = run.load_table()
    first = frame["block"].iloc[0]
    frame["block"] = frame["block"].replace(first, LONG)
    run.save_table(frame)
    result = CliRunner(env=NARROW).invoke(cli.app, ["show", "--run", str(run.path), "--limit", "0"])
    assert result.exit_code == 0, result.output
    assert LONG in result.output
    rows = [r for r in table_cells(result.output) if r[0]]
    assert {r[0] for r in rows} >= set(frame["candidate"][frame["block"] == LONG])  # one line per row


def test_blocks_piped_keeps_long_block_names_whole(tmp_path, monkeypatch) -> None:
    (tmp_path / "long_named_net.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    net = nn.Sequential()\n"
        "    net.add_module('stem', nn.Conv2d(1, 8, 3, padding=1))\n"
        f"    net.add_module('{LONG.split('.')[0]}', nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())))\n"
        "    net.add_module('head', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)))\n"
        "    return net\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": {"model": "long_named_net:build", "checkpoint": "random", "kwargs": {}, "blocks": [LONG]},
        "data": {"kind": "synthetic", "channels": 1, "image_size": 16, "val_size": 100},
        "ops": {"include": ["identity", "conv_k1"]},
    }))
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env=NARROW).invoke(cli.app, ["blocks", "--config", str(config)])
    assert result.exit_code == 0, result.output
    rows = table_cells(result.output)
    assert [r[0] for r in rows] == [LONG] and rows[0][-1] == "3"  # teacher, identity, conv_k1


# -- user errors the CLI probes found: one line and exit 2, never a traceback --------------
def _one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2 and "Traceback" not in out + err, err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_a_set_value_that_is_not_yaml(monkeypatch, capsys) -> None:
    _one_line_error(*lana(["config", "--set", "distill.epochs=[1"], monkeypatch, capsys), "the value is not valid YAML")


def test_a_config_file_that_is_not_utf8(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    _one_line_error(*lana(["config", "--config", str(path)], monkeypatch, capsys), "is not UTF-8 text")


def test_a_run_config_whose_solve_section_is_not_a_section(tmp_path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "candidates.csv").write_text("block,candidate,score,latency_ms\nb,teacher,0,2\nb,fast,-1,1\n")
    (run / "latency.json").write_text('{"teacher_latency_ms": 3.0, "fixed_latency_ms": 1.0}')
    (run / "config.yaml").write_text("solve: fast\n")
    _one_line_error(*lana(["solve", "--run", str(run), "--budget", "5ms"], monkeypatch, capsys), "'solve' must be a section")


def test_a_proxy_table_without_blocks(tmp_path, monkeypatch, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("candidate,latency_ms,lat2\na,1,2\nb,2,3\nc,3,5\n")
    args = ["proxy", "--table", str(table), "--proxy", "latency_ms", "--target", "lat2"]
    _one_line_error(*lana(args, monkeypatch, capsys), "no 'block' column")


def test_a_table_without_the_budgets_column_names_the_option(tmp_path, monkeypatch, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("block,candidate,score,params\nb,teacher,0,10\nb,fast,-1,5\n")
    code, out, err = lana(["solve", "--table", str(table), "--budget", "5ms"], monkeypatch, capsys)
    _one_line_error(code, out, err, "latency_ms")
    assert "--budget" in err


def test_show_on_a_missing_run_folder(tmp_path, monkeypatch, capsys) -> None:
    _one_line_error(*lana(["show", "--run", str(tmp_path / "nope")], monkeypatch, capsys), "not found")


def test_a_max_memory_that_is_not_a_size_names_the_option(tmp_path, monkeypatch, capsys) -> None:
    code, out, err = lana(["distill", "--max-memory", "lots", "--run", str(tmp_path / "r")], monkeypatch, capsys)
    _one_line_error(code, out, err, "--max-memory")
    assert not (tmp_path / "r" / "candidates.parquet").exists()

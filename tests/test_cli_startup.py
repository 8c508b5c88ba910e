"""The light commands start fast: `lana --help`, `lana solve --help` and `lana solve --table`
import neither torch, the op zoo nor scipy (they cost seconds; these commands need none)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "op_zoo", "scipy", "timm", "lana.latency.proxy")

TABLE = """block,candidate,score,latency_ms,params
stem,teacher,0,1.0,1000
stem,mb3,-0.2,0.5,400
layer2,teacher,0,2.0,5000
layer2,ghost,-0.4,0.6,900
"""

SCRIPT = """
import sys
from lana.cli.app import main
for argv in ({runs}):
    try:
        main(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_and_solve_table_import_no_torch(tmp_path):
    """Runs the three commands in one fresh interpreter and lists the heavy modules it loaded."""
    table = tmp_path / "mine.csv"
    table.write_text(TABLE)
    runs = repr((("--help",), ("solve", "--help"), ("solve", "--table", str(table), "--budget", "2ms")))
    code = SCRIPT.format(runs=runs, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Commands" in result.stdout and "--budget" in result.stdout and "ghost" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_group_help_lists_every_command_with_its_summary():
    """The summaries in `lana --help`, read from the sources, are those of the commands themselves."""
    from typer.testing import CliRunner

    from lana.cli.app import COMMANDS, all_short_helps, app

    output = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    helps = all_short_helps()
    for name in COMMANDS:
        assert name in output
        assert helps[name] and helps[name][:30] in output


def test_solve_help_loads_neither_pandas_nor_a_solver_library():
    """`lana solve --help` binds pandas, OR-Tools and PuLP lazily: none of their code runs."""
    code = SCRIPT.format(runs=repr((("solve", "--help"),)), heavy=("pandas.core", "ortools.sat.python.cp_model_helper", "pulp.pulp"))
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--budget" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_lazy_import_of_a_missing_module_is_none_and_a_used_one_works():
    """A back-end whose package is absent says so (None); a present one loads on first use."""
    from lana.lazy import lazy_import

    assert lazy_import("no_such_package_lana") is None
    assert lazy_import("no_such_package_lana.sub") is None
    json_mod = lazy_import("json")
    assert json_mod.dumps([1]) == "[1]"

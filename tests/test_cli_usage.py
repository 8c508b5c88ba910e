"""The command line's own messages: usage errors, the commands error messages point to, wide tables."""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from lana.cli import app as cli
from lana.config import build_config
from lana.errors import ConfigError


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

"""Progress bars: redrawn where someone watches, whole lines now and then in a log."""
from __future__ import annotations

import io

import pytest

from lana import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_tqdm_env(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("TQDM_")]:
        monkeypatch.delenv(key)


def test_a_bar_in_a_log_writes_whole_lines_and_its_final_state(no_tqdm_env, monkeypatch):
    log = io.StringIO()  # a redirected stderr: not a terminal
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    for _ in progress.bar(range(50), desc="fine-tune", file=log, mininterval=3600):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[-1].startswith("fine-tune: 100%") and "50/50" in lines[-1]
    assert len(lines) <= 3  # the first draw, perhaps one more, the last: not one line per step


def test_a_bar_on_a_terminal_is_tqdms_own(no_tqdm_env):
    screen = _Terminal()
    for _ in progress.bar(range(5), desc="score", file=screen, mininterval=0):
        pass
    assert "\r" in screen.getvalue()  # redrawn in place


def test_tqdm_disable_silences_every_bar(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    log = io.StringIO()
    with progress.bar(total=3, desc="distill", file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""

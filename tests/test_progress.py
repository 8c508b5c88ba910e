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


def test_a_bar_in_a_log_writes_whole_lines_and_its_final_state(no_tqdm_env):
    log = io.StringIO()  # a redirected stderr: not a terminal
    with progress.bar(total=50, desc="fine-tune", file=log) as bar:
        for step in range(50):
            bar.update()
            bar.set_postfix(loss=1 / (step + 1))  # a redraw on every step, as the fine-tune's bar does
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[-1].startswith("fine-tune: 100%") and "50/50" in lines[-1] and "loss=0.02" in lines[-1]
    assert len(lines) == 2  # the first draw and the last, not one line per step (30 s apart at most)


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

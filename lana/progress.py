"""Progress bars for long work: live on a terminal or in a notebook, one line now and then in a log.

``tqdm`` redraws its bar with carriage returns, which in a log file (a redirected ``stderr``, a
CI job, ``nohup``) piles up thousands of updates on one line. :func:`bar` keeps tqdm's bar where
someone watches it, and where no one does it writes the bar's state as a whole line at most
every ``LOG_INTERVAL_S`` seconds, plus the final one. ``TQDM_DISABLE=1`` silences every bar;
any ``TQDM_*`` setting in the environment leaves the choice to tqdm.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, TextIO

LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream for a bar in a log: a redraw becomes one whole line, at most every ``interval`` seconds.

    A bar redraws on every ``set_postfix`` too, so the stream itself keeps the pace; the state
    held back is written when the bar closes (its final newline), so the last line is the end.
    """

    def __init__(self, stream: TextIO, interval: float):
        self.stream, self.interval = stream, interval
        self.last, self.pending = -math.inf, ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        now = time.monotonic()
        if line and now - self.last < self.interval:
            self.pending = line
        elif line or ("\n" in text and self.pending):  # the bar's close: its last state
            self.stream.write((line or self.pending) + "\n")
            self.last, self.pending = now, ""
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def interactive(stream: Any = None) -> bool:
    """Whether someone watches ``stream`` (default ``sys.stderr``): a terminal, or a Jupyter kernel."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def bar(iterable: Iterable | None = None, **kwargs: Any):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, quiet in a non-interactive log (see the module docstring)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    if os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false"):  # tqdm reads it once, at its import
        kwargs["disable"] = True
    watched = interactive(kwargs.get("file"))
    if not watched and not any(k.startswith("TQDM_") for k in os.environ):
        kwargs["file"] = _Lines(kwargs.get("file") or sys.stderr, LOG_INTERVAL_S)
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)

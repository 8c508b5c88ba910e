"""Timings saved as they are taken, so a killed profile resumes where it stopped.

``lana distill`` (and ``lana profile``) keep ``RUN/latency_partial.json``: every block timed
alone and every group of in-context networks is added as soon as it is measured, written
atomically (temp file + rename), so a SIGKILL loses at most the block or group in flight.
The file holds a key of everything that shapes the figures (settings tag and knobs, the
candidates, the input shape); a partial file of other settings is ignored (and replaced).
It is deleted once ``latency.json`` holds the finished profile.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from pathlib import Path

from lana.run.folder import read_json, write_json

log = logging.getLogger("lana")

PARTIAL_FILE = "latency_partial.json"
# for tests: ``isolated:N`` or ``context:N`` SIGKILLs this process right after the N-th save of that phase
LATENCY_FAULT_ENV = "LANA_FAULT_KILL_LATENCY"


def partial_key(tag: str, knobs: dict, candidates: dict, input_shape) -> str:
    """A hash of what shapes the timings: settings, candidate names per block, input shape."""
    names = {b: sorted(c) for b, c in candidates.items()}
    text = json.dumps({"tag": tag, "knobs": knobs, "candidates": names, "input": list(input_shape)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PartialTimings:
    """Timings of one profile so far, by phase (``isolated``, ``context``) and key.

    Args:
        path: the checkpoint file, or None to keep nothing (timings outside a run folder).
        key: :func:`partial_key` of this profile; a stored file with another key is ignored.
    """

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key = path, key
        self.data: dict = {"key": key, "isolated": {}, "context": {}}
        self.saves = {"isolated": 0, "context": 0}
        if path is not None and path.is_file():
            try:
                stored = read_json(path)
            except Exception:  # a damaged checkpoint only costs the timings it held
                stored = None
            if isinstance(stored, dict) and stored.get("key") == key:
                self.data = stored
                log.info("latency: resuming from %s (%d blocks alone, %d in-context groups already timed)",
                         path.name, len(stored["isolated"]), len(stored["context"]))
            elif stored is not None:
                log.info("latency: %s belongs to other settings or candidates; timing from the start", path.name)

    def get(self, phase: str, key: str):
        """The stored result of ``key`` in ``phase``, or None."""
        return self.data[phase].get(key)

    def put(self, phase: str, key: str, value) -> None:
        """Store one result and write the file at once (atomically)."""
        self.data[phase][key] = value
        if self.path is None:
            return
        write_json(self.path, self.data)
        self.saves[phase] += 1
        fault = os.environ.get(LATENCY_FAULT_ENV, "")
        if fault == f"{phase}:{self.saves[phase]}":
            os.kill(os.getpid(), signal.SIGKILL)

    def clear(self) -> None:
        """Delete the file (the finished profile is stored elsewhere)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

"""The run folder: every stage reads and writes here, atomically.

Nothing is ever half-written: files go to a temp file in the same folder, are fsync'ed,
then renamed over the target. A run folder remembers the fingerprint of the teacher and of
the config sections that shape its candidates, and refuses to mix in another teacher.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lana.config import LanaConfig, dump_config, load_config, map_paths
from lana.errors import CheckpointError, RunFolderError, TableError
from lana.lazy import lazy_import

pd = lazy_import("pandas")  # loaded when a table is read or written

TABLE = "candidates"
REQUIRED_COLUMNS = ("block", "candidate", "family", "params", "macs")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFolderError(
                f"no space left on the disk holding {path.parent} while writing {path.name} (the previous {path.name}, "
                "if any, is intact); free some space and rerun the same command"
            ) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def read_json(path: Path) -> Any:
    """Read JSON, turning a missing or corrupted file into a one-line error."""
    if not path.is_file():
        raise RunFolderError(f"{path} not found; run the stage that writes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is corrupted ({exc.msg}); delete it and rerun its stage") from None


def save_tensors(path: Path, obj: Any) -> None:
    """Atomically ``torch.save`` a tree of tensors (state dicts, no pickled code)."""
    import torch  # here, not at the top: the torch-free commands (lana solve --table) read run folders too

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; corrupted files give a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found; rerun the stage that writes it")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise CheckpointError(f"{path} is corrupted or not a weights file ({type(exc).__name__}); delete it and rerun") from None


def sha256_text(text: str) -> str:
    """Hex digest of a string."""
    return hashlib.sha256(text.encode()).hexdigest()


class RunFolder:
    """One run's folder and the files every stage shares."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- paths -------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Path of a file inside the run folder."""
        return self.path / name

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    # -- config ------------------------------------------------------------------------
    def save_config(self, config: LanaConfig) -> None:
        """Write the resolved config (``config.yaml``) so that the folder works from anywhere.

        Paths to files inside the run folder (the demo's ``teacher.pt``) are written relative
        to the folder, so it can be moved; other paths (data roots) are written absolute, so
        it can be used from any working directory.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        portable = map_paths(config.model_dump(mode="json"), self._portable)
        atomic_write_text(self.file("config.yaml"), dump_config(LanaConfig.model_validate(portable)))

    def load_config(self, overrides: list[str] | None = None) -> LanaConfig:
        """Read the run's resolved config (its relative paths are found in the run folder).

        Args:
            overrides: ``key.path=value`` strings applied after the file.

        Returns:
            The config.
        """
        path = self.file("config.yaml")
        if not path.is_file():
            raise RunFolderError(f"{self.path} has no config.yaml; start it with `lana distill --config FILE --run {self.path}`")
        return load_config(path, overrides)

    def _portable(self, value: str) -> str:
        absolute = Path(os.path.abspath(value))
        try:
            return absolute.relative_to(os.path.abspath(self.path)).as_posix()
        except ValueError:  # outside the run folder
            return str(absolute)

    # -- fingerprints ------------------------------------------------------------------
    def check_fingerprint(self, teacher_sha: str, config: LanaConfig) -> None:
        """Record the teacher/config fingerprint, or refuse if the folder holds another run."""
        tree = map_paths(config.model_dump(mode="json"), os.path.abspath)  # same from any directory
        shaping = {k: tree[k] for k in ("teacher", "ops", "data", "seed")}
        shaping["teacher"].pop("checkpoint", None)  # the weights' hash covers it
        current = {"teacher": teacher_sha, "config": sha256_text(json.dumps(shaping, sort_keys=True))}
        path = self.file("fingerprint.json")
        if path.is_file():
            stored = read_json(path)
            for key in ("teacher", "config"):
                if stored.get(key) != current[key]:
                    raise RunFolderError(
                        f"{self.path} was made from another {key} (fingerprint {stored.get(key, '?')[:12]} "
                        f"vs {current[key][:12]}); use a new --run folder or delete this one"
                    )
            return
        write_json(path, current)

    # -- the candidates table ----------------------------------------------------------
    def save_table(self, frame: pd.DataFrame) -> None:
        """Write the candidates table as Parquet plus a CSV copy a person can open."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(self.file(f"{TABLE}.parquet"), buffer.getvalue())
        atomic_write_text(self.file(f"{TABLE}.csv"), frame.to_csv(index=False))

    def load_table(self) -> pd.DataFrame:
        """Read the candidates table; a missing or corrupted table is a one-line error."""
        path = self.file(f"{TABLE}.parquet")
        if not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} not found; check --run, or run `lana distill --run {self.path}` first")
        if not path.is_file():
            raise RunFolderError(f"{self.path} has no candidates table; run `lana distill --run {self.path}` first")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise TableError(f"{path} is corrupted ({type(exc).__name__}); rerun `lana distill --run {self.path}`") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise TableError(f"{path} lacks columns {missing}; it was not written by lana distill")
        return frame


def setup_logging(run: RunFolder) -> logging.Logger:
    """Log to ``RUN/logs/lana.log`` (progress bars go to the terminal).

    One run folder's log at a time: a process that goes on to another run (a loop over
    budgets, a benchmark) stops writing into the earlier run's log.
    """
    log_dir = run.path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("lana")
    logger.setLevel(logging.INFO)
    target = os.path.abspath(log_dir / "lana.log")
    for old in [h for h in logger.handlers if getattr(h, "lana_run_log", False) and h.baseFilename != target]:
        logger.removeHandler(old)
        old.close()
    if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        handler = logging.FileHandler(target)
        handler.lana_run_log = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def check_free_space(folder: Path, needed: int, what: str, hint: str) -> None:
    """Refuse, in one line, work whose files would not fit on ``folder``'s disk.

    Args:
        folder: where the files go (an existing folder or one whose parent exists).
        needed: bytes still to be written there.
        what: what the bytes are, for the message.
        hint: how the user can need less.

    Raises:
        RunFolderError: when the disk has less free space than ``needed``.
    """
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise RunFolderError(f"{what} need about {needed / 2**30:.1f} GiB in {folder}, but its disk has "
                             f"{free / 2**30:.1f} GiB free; {hint}")

"""Distillation's resumable state: one file in the run folder, checked against the settings that wrote it.

``RUN/distill_state.pt`` holds the group plan, the current group's weights, optimiser,
scheduler, loss statistics and the RNG at the last checkpoint (:mod:`lana.distill.core`
writes it every ``distill.checkpoint_every`` steps). A state written by another lana
version or other distill settings is refused with the way out (``--force``).
"""
from __future__ import annotations

import hashlib
import json
import shutil

import torch

from lana.config import LanaConfig
from lana.distill.distributed import Dist, Key
from lana.errors import CheckpointError, RunFolderError
from lana.run.folder import RunFolder, load_tensors, save_tensors

STATE_FILE = "distill_state.pt"
GROUPS_DIR = "distill_groups"  # older versions kept finished groups here
STATE_FORMAT = 3  # 3: finished groups are in weights/<block>/<op>.pt


def clear_state(run: RunFolder) -> None:
    """Delete the resumable state (after ``distill.json`` is written, or to start over)."""
    run.file(STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(run.file(GROUPS_DIR), ignore_errors=True)


def settings_hash(config: LanaConfig, steps: int, n_train: int, keys: list[Key]) -> str:
    """What the state depends on: a state written under another hash cannot be resumed."""
    cfg = config.distill
    what = [STATE_FORMAT, cfg.epochs, cfg.max_steps, cfg.lr, cfg.weight_decay, cfg.batch_size or config.data.batch_size,
            config.seed, steps, n_train, sorted("\t".join(k) for k in keys)]
    if cfg.halving:
        what.append(["halving", cfg.halving_warmup])
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def join_key(key: Key) -> str:
    """``(block, op)`` as one string (the state's dictionary keys)."""
    return "\t".join(key)


def split_key(text: str) -> Key:
    """The inverse of :func:`join_key`."""
    block, name = text.split("\t")
    return block, name


def load_state(run: RunFolder, path, settings: str, dist: Dist) -> dict | None:
    """The saved state (None when there is none), checked against ``settings``; every rank gets the main rank's."""
    state = None
    if dist.is_main:
        for stale in [*run.path.glob(f".{STATE_FILE}.*.tmp"), *run.weights_dir.glob("*/.*.tmp")]:
            stale.unlink(missing_ok=True)
        if path.is_file():
            state = load_tensors(path)
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise CheckpointError(f"{path} was written by another lana version; pass --force to restart distillation")
            if state.get("settings") != settings:
                raise RunFolderError(f"{path} was written with other distill settings (epochs, steps, lr, batch or ops); "
                                     "rerun with the same settings, or pass --force to restart distillation")
    return dist.broadcast_tensors(state)


def save_state(path, settings: str, groups: list[list[Key]], index: int, step: int, weights: dict, optimiser, scheduler,
               stats: dict) -> None:
    """Write the state atomically: group ``index`` at ``step``, its trainable candidates' ``weights``."""
    save_tensors(path, {
        "format": STATE_FORMAT, "settings": settings, "group": index, "step": step,
        "groups": [[join_key(k) for k in g] for g in groups],
        "weights": weights,
        "optimiser": optimiser.state_dict() if optimiser else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "stats": {join_key(k): v for k, v in stats.items()},
        "rng": torch.get_rng_state(),
    })

"""What every stage needs: the config, the run folder, data, the teacher and its blocks."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from lana.config import LanaConfig
from lana.data import DataSplits, load_batch_fn, load_data
from lana.device import move_to
from lana.run.folder import RunFolder, setup_logging
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher, teacher_fingerprint
from lana.teacher.outputs import classes_of
from op_zoo._spec import BlockSpec

log = logging.getLogger("lana")


@dataclass
class Context:
    """What every stage needs: config, run folder, data, teacher and its blocks."""

    config: LanaConfig
    run: RunFolder
    splits: DataSplits
    teacher: nn.Module
    specs: list[BlockSpec]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.splits.input_shape


def prepare(config: LanaConfig, run: RunFolder, writes: bool = True, teacher: nn.Module | None = None,
            splits: DataSplits | None = None) -> Context:
    """Load data and teacher, find the blocks and (if ``writes``) check the run folder's fingerprint.

    Args:
        config: the run config.
        run: the run folder.
        writes: log to the folder and check (or record) its teacher fingerprint.
        teacher: a teacher already in memory (the Python API) instead of ``config.teacher``.
        splits: data already in memory (the Python API) instead of ``config.data``
            (with ``data.batch_fn`` and ``data.deterministic`` applied when loaded here).

    Returns:
        The context every stage takes.
    """
    if writes:
        setup_logging(run)
    torch.manual_seed(config.seed)
    if splits is None:
        splits = load_data(config.data)
        splits.batch_fn = load_batch_fn(config.data.batch_fn)
        if config.data.deterministic is not None:
            splits.deterministic = config.data.deterministic
    if teacher is None:
        teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    move_to(teacher, "cpu").eval()  # the teacher rests on the CPU; each stage moves it to the compute device for its work
    specs = discover_blocks(teacher, (1, *splits.input_shape), config.teacher.blocks)
    with torch.no_grad():  # 0 where the teacher gives feature maps: scores and fine-tuning then use feature distance
        splits.num_classes = classes_of(teacher(torch.zeros(1, *splits.input_shape)))
    if writes:
        run.check_fingerprint(teacher_fingerprint(teacher), config)
    return Context(config, run, splits, teacher, specs)

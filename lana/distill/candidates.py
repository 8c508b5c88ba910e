"""Candidates: the op-zoo modules built for each teacher block, and their bookkeeping."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

import op_zoo
from lana.config import OpsConfig
from lana.errors import CheckpointError, RunFolderError, UnknownOpError
from lana.names import TEACHER_OP
from lana.run.folder import load_tensors
from lana.teacher.blocks import set_submodule
from op_zoo import BlockSpec


@dataclass
class Candidate:
    """One candidate op for one block, with its static costs."""

    block: str
    name: str
    family: str
    module: nn.Module
    params: int
    macs: int

    @property
    def trainable(self) -> bool:
        """Candidates that distillation trains (keep-teacher and parameter-free ops are not)."""
        return self.name != TEACHER_OP and any(p.requires_grad for p in self.module.parameters())


def weights_file(weights_dir: Path, block: str) -> Path:
    """Where a block's candidate weights live (one file per block)."""
    return weights_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", block) + ".pt")


def build_block_candidates(spec: BlockSpec, ops: OpsConfig) -> dict[str, Candidate]:
    """Build every applicable op-zoo candidate for one block.

    Args:
        spec: the block's description (shapes, the teacher module).
        ops: include/exclude patterns and user op modules.

    Returns:
        Candidates by op name; ``teacher`` (the block itself) is always among them.
    """
    modules = op_zoo.build_candidates(spec, include=tuple(ops.include), exclude=tuple(ops.exclude))
    shape = spec.in_shape  # one sample, in the block's layout
    out: dict[str, Candidate] = {}
    for name, module in modules.items():
        family = TEACHER_OP if name == TEACHER_OP else op_zoo.get_op(name).family
        out[name] = Candidate(
            block=spec.name,
            name=name,
            family=family,
            module=module,
            params=op_zoo.count_params(module),
            macs=op_zoo.count_macs(module, shape),
        )
    return out


def build_all_candidates(specs: list[BlockSpec], ops: OpsConfig) -> dict[str, dict[str, Candidate]]:
    """Candidates for every block, in block order."""
    op_zoo.import_op_modules(list(ops.modules))
    return {spec.name: build_block_candidates(spec, ops) for spec in specs}


def build_candidate(spec: BlockSpec, name: str, weights_dir: Path | None) -> nn.Module:
    """Rebuild one candidate and load its distilled weights (keep-teacher needs none).

    Args:
        spec: the block it replaces.
        name: the op name chosen for it.
        weights_dir: the run's ``weights/`` folder, or None for freshly initialised weights.

    Returns:
        The candidate module in eval mode.
    """
    if name == TEACHER_OP:
        return copy.deepcopy(spec.module).eval()
    module = op_zoo.get_op(name).builder(spec)
    if module is None:

        raise UnknownOpError(f"op '{name}' declines block {spec.name} (shape {spec.in_channels}->{spec.out_channels}); pick another")
    if weights_dir is not None:
        stored = load_tensors(weights_file(weights_dir, spec.name))
        if name not in stored:

            raise CheckpointError(f"no distilled weights for '{name}' in block {spec.name}; rerun `lana distill`")
        module.load_state_dict(stored[name])
    return module.eval()


def assemble_student(teacher: nn.Module, specs: list[BlockSpec], choice: dict[str, str], weights_dir) -> nn.Module:
    """A copy of the teacher with each block replaced by its chosen, distilled candidate.

    Args:
        teacher: the teacher network (not modified).
        specs: the teacher's replaceable blocks.
        choice: block name → op name (blocks not named keep the teacher's block).
        weights_dir: the run's ``weights/`` folder holding distilled candidate weights.

    Returns:
        The student network in eval mode.
    """
    known = {s.name for s in specs}
    unknown = sorted(set(choice) - known)
    if unknown:
        raise RunFolderError(f"selection names blocks {unknown} that this teacher does not have; re-solve for this run")
    student = copy.deepcopy(teacher)
    for spec in specs:
        name = choice.get(spec.name, TEACHER_OP)
        if name != TEACHER_OP:
            set_submodule(student, spec.name, build_candidate(spec, name, weights_dir))
    return student.eval()

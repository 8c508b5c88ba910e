"""Candidates: the op-zoo modules built for each teacher block, and their bookkeeping.

A candidate's module is not held for the whole run: a whole zoo (thousands of candidates,
billions of weights for a ResNet-50) does not fit in memory. :func:`build_all_candidates`
builds each module once to count its static costs (parameters, MACs, activations) and
drops it; a stage builds the modules it needs when it asks for :attr:`Candidate.module`
(distillation: the members of one group; scoring and latency: one block,
:class:`OneBlockAtATime`) and releases them after (:meth:`Candidate.release`). Every
build is seeded from ``(seed, block, op)``, so a candidate starts from the same weights
whatever was built before it, and once distilled its weights are read back from
``weights/<block>/<op>.pt`` (:func:`candidate_file`).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

import op_zoo
from lana.config import OpsConfig
from lana.errors import CheckpointError, RunFolderError, UnknownOpError
from lana.names import TEACHER_OP
from lana.run.folder import load_tensors, save_tensors
from lana.teacher.blocks import set_submodule
from op_zoo import BlockSpec

log = logging.getLogger("lana")
BUILDS = {"builds": 0, "seconds": 0.0}  # modules built in this process and seconds in builders (logs, benchmarks)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def candidate_seed(seed: int, block: str, name: str) -> int:
    """The seed of one candidate's initial weights: from the run's seed, its block and op only."""
    digest = hashlib.sha256(f"{seed}\t{block}\t{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_module(spec: BlockSpec, name: str, seed: int = 0) -> nn.Module | None:
    """Build op ``name`` for block ``spec`` from its own seed (None where the op declines).

    The global RNG is forked, so the build neither depends on nor moves the caller's random
    state: the same candidate gets the same initial weights in any order, group or resume.
    """
    tick = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(candidate_seed(seed, spec.name, name))
        module = op_zoo.build_op(spec, name)
    BUILDS["builds"] += module is not None
    BUILDS["seconds"] += time.perf_counter() - tick  # declines included
    return module


def leaf_outputs(module: nn.Module, in_shape: tuple[int, ...]) -> list[int]:
    """Elements of every leaf module's output for one sample (eval mode: nothing changes)."""
    sizes: list[int] = []

    def hook(_m, _a, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    handles = [m.register_forward_hook(hook) for m in module.modules() if not any(True for _ in m.children())]
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *in_shape, device=device))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes or [0]


def _trainable(name: str, module: nn.Module | None) -> bool:
    return name != TEACHER_OP and module is not None and any(p.requires_grad for p in module.parameters())


class Candidate:
    """One candidate op for one block: its static costs, and its module while a stage holds it.

    Args:
        block, name, family: where it goes, the op's name and family.
        module: a module to hold from the start (tests, user code); None builds it on demand.
        params, macs: parameters, and multiply-accumulates for one sample.
        spec: the block it replaces; with it the module can be (re)built at any time.
        seed: the run's seed (see :func:`candidate_seed`).
        activations: elements of its leaf modules' outputs for one sample (memory planning).
        trainable: whether distillation trains it (default: from ``module``).
    """

    def __init__(self, block: str, name: str, family: str, module: nn.Module | None = None, params: int = 0, macs: int = 0,
                 *, spec: BlockSpec | None = None, seed: int = 0, activations: int | None = None,
                 trainable: bool | None = None) -> None:
        self.block, self.name, self.family, self.params, self.macs = block, name, family, params, macs
        self.spec, self.seed = spec, seed
        self.activations = activations  # None: measured from the module when planning needs it
        self.trainable = _trainable(name, module) if trainable is None else trainable
        self.weights: Path | None = None  # its distilled weights, loaded whenever the module is built
        self._module = module

    def __repr__(self) -> str:
        return f"Candidate({self.block}/{self.name}, {self.params} params, {'held' if self.alive else 'not held'})"

    @property
    def module(self) -> nn.Module:
        """The module: built (with its distilled weights, once there are any) if it is not held."""
        if self._module is None:
            self._module = self.build()
        return self._module

    @module.setter
    def module(self, value: nn.Module) -> None:
        self._module = value

    @property
    def alive(self) -> bool:
        """Whether the module is held now."""
        return self._module is not None

    def build(self) -> nn.Module:
        """A fresh module: seeded initial weights, then its distilled weights if ``weights`` names them."""
        if self.spec is None:
            raise RuntimeError(f"candidate {self.block}/{self.name} has no block spec to build from")
        module = build_module(self.spec, self.name, self.seed)
        if module is None:
            raise UnknownOpError(f"op '{self.name}' declines block {self.block}; rebuild the candidates")
        if self.weights is not None:
            _load(module, self.weights, self.block, self.name)
        return module.train(False) if self.weights is not None else module

    def release(self) -> None:
        """Drop the module (a candidate without a spec keeps it: it could not be rebuilt)."""
        if self.spec is not None:
            self._module = None


def _load(module: nn.Module, path: Path, block: str, name: str) -> None:
    try:
        module.load_state_dict(load_tensors(path))
    except (CheckpointError, RuntimeError) as exc:
        why = str(exc).split(";")[0].splitlines()[0]
        raise CheckpointError(f"distilled weights of {block}/{name} are unusable ({why}); rerun `lana distill --force`") from None


def weights_file(weights_dir: Path, block: str) -> Path:
    """Where older lana versions kept a block's candidate weights (one file per block)."""
    return weights_dir / (_safe(block) + ".pt")


def candidate_file(weights_dir: Path, block: str, name: str) -> Path:
    """Where a candidate's distilled weights live: ``weights/<block>/<op>.pt``."""
    return weights_dir / _safe(block) / (_safe(name) + ".pt")


def save_candidate(weights_dir: Path, cand: Candidate) -> Path:
    """Write a held candidate's weights to its file; later builds of it load them."""
    path = candidate_file(weights_dir, cand.block, cand.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, cand.module.state_dict())
    cand.weights = path
    return path


def attach_weights(candidates: dict[str, dict[str, Candidate]], weights_dir: Path) -> None:
    """Point every candidate at its distilled weights (a run whose distillation is done).

    A run folder of an older lana (one ``weights/<block>.pt`` per block) is split into one
    file per candidate first. Each file is opened (memory-mapped, not read) to catch a
    damaged one now rather than in a later stage.

    Raises:
        CheckpointError: a candidate's weights are missing or unreadable (one line).
    """
    for block, cands in candidates.items():
        legacy = weights_file(weights_dir, block)
        if legacy.is_file():
            _split_legacy(legacy, weights_dir, block)
        for name, cand in cands.items():
            if name == TEACHER_OP:
                continue
            path = candidate_file(weights_dir, block, name)
            try:
                if not path.is_file():
                    raise CheckpointError("not found")
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001  missing or damaged: one line either way
                why = str(exc).split(";")[0].splitlines()[0] or type(exc).__name__
                raise CheckpointError(f"distilled weights of block {block} are unusable ({name}: {why}); "
                                      f"rerun `lana distill --run {weights_dir.parent} --force`") from None
            cand.weights = path


def _split_legacy(legacy: Path, weights_dir: Path, block: str) -> None:
    try:
        stored = load_tensors(legacy)
    except CheckpointError as exc:
        raise CheckpointError(f"distilled weights of block {block} are unusable ({str(exc).split(';')[0]}); "
                              f"rerun `lana distill --run {weights_dir.parent} --force`") from None
    for name, state in stored.items():
        path = candidate_file(weights_dir, block, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, state)
    legacy.unlink()
    log.info("weights: %s split into one file per candidate (%d)", legacy.name, len(stored))


def build_block_candidates(spec: BlockSpec, ops: OpsConfig, seed: int = 0) -> dict[str, Candidate]:
    """Every applicable op-zoo candidate for one block, with its static costs; no module is kept.

    Each module is built (seeded, :func:`build_module`), counted and dropped.

    Args:
        spec: the block's description (shapes, the teacher module).
        ops: include/exclude patterns and user op modules.
        seed: the run's seed.

    Returns:
        Candidates by op name; ``teacher`` (the block itself) is always among them.
    """
    shape = spec.in_shape  # one sample, in the block's layout
    out: dict[str, Candidate] = {}
    for name in op_zoo.select_ops(tuple(ops.include), tuple(ops.exclude)):
        module = build_module(spec, name, seed)
        if module is None:
            continue
        out[name] = Candidate(
            block=spec.name, name=name, family=TEACHER_OP if name == TEACHER_OP else op_zoo.get_op(name).family,
            params=op_zoo.count_params(module), macs=op_zoo.count_macs(module, shape), spec=spec, seed=seed,
            activations=sum(leaf_outputs(module, shape)), trainable=_trainable(name, module),
        )
        del module
    return out


def build_all_candidates(specs: list[BlockSpec], ops: OpsConfig, seed: int = 0) -> dict[str, dict[str, Candidate]]:
    """Candidates for every block, in block order (static costs; modules built on demand)."""
    op_zoo.import_op_modules(list(ops.modules))
    return {spec.name: build_block_candidates(spec, ops, seed) for spec in specs}


class OneBlockAtATime(Mapping):
    """A view of candidates by block that releases each block's modules once iteration moves past it.

    Scoring and latency profiling go through the blocks in order: wrapped in this view they
    hold one block's modules at a time, built as each is asked for. A block asked for again
    later is simply built again.
    """

    def __init__(self, candidates: Mapping[str, Mapping[str, Candidate]]) -> None:
        self._candidates = candidates

    def __getitem__(self, block: str):
        return self._candidates[block]

    def __len__(self) -> int:
        return len(self._candidates)

    def __iter__(self) -> Iterator[str]:
        for block in list(self._candidates):
            try:
                yield block
            finally:
                release_all({block: self._candidates[block]})


class ModuleView(Mapping):
    """One block's candidate modules by op name, each built when first asked for.

    A network assembled from a selection needs one candidate per block: the latency check
    and the profile bundle's networks build those only, not the block's whole zoo.
    """

    def __init__(self, candidates: Mapping[str, Candidate]) -> None:
        self._candidates = candidates

    def __getitem__(self, name: str) -> nn.Module:
        return self._candidates[name].module

    def __len__(self) -> int:
        return len(self._candidates)

    def __iter__(self) -> Iterator[str]:
        return iter(self._candidates)


def module_views(candidates: Mapping[str, Mapping[str, Candidate]]) -> dict[str, ModuleView]:
    """Every block's :class:`ModuleView`, in block order."""
    return {block: ModuleView(cands) for block, cands in candidates.items()}


def release_all(candidates: Mapping[str, Mapping[str, Candidate]]) -> None:
    """Release every held module of ``candidates`` (plain modules are left alone)."""
    for cands in candidates.values():
        for cand in cands.values():
            release = getattr(cand, "release", None)
            if release is not None:
                release()


def live_modules(candidates: Mapping[str, Mapping[str, Candidate]]) -> int:
    """How many candidate modules are held now."""
    return sum(getattr(c, "alive", True) for cands in candidates.values() for c in cands.values())


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
        path = candidate_file(weights_dir, spec.name, name)
        if path.is_file():
            module.load_state_dict(load_tensors(path))
        else:  # a run folder of an older lana: one file per block
            stored = load_tensors(weights_file(weights_dir, spec.name)) if weights_file(weights_dir, spec.name).is_file() else {}
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

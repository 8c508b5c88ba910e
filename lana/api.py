"""The Python API: ``lana.accelerate`` and the stage functions.

One code path with the CLI: a :class:`Run` holds what ``lana distill --config C --run R``
builds (the resolved config and the run folder) plus, from Python, a teacher and data in
memory; its methods call the same stage functions the commands call. A teacher passed as a
module is recorded in the folder as ``teacher.pt`` (its weights) and
``teacher.model: python:<module>.<Class>`` in ``config.yaml``; a module's code cannot be
rebuilt from a name, so resuming such a run takes the same module again
(``lana.open_run(RUN, teacher=model)``), and the folder's fingerprint refuses another one.
Data passed from Python are not copied into the folder either (``data.kind: python``): a
DataLoader is used as given (sampler, collate_fn, workers, batch size), and ``batch_fn``
maps its batches (dicts, ...) to ``(images, labels or None)``. A teacher on any device is
accepted; work runs on the compute device (``device``) and the student comes back on the
teacher's device.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from lana.config import LanaConfig, build_config
from lana.data import BatchFn, DataSplits, batch_fn_name, is_loader, load_batch_fn, user_splits
from lana.device import module_device, move_to, resolve_compute_device
from lana.errors import ConfigError, DataError, TableError
from lana.names import DEFAULT_SOLVER
from lana.run.context import Context, prepare
from lana.run.inputs import check_labels, config_tree, folder_at, merge_defaults, num_classes
from lana.run.folder import RunFolder, read_json, save_tensors, write_json
from lana.selection import SolveInputs, build_problem, parse_budget, solve_inputs
from lana.stages.budget import aimed_budget, hold_budget, solve_aimed
from lana.stages.choose import solve_and_choose
from lana.stages.distill import distill_stage
from lana.stages.export import export_stage
from lana.stages.finetune import finetune_stage, load_selection, load_student
from lana.stages.solve import solve_run
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import PYTHON_TEACHER, load_teacher, teacher_fingerprint

Announce = Callable[[str], None]


class Run:
    """A run folder with its config and (from Python) the teacher and data in memory.

    Made by :func:`new_run` (from Python objects) or :func:`open_run` (an existing folder);
    each method is one stage, reading and writing the folder exactly as the CLI does.
    """

    def __init__(self, folder: RunFolder, config: LanaConfig, teacher: nn.Module | None = None,
                 splits: DataSplits | None = None) -> None:
        self.folder, self.config, self.teacher, self.splits = folder, config, teacher, splits
        self.home = module_device(teacher) if teacher is not None else None  # where the user's teacher lives
        self._context: Context | None = None

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.folder.path

    def context(self) -> Context:
        """What the fine-tune and export stages take (teacher, data, blocks), prepared once."""
        if self._context is None:
            self._context = prepare(self.config, self.folder, teacher=self.teacher, splits=self.splits)
        return self._context

    def distill(self, force: bool = False) -> pd.DataFrame:
        """Distil, score and time every candidate (``lana distill``); resumes where it stopped.

        Returns:
            The candidates table (also ``RUN/candidates.parquet``).
        """
        try:
            table = distill_stage(self.config, self.folder, force=force, teacher=self.teacher, splits=self.splits)
        finally:
            self.give_back_teacher()
        if table is None:
            raise ConfigError("this process is a torchrun rank other than 0; only rank 0 returns the table")
        return table

    @property
    def table(self) -> pd.DataFrame:
        """The run's candidates table."""
        return self.folder.load_table()

    def solve(self, budget: str | None = None, solver: str | None = None, time_limit: float | None = None,
              max_params: str | None = None, max_macs: str | None = None) -> dict:
        """Select one op per block under the limits; writes ``RUN/selection.json``.

        The solver's ``solve.top_k`` best selections are compared on held-out validation
        images and the best is kept (``lana solve`` on the command line keeps the solver's
        first). Call it again with another budget to re-solve without re-distilling.

        Returns:
            The selection record: ``choice`` (block → op), ``predicted_latency_ms``, ...
        """
        budget, solver = budget or self.config.solve.budget, solver or self.config.solve.solver
        if self.config.solve.top_k == 1:  # nothing to compare: no teacher or data needed
            return solve_run(self.folder, budget, solver, time_limit, max_params, max_macs)
        self.folder.load_table()  # a run not distilled yet is said first
        if self.splits is None and self.config.data.kind == "python":
            raise DataError(f"solve compares the solver's {self.config.solve.top_k} best selections (solve.top_k) on the "
                            "run's validation images, which were passed from Python; pass them again: lana.open_run(RUN, "
                            "teacher=..., train=..., val=...), or take the solver's first with `lana solve --run RUN`")
        return solve_and_choose(self.context(), budget, solver, time_limit, max_params, max_macs)

    def selection(self) -> dict:
        """The last selection written by :meth:`solve`."""
        return load_selection(self.folder)

    def student(self, selection: dict | None = None, finetuned: bool = True) -> nn.Module:
        """The selection's student in eval mode (fine-tuned weights when they belong to it), on
        the device the teacher was given on (the CPU for a teacher loaded by name)."""
        try:
            student = load_student(self.context(), selection or self.selection(), finetuned)[0]
        finally:
            self.give_back_teacher()
        return move_to(student, self.home or "cpu")

    def give_back_teacher(self) -> None:
        """Move the user's teacher back to the device it was given on (each stage moves it to the
        compute device for its work; every :class:`Run` method gives it back)."""
        if self.teacher is not None and self.home is not None:
            move_to(self.teacher, self.home)

    def finetune(self, selection: dict | None = None) -> dict:
        """Fine-tune the selection's student by distillation (``lana finetune``); saves ``RUN/student.pt``."""
        try:
            return finetune_stage(self.context(), selection or self.selection())
        finally:
            self.give_back_teacher()

    def export(self, selection: dict | None = None, finetuned: bool = True) -> dict:
        """Export, reload, check and time the student (``lana export``); returns ``report.json``'s figures."""
        try:
            return export_stage(self.context(), selection or self.selection(), finetuned)
        finally:
            self.give_back_teacher()


@dataclass
class Result:
    """What :func:`accelerate` returns."""

    student: nn.Module  # fine-tuned, eval mode, same input and output structure and shapes as the teacher
    selection: dict[str, str]  # block name -> op name
    table: pd.DataFrame  # the candidates table
    report: dict  # report.json: measured latencies, speed-up, accuracy where labels were given (feature distance for feature maps)
    run: Run  # the run, for re-solving or exporting again


def new_run(teacher: nn.Module | str, train, val, test=None, *, run_dir: str | Path | None = None,
            device: str = "auto", config: dict | None = None, blocks: list[str] | None = None,
            batch_fn: BatchFn | str | None = None) -> Run:
    """Set up a run from a teacher and data in memory; runs no stage yet.

    Args:
        teacher: a trained ``nn.Module`` on any device, or a model string as in the config
            (``timm:NAME``, ``torchvision:NAME``, ``pkg.module:factory``), returning logits
            ``(N, classes)`` or feature maps (a tensor, or a tuple, list or dict of tensors:
            scored and fine-tuned by their normalised distance, labels ignored).
        train: a DataLoader (iterated as given: its sampler, collate_fn, workers, transforms
            and batch size) or a Dataset (lana's loader, ``data.batch_size`` and
            ``data.num_workers``) of images, ``(images, labels)`` or dicts.
        val: held-out data of the same form, for the swap-one scores.
        test: data for the report's figures; None uses ``val``.
        run_dir: the run folder; None makes a temporary one.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda[:N]``: the compute
            device (distillation, scoring, fine-tuning, evaluation) and, unless the config
            sets ``latency.device``, the latency target. The config's ``device`` wins where set.
        config: the YAML's keys as a dict, e.g. ``{"distill": {"epochs": 1}}``.
        blocks: module names to replace; None finds them automatically.
        batch_fn: ``batch_fn(batch) -> (images, labels or None)`` for batches of another
            shape (e.g. ``lambda b: (b["img"], b["cls"])``), or ``"pkg.module:function"``;
            labels may be torch, numpy or Python integers. An importable function is
            recorded as ``data.batch_fn`` so :func:`open_run` finds it again.

    Returns:
        The :class:`Run`.

    Raises:
        ConfigError, DataError, BlockDiscoveryError, RunFolderError: one-line messages.
    """
    tree = config_tree(config)
    folder = folder_at(run_dir) if run_dir is not None else None
    if device != "auto":  # a missing GPU is said before anything is read or written
        resolve_compute_device(device, key="device")
    if isinstance(blocks, str):
        raise ConfigError(f"blocks is the string {blocks!r}; pass a list of module names, e.g. blocks=[{blocks!r}]")
    if isinstance(teacher, str):
        merge_defaults(tree, "teacher", {"model": teacher})
        cfg = build_config(tree)
        teacher = load_teacher(cfg.teacher.model, cfg.teacher.checkpoint, cfg.teacher.kwargs)
    elif not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher is a {type(teacher).__name__}; expected an nn.Module or a model string such as 'timm:resnet18'")
    else:
        cls = type(teacher)
        tree.setdefault("teacher", {}).update(model=f"{PYTHON_TEACHER}:{cls.__module__}.{cls.__qualname__}", kwargs={})
    if blocks is not None:
        tree["teacher"]["blocks"] = list(blocks)
    gpu = device == "auto" and torch.cuda.is_available()
    tree.setdefault("device", device)
    merge_defaults(tree, "latency", {"device": "cuda" if gpu else ("cpu" if device == "auto" else device)})
    if is_loader(train) and train.batch_size:  # the loader's batch size is the one used (and recorded)
        tree.setdefault("data", {})["batch_size"] = train.batch_size
    tree.setdefault("data", {})["kind"] = "python"
    fn = load_batch_fn(batch_fn if batch_fn is not None else tree["data"].get("batch_fn"))
    if batch_fn is not None:
        tree["data"]["batch_fn"] = batch_fn if isinstance(batch_fn, str) else batch_fn_name(batch_fn)
    early = build_config(tree)  # bad keys are said before the data are read
    splits = user_splits(train, val, test, batch_fn=fn, deterministic=early.data.deterministic,
                         num_workers=early.data.num_workers)
    splits.num_classes = num_classes(teacher, splits)
    check_labels(splits, splits.num_classes)
    discover_blocks(teacher, (1, *splits.input_shape), tree["teacher"].get("blocks"))  # said before anything is written

    folder = folder or RunFolder(tempfile.mkdtemp(prefix="lana-run-"))
    weights = folder.file("teacher.pt").resolve()
    tree["teacher"]["checkpoint"] = str(weights)
    cfg = build_config(tree)
    folder.check_fingerprint(teacher_fingerprint(teacher), cfg)  # another teacher's folder is refused before any write
    if not weights.is_file():
        save_tensors(weights, teacher.state_dict())
    folder.save_config(cfg)
    return Run(folder, cfg, teacher.eval(), splits)


def open_run(run_dir: str | Path, teacher: nn.Module | None = None, train=None, val=None, test=None,
             batch_fn: BatchFn | str | None = None) -> Run:
    """Open an existing run folder to re-solve, fine-tune or export from Python.

    Args:
        run_dir: the folder (made by :func:`accelerate`, :func:`new_run` or ``lana distill``).
        teacher: the teacher module, needed where it was passed from Python; the folder's
            fingerprint refuses any other.
        train, val, test: the data, needed where they were passed from Python (for the
            student, fine-tuning, export, and solving with ``solve.top_k`` > 1).
        batch_fn: as for :func:`new_run`; None uses the folder's ``data.batch_fn``.

    Returns:
        The :class:`Run` with the folder's ``config.yaml``.
    """
    folder = folder_at(run_dir)
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher is a {type(teacher).__name__}; pass the nn.Module the run was made with "
                          "(for weights, load them into the model first)")
    config = folder.load_config()
    splits = None
    if train is not None or val is not None:
        if train is None or val is None:
            raise DataError("open_run got only one of train= and val=; pass both (or neither)")
        fn = load_batch_fn(batch_fn if batch_fn is not None else config.data.batch_fn)
        splits = user_splits(train, val, test, batch_fn=fn, deterministic=config.data.deterministic,
                             num_workers=config.data.num_workers)
        if teacher is not None:
            splits.num_classes = num_classes(teacher, splits)
            check_labels(splits, splits.num_classes)
    return Run(folder, config, teacher, splits)


def run_pipeline(run: Run, budget: str | None = None, announce: Announce | None = None,
                 stages: dict | None = None) -> dict:
    """Distil, solve, fine-tune and export: ``lana.accelerate`` and ``lana demo`` both run this.

    The budget holds both ways (:mod:`lana.stages.budget`): the first solve aims at 97.5 % of
    it (inside the band that counts as met), the exported student is measured
    against it in its own unit (a ``50%`` budget against the teacher measured beside it, a
    ``5ms`` budget as is), and where it is over, or more than 5 % under, the budget is
    corrected by the measured ratio and the student re-solved, fine-tuned and exported once;
    the report says so (``budget_met``, ``budget_check``).

    Args:
        run: the run.
        budget: e.g. ``"50%"``, ``"5ms"``; None = the config's ``solve.budget``.
        announce: called with each stage's title (the demo prints them).
        stages: seconds of stages already done (the demo's teacher training), extended here.

    Returns:
        The report (also ``RUN/report.json``), with ``stage_seconds``.
    """
    say = announce or (lambda _title: None)
    stages = dict(stages or {})
    text = budget or run.config.solve.budget
    tick = time.time()

    def mark(stage: str) -> None:
        nonlocal tick
        stages[stage] = round(time.time() - tick, 1)
        tick = time.time()
        write_json(run.folder.file("stage_seconds.json"), stages)

    say("distill, score and time every candidate")
    table = run.distill()
    mark("distill_score_latency")
    # inside the band the check accepts: room for the measurement's noise
    say(f"solve: {len(table)} candidates over {table['block'].nunique()} blocks, budget {text} "
        f"(aiming at {aimed_budget(text)})")
    selection = solve_aimed(run, text, say)
    mark("solve")
    say("fine-tune the student")
    run.finetune(selection)
    mark("finetune")
    say("export and measure")
    report = run.export(selection)
    mark("export_measure")
    report = hold_budget(run, text, selection, report, say)
    if report.get("budget_check"):
        mark("budget_check")
    report["stage_seconds"] = stages
    write_json(run.folder.file("report.json"), report)
    return report


def accelerate(teacher: nn.Module | str, train, val, budget: str | None = "50%", *, test=None,
               run_dir: str | Path | None = None, device: str = "auto", config: dict | None = None,
               blocks: list[str] | None = None, batch_fn: BatchFn | str | None = None) -> Result:
    """Make ``teacher`` faster under ``budget``: distil, solve, fine-tune, export, measure.

    Args:
        teacher, train, val, test, run_dir, device, config, blocks, batch_fn: as for :func:`new_run`.
        budget: ``"50%"`` of the teacher's measured latency, ``"5ms"``, ``"800us"``, ...
            (the CLI's parser); None = the config's ``solve.budget``.

    Returns:
        The :class:`Result`: fine-tuned student, selection, candidates table and report.

    Example:
        >>> result = lana.accelerate(model, train=train_set, val=val_set, budget="50%")
        >>> result.report["speedup"], result.selection
    """
    if budget is not None:
        parse_budget(budget, 1.0)  # a typo is said now, not after distillation
    run = new_run(teacher, train, val, test, run_dir=run_dir, device=device, config=config, blocks=blocks, batch_fn=batch_fn)
    report = run_pipeline(run, budget)
    selection = run.selection()
    return Result(run.student(selection), dict(selection["choice"]), run.table, report, run)  # on the teacher's device


# -- the stages as functions (each also a Run method) -------------------------------------
def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(run)


def distill_candidates(run: Run | str | Path, force: bool = False) -> pd.DataFrame:
    """Distil, score and time every candidate of a run; returns the candidates table."""
    return _as_run(run).distill(force)


def solve(target: Run | str | Path | pd.DataFrame, budget: str, *, solver: str | None = None,
          max_params: str | None = None, max_macs: str | None = None, time_limit: float | None = None,
          teacher_ms: float | None = None) -> dict:
    """Select one op per block under the limits, from a run or from a candidates table.

    Args:
        target: a :class:`Run` or run folder (writes ``RUN/selection.json``), or a table
            (``block``, ``candidate``, ``score``, ``latency_ms``, ...; writes nothing).
        budget: ``"5ms"``, ``"800us"``, ``"50%"`` (of ``teacher_ms``, or the table's teacher rows).
        solver, max_params, max_macs, time_limit: as ``lana solve``'s options.
        teacher_ms: the teacher's measured latency, for share budgets on a bare table.

    Returns:
        The selection record: ``choice`` (block → op), ``predicted_latency_ms``, ``optimal``, ...
    """
    if isinstance(target, (dict, list, tuple)):
        raise TableError(f"target is a {type(target).__name__}; pass a pandas DataFrame (e.g. pd.DataFrame(rows)), "
                         "a Run or a run folder")
    if not isinstance(target, pd.DataFrame):
        return _as_run(target).solve(budget, solver, time_limit, max_params, max_macs)
    inputs = SolveInputs(target, Path.cwd(), teacher_ms=teacher_ms)
    problem, limits = build_problem(inputs, budget, max_params, max_macs)
    return solve_inputs(inputs, problem, limits, solver or DEFAULT_SOLVER, time_limit)


def assemble_student(run: Run | str | Path, selection: dict | None = None, finetuned: bool = True) -> nn.Module:
    """The student of a selection (default: the run's last), in eval mode."""
    return _as_run(run).student(selection, finetuned)


def finetune(run: Run | str | Path, selection: dict | None = None) -> dict:
    """Fine-tune a selection's student end to end; returns validation figures before and after."""
    return _as_run(run).finetune(selection)


def export_student(run: Run | str | Path, selection: dict | None = None, finetuned: bool = True) -> dict:
    """Export and measure a selection's student; returns the report."""
    return _as_run(run).export(selection, finetuned)


def read_report(run: Run | str | Path) -> dict[str, Any]:
    """A run's ``report.json``."""
    return read_json(Path(getattr(run, "path", run)) / "report.json")

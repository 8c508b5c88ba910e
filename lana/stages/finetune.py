"""``lana finetune``: the selected student, fine-tuned end to end by distillation."""
from __future__ import annotations

import logging

import torch
from torch import nn

from lana.data import take_tensors
from lana.distill.candidates import assemble_student
from lana.distill.score import evaluate, split_validation, teacher_targets
from lana.distill.train import distil_into
from lana.errors import RunFolderError
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger("lana")


STUDENT_WEIGHTS = "student.pt"


def score_kind(ctx: Context) -> str:
    """``labels``, or ``teacher_agreement`` where the data came without labels."""
    return "labels" if ctx.splits.labelled else "teacher_agreement"


def val_targets(ctx: Context, dataset, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and what a student is measured against: labels, or the teacher's logits without them."""
    images, labels = take_tensors(dataset, limit)
    return images, (labels if ctx.splits.labelled else teacher_targets(ctx.teacher, images))


def load_selection(run: RunFolder, path=None) -> dict:
    """The selection file written by ``lana solve`` (``RUN/selection.json`` by default)."""
    path = path or run.file("selection.json")
    if not path.is_file():
        raise RunFolderError(f"{path} not found; run `lana solve --run {run.path} --budget 50%` first")
    selection = read_json(path)
    if not isinstance(selection, dict) or "choice" not in selection:
        raise RunFolderError(f"{path} has no 'choice'; re-run `lana solve`")
    return selection


def load_student(ctx: Context, selection: dict, finetuned: bool = True) -> tuple[nn.Module, bool]:
    """Assemble the selection's student, with fine-tuned weights when they match it.

    Returns:
        The student and whether fine-tuned weights were loaded.
    """
    student = assemble_student(ctx.teacher, ctx.specs, selection["choice"], ctx.run.weights_dir)
    path = ctx.run.file(STUDENT_WEIGHTS)
    if finetuned and path.is_file():
        stored = load_tensors(path)
        if stored.get("choice") == selection["choice"]:
            student.load_state_dict(stored["state_dict"])
            return student.eval(), True
        log.info("student.pt belongs to another selection; using distilled weights")
    return student.eval(), False


def finetune_epochs(cfg, n_train: int, batch_size: int) -> float:
    """``finetune.epochs``, raised where it would give fewer than ``finetune.min_steps`` steps:
    one epoch of a thousand images is eight steps, too few to mend a student."""
    floor = cfg.min_steps * batch_size / max(1, n_train)
    return max(cfg.epochs, floor)


def finetune_stage(ctx: Context, selection: dict) -> dict:
    """Fine-tune the selected student end to end by distillation from the teacher.

    Args:
        ctx: the prepared run (config, data, teacher, blocks).
        selection: the solver's selection (``choice`` block → op).

    Returns:
        Validation loss and accuracy of the student before and after, and the final train loss.
    """
    cfg = ctx.config.finetune
    student, _ = load_student(ctx, selection, finetuned=False)
    images, targets = val_targets(ctx, split_validation(ctx.splits.val, ctx.config.score)[1], None)  # the choice images
    before = evaluate(student, images, targets)
    epochs = finetune_epochs(cfg, len(ctx.splits.train), ctx.config.data.batch_size)
    loss = distil_into(student, ctx.teacher, ctx.splits, cfg, ctx.config.data.batch_size, ctx.config.seed, epochs=epochs)
    after = evaluate(student, images, targets)
    save_tensors(ctx.run.file(STUDENT_WEIGHTS), {"choice": selection["choice"], "state_dict": student.state_dict()})
    result = {
        "val_loss_before": before[0],
        "val_acc_before": before[1],
        "val_loss_after": after[0],
        "val_acc_after": after[1],
        "train_loss": loss,
        "epochs": epochs,
        "score_kind": score_kind(ctx),
    }
    write_json(ctx.run.file("finetune.json"), result)
    return result


def run_finetune(run: RunFolder, overrides: list[str] | None = None) -> dict:
    """``lana finetune``: load the run, its selection, fine-tune and save ``student.pt``."""
    config = run.load_config(overrides)
    ctx = prepare(config, run)
    return finetune_stage(ctx, load_selection(run))

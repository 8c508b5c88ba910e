"""``lana finetune``: the selected student, fine-tuned end to end by distillation."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict

from torch import nn

from lana.data import epoch_steps, iterate
from lana.device import Placement, module_device, move_to
from lana.distill.candidates import assemble_student
from lana.distill.validation import evaluate_stream, split_validation
from lana.distill.train import Resumable, distil_into
from lana.errors import ConfigError, RunFolderError
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger("lana")


STUDENT_WEIGHTS = "student.pt"
FINETUNE_STATE = "finetune_state.pt"  # a stopped fine-tune resumes from it (lana.distill.train.Resumable)


def score_kind(ctx: Context) -> str:
    """``labels``, or ``teacher_agreement`` where the data came without labels, or
    ``feature_distance`` where the teacher's outputs are not logits (labels are then ignored)."""
    if not ctx.splits.num_classes:
        return "feature_distance"
    return "labels" if ctx.splits.labelled else "teacher_agreement"


def split_figures(ctx: Context, models: dict[str, nn.Module], place: Placement, split: str = "val",
                  limit: int | None = None, data=None) -> dict[str, dict[str, float]]:
    """Loss, top-1 and agreement with the teacher of ``models`` over a split (or ``data``, a
    part of one), streamed batch by batch on ``place`` (labels where the data have them, else
    the teacher's logits; the feature distance from the teacher's outputs where they are not
    logits)."""
    data = getattr(ctx.splits, split) if data is None else data
    batches = iterate(data, ctx.config.score.batch_size, batch_fn=ctx.splits.batch_fn, num_workers=ctx.splits.num_workers,
                      pin_memory=place.pin_memory, name=split)
    return evaluate_stream(models, batches, ctx.teacher, place, limit)


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
        The student (on the teacher's device) and whether fine-tuned weights were loaded.
    """
    if not isinstance(selection, dict) or not isinstance(selection.get("choice"), dict):
        raise ConfigError(f"the selection is {type(selection).__name__} {str(selection)[:60]!r}; pass the record a solve "
                          "returns (a dict with 'choice': block -> op), or none for the run's last")
    student = move_to(assemble_student(ctx.teacher, ctx.specs, selection["choice"], ctx.run.weights_dir), module_device(ctx.teacher))
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


def without_inplace(model: nn.Module) -> nn.Module:
    """Turn the in-place activations of ``model`` (a student copy) into out-of-place ones, the same numbers.

    A teacher block that starts with an in-place activation on its input is safe after the
    teacher's own blocks (they end in an addition), but not after a candidate ending in an
    activation: autograd keeps that output, and the in-place op would overwrite it (timm's
    Xception failed fine-tuning so). Returns ``model``.
    """
    for module in model.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
    return model


def finetune_stage(ctx: Context, selection: dict) -> dict:
    """Fine-tune the selected student end to end by distillation from the teacher.

    Args:
        ctx: the prepared run (config, data, teacher, blocks).
        selection: the solver's selection (``choice`` block → op).

    Returns:
        Validation loss and accuracy of the student before and after, and the final train loss.
    """
    cfg = ctx.config.finetune
    place = Placement.for_config(ctx.config)
    log.info("finetune on %s", place.describe())
    student, _ = load_student(ctx, selection, finetuned=False)
    without_inplace(student)  # the saved weights and the exported student are unchanged
    place.model(student)
    place.model(ctx.teacher).eval()
    choice = split_validation(ctx.splits.val, ctx.config.score)[1]  # the choice images: no score was measured on them
    before = split_figures(ctx, {"student": student}, place, "val", data=choice)["student"]
    batch = ctx.config.data.batch_size
    epochs = finetune_epochs(cfg, round(epoch_steps(ctx.splits.train, batch) * batch), batch)
    distilled = ctx.run.file("distill.json")  # a rerun distillation (--force) starts the fine-tune over
    work = {"choice": selection["choice"], "finetune": cfg.model_dump(mode="json", exclude={"checkpoint_every_s"}),
            "epochs": epochs, "batch": batch, "seed": ctx.config.seed,
            "distilled": hashlib.sha256(distilled.read_bytes()).hexdigest() if distilled.is_file() else None}
    resume = Resumable(ctx.run.file(FINETUNE_STATE), hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()[:16],
                       cfg.checkpoint_every_s)
    loss = distil_into(student, ctx.teacher, ctx.splits, cfg, batch, ctx.config.seed, epochs=epochs, place=place, resume=resume)
    after = split_figures(ctx, {"student": student}, place, "val", data=choice)["student"]
    state = student.state_dict()
    weights = OrderedDict((k, v.cpu()) for k, v in state.items())
    weights._metadata = getattr(state, "_metadata", OrderedDict())  # module versions: torchvision's MNASNet needs them to load
    save_tensors(ctx.run.file(STUDENT_WEIGHTS), {"choice": selection["choice"], "state_dict": weights})
    resume.clear()  # student.pt holds what it led to
    place.offload(ctx.teacher)
    result = {
        "val_loss_before": before["loss"],
        "val_acc_before": before["acc"],
        "val_loss_after": after["loss"],
        "val_acc_after": after["acc"],
        "train_loss": loss,
        "epochs": epochs,
        "score_kind": score_kind(ctx),
        "val_images": after["images"],
        "device": str(place.device),
    }
    write_json(ctx.run.file("finetune.json"), result)
    return result


def run_finetune(run: RunFolder, overrides: list[str] | None = None) -> dict:
    """``lana finetune``: load the run, its selection, fine-tune and save ``student.pt``."""
    config = run.load_config(overrides)
    ctx = prepare(config, run)
    return finetune_stage(ctx, load_selection(run))

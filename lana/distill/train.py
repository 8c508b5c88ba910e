"""End-to-end training loops: the demo teacher from labels, the student by distillation.

Both run on the compute device (:class:`lana.device.Placement`: mixed precision on CUDA),
over the train split as given (a user's DataLoader is iterated as it is)."""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lana.config import FinetuneConfig
from lana.data import NO_LABEL, BatchFn, DataSplits, epoch_steps, is_loader, iterate, make_loader, to_pair
from lana.device import Placement, module_device
from lana.distill.distributed import graceful_stop
from lana.distill.inference import channels_last_trains_safely, fast_batch
from lana.progress import bar as progress
from lana.run.folder import load_tensors, save_tensors
from lana.teacher.outputs import feature_distance, is_logits

log = logging.getLogger("lana")

LossFn = Callable[..., torch.Tensor]  # loss_fn(model, images, labels[, teacher_logits]) -> scalar
CACHE_LIMIT_BYTES = 256 * 2**20  # teacher logits kept in memory up to this size, else recomputed per step
FIT_STATE_FORMAT = 1


@dataclass
class Resumable:
    """Where :func:`fit` keeps its state so that a stopped training resumes instead of starting over.

    The state (weights, optimiser, schedule, grad scaler, step, position in the epoch, RNG) is
    written atomically to ``path`` at most every ``every_s`` seconds and when Ctrl-C or SIGTERM
    asks to stop (then :class:`KeyboardInterrupt` is raised once it is saved). A state whose
    ``key`` differs (other work: another selection, other settings) is ignored and replaced.
    Resuming replays the epoch's order up to the saved batch: exact for lana's loader (seeded
    per epoch); a user's DataLoader is iterated as given, so its shuffling may differ.
    """

    path: Path
    key: str
    every_s: float = 300.0

    def clear(self) -> None:
        """Remove the state (once what it led to is saved)."""
        self.path.unlink(missing_ok=True)


def _batches(data, splits: DataSplits, batch_size: int, shuffle: bool, seed: int, place: Placement):
    """``(images, labels[, teacher_logits])`` batches of ``data`` (a split, or :class:`TeacherLogits` over one)."""
    if isinstance(data, TeacherLogits):
        loader = make_loader(data, batch_size, shuffle, seed, splits.num_workers, place.pin_memory)
        for *head, logits in loader:  # the item's own fields, then the logits
            yield (*to_pair(head if len(head) > 1 else head[0], splits.batch_fn, "train"), logits)
        return
    yield from iterate(data, batch_size, batch_fn=splits.batch_fn, shuffle=shuffle, seed=seed,
                       num_workers=splits.num_workers, pin_memory=place.pin_memory, name="train")


def channels_last_trains(model: nn.Module, loss_fn: LossFn, batch: tuple[torch.Tensor, ...], place: Placement) -> bool:
    """On a CPU, whether ``model`` (and ``loss_fn``) take channels_last batches and weights,
    on which convolutions train 1.1-1.6x faster (docs/benchmarks.md). Probed once on two
    images of ``batch``, in eval mode without gradients (no statistics move); code that
    cannot (a ``view`` of a channels_last tensor) trains as before. Elsewhere False: on a GPU
    :class:`lana.device.Placement` chooses the memory format."""
    if place.device.type != "cpu" or not any(t.dim() == 4 for t in batch):
        return False
    if not channels_last_trains_safely(model):
        log.info("training on contiguous batches: a strided 1x1 convolution with few input channels has wrong "
                 "weight gradients on channels_last ones (oneDNN issue #6035)")
        return False
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            loss_fn(model, *(fast_batch(t[:2]) for t in batch))
        return True
    except RuntimeError as exc:
        log.info("training on contiguous batches: the model failed on a channels_last one (%s)", exc)
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        model.train(was_training)


def fit(
    model: nn.Module,
    splits: DataSplits,
    loss_fn: LossFn,
    epochs: float,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    desc: str,
    train: Dataset | None = None,
    place: Placement | None = None,
    resume: Resumable | None = None,
) -> float:
    """Train ``model`` on the train split with AdamW and a one-cycle schedule.

    A Dataset is read through lana's loader (shuffled, seeded by ``seed`` + epoch); a user's
    DataLoader is iterated as given (its own sampler and batch size; ``batch_size`` and
    ``seed`` do not apply to it).

    Args:
        model: the network to train (left in eval mode afterwards, on ``place``'s device).
        splits: dataset splits (``train`` is used, with its ``batch_fn`` and workers).
        loss_fn: ``loss_fn(model, images, labels)`` returning a scalar loss.
        epochs: passes over the train split (fractions allowed).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        batch_size: images per step (lana's loader).
        seed: shuffling seed.
        desc: progress bar label.
        train: what to train on instead of ``splits.train``, e.g. :class:`TeacherLogits`
            (its extra fields are passed on to ``loss_fn``).
        place: the compute device and its mixed precision (default: where ``model`` is).
        resume: where to keep the state so a stopped run resumes (:class:`Resumable`); None: not kept.

    Returns:
        The mean loss over the last 50 steps.
    """
    place = place or Placement(module_device(model))
    train = splits.train if train is None else train
    steps = max(1, math.ceil(epochs * epoch_steps(train, batch_size)))
    place.model(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = one_cycle(optimiser, lr, steps)
    scaler = place.grad_scaler()
    recent: list[float] = []
    step, epoch, in_epoch, fast = 0, 0, 0, None
    saved = _load_fit_state(resume, steps, model, optimiser, schedule, scaler)
    if saved is not None:
        step, epoch, in_epoch, recent = saved
        log.info("%s: resuming at step %d of %d (%s)", desc, step, steps, resume.path.name)
    model.train()
    skip, last_save = in_epoch, time.monotonic()
    with progress(total=steps, initial=step, desc=desc, unit="step") as bar, \
            (graceful_stop(desc) if resume is not None else nullcontext({"stop": False})) as stop:
        while step < steps:
            for batch in _batches(train, splits, batch_size, True, seed + epoch, place):
                if step >= steps:
                    break
                if skip:  # resumed: the epoch's batches before the saved position were trained on
                    skip -= 1
                    continue
                if fast is None:
                    fast = channels_last_trains(model, loss_fn, batch, place)
                if fast:
                    batch = tuple(fast_batch(t) for t in batch)
                with place.autocast():
                    loss = loss_fn(model, *(place.batch(t) for t in batch))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                schedule.step()
                recent = (recent + [loss.item()])[-50:]
                step, in_epoch = step + 1, in_epoch + 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
                if resume is not None and step < steps and (stop["stop"] or time.monotonic() - last_save >= resume.every_s):
                    _save_fit_state(resume, steps, model, optimiser, schedule, scaler, step, epoch, in_epoch, recent)
                    last_save = time.monotonic()
                    if stop["stop"]:
                        log.info("%s: stopped at step %d of %d; state saved, run again to resume", desc, step, steps)
                        raise KeyboardInterrupt
            epoch, in_epoch = epoch + 1, 0
    if fast:  # the weights leave as they came: contiguous
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return sum(recent) / len(recent)


def _save_fit_state(resume: Resumable, steps: int, model: nn.Module, optimiser, schedule, scaler, step: int, epoch: int,
                    in_epoch: int, recent: list[float]) -> None:
    save_tensors(resume.path, {
        "format": FIT_STATE_FORMAT, "key": resume.key, "steps": steps, "step": step, "epoch": epoch, "in_epoch": in_epoch,
        "recent": list(recent), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
    })


def _load_fit_state(resume: Resumable | None, steps: int, model: nn.Module, optimiser, schedule,
                    scaler) -> tuple[int, int, int, list[float]] | None:
    """Load a saved state of the same work into the objects; its position, or None (no state, or another work's)."""
    if resume is None or not resume.path.is_file():
        return None
    state = load_tensors(resume.path)
    if not isinstance(state, dict) or state.get("format") != FIT_STATE_FORMAT or state.get("key") != resume.key \
            or state.get("steps") != steps:
        log.info("%s holds another training's state; starting over", resume.path.name)
        return None
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), int(state["epoch"]), int(state["in_epoch"]), [float(x) for x in state["recent"]]


def one_cycle(optimiser: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle schedule, warming up over a quarter of the steps (at least one step; a
    single step runs at ``lr``: OneCycleLR divides by zero on phases shorter than a step)."""
    if steps < 2:
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=max(0.25, 1.5 / steps))


def label_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the labels (training the teacher)."""
    return F.cross_entropy(model(images), labels)


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """Logit distillation: ``alpha`` · T² · KL(teacher ‖ student) + (1 − alpha) · CE(labels).

    The teacher runs on each batch unless the batch brings its logits (:class:`TeacherLogits`).
    A batch without labels (``NO_LABEL``) learns from the teacher's logits alone: T² · KL.
    A teacher whose output is not logits (feature maps, or a tuple, list or dict of tensors)
    is matched by :func:`feature_loss` instead; labels are ignored.
    """
    teacher.eval()

    def loss_fn(student: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = teacher(images)
        if not is_logits(teacher_logits):
            return feature_loss(student(images), teacher_logits)
        target = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        logits = student(images).float()
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        if bool((labels == NO_LABEL).any()):
            return temperature**2 * kl
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(logits, labels)

    return loss_fn


def feature_loss(student_outputs, teacher_outputs) -> torch.Tensor:
    """The batch mean of :func:`lana.teacher.outputs.feature_distance`: the loss that fine-tunes a
    student of a teacher whose outputs are feature maps (each output tensor weighs alike)."""
    return feature_distance(student_outputs, teacher_outputs).mean()


def distil_into(
    student: nn.Module,
    teacher: nn.Module,
    splits: DataSplits,
    cfg: FinetuneConfig,
    batch_size: int,
    seed: int,
    desc: str = "finetune",
    epochs: float | None = None,
    lr: float | None = None,
    targets: TeacherLogits | None = None,
    place: Placement | None = None,
    resume: Resumable | None = None,
) -> float:
    """Train ``student`` end to end by logit distillation from ``teacher`` (``finetune`` settings).

    Args:
        student: the network to train.
        teacher: the network it learns from (eval mode, not trained).
        splits: dataset splits (``train`` is used).
        cfg: temperature, alpha, epochs, lr and weight decay.
        batch_size: images per step.
        seed: shuffling seed.
        desc: progress bar label.
        epochs: instead of ``cfg.epochs``.
        lr: instead of ``cfg.lr``.
        targets: the teacher's logits over ``splits.train``, to share between several
            students; without it they are computed once here when there is more than
            one epoch, the train split is deterministic (``splits.deterministic``: the
            same images every epoch) and they fit in memory. Otherwise the teacher runs
            beside the student on every batch; the log says which.
        place: the compute device (teacher and student are moved there; default: where ``student`` is).
        resume: where to keep the training's state so a stopped run resumes (:class:`Resumable`).

    Returns:
        The mean loss over the last 50 steps.
    """
    place = place or Placement(module_device(student))
    epochs = cfg.epochs if epochs is None else epochs
    place.model(teacher).eval()
    if targets is None:
        why = ("one epoch or less: nothing to reuse" if epochs <= 1 else
               "the train split may augment at random or is iterated as given" if not splits.deterministic else "")
        if not why:
            targets = TeacherLogits.if_it_fits(teacher, splits, batch_size, place)
            why = "" if targets is not None else ("the teacher's outputs are feature maps, not logits" if not splits.num_classes
                                                   else "they would not fit in memory")
        log.info("%s: teacher logits %s", desc, f"computed beside the student every step ({why})" if why
                 else "cached once (the train split is deterministic)")
    return fit(student, splits, distillation_loss(teacher, cfg.temperature, cfg.alpha), epochs,
               cfg.lr if lr is None else lr, cfg.weight_decay, batch_size, seed, desc, train=targets, place=place,
               resume=resume)


class TeacherLogits(Dataset):
    """A dataset with the teacher's logits for each item: ``(*item, logits)`` (``(item, logits)`` for a non-tuple item).

    The teacher runs once over the data instead of once per step of every epoch; only
    right where the data give the same images every epoch (``splits.deterministic``: lana's
    own datasets, or a user's Dataset said or found to be; never a DataLoader, which is
    iterated as given). Keeps the items as they come (lazy datasets stay lazy; each batch
    goes through ``batch_fn`` later) and only the logits in memory, on the CPU.
    """

    def __init__(self, teacher: nn.Module, dataset: Dataset, batch_size: int, desc: str = "teacher logits",
                 batch_fn: BatchFn | None = None, place: Placement | None = None, num_workers: int = 0) -> None:
        self.dataset = dataset
        place = place or Placement(module_device(teacher))
        teacher.eval()
        chunks = []
        with torch.no_grad():
            batches = iterate(dataset, batch_size, batch_fn=batch_fn, num_workers=num_workers, pin_memory=place.pin_memory)
            for images, _ in progress(batches, desc=desc, unit="batch"):
                chunks.append(teacher(place.batch(images)).float().cpu())
        self.logits = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return (*item, self.logits[index]) if isinstance(item, (tuple, list)) else (item, self.logits[index])

    @staticmethod
    def fits(dataset: Dataset, num_classes: int) -> bool:
        """Whether the logits of ``dataset`` fit :data:`CACHE_LIMIT_BYTES` (4 bytes per value)."""
        return len(dataset) * num_classes * 4 <= CACHE_LIMIT_BYTES

    @classmethod
    def if_it_fits(cls, teacher: nn.Module, splits: DataSplits, batch_size: int,
                   place: Placement | None = None) -> TeacherLogits | None:
        """The logits over ``splits.train``, or None (the teacher runs per step) when they would not fit,
        the train split is a DataLoader (iterated as given, it cannot be indexed) or the teacher's
        outputs are not logits (``splits.num_classes`` 0: feature maps are not cached)."""
        if is_loader(splits.train) or not splits.num_classes or not cls.fits(splits.train, splits.num_classes):
            return None
        return cls(teacher, splits.train, batch_size, batch_fn=splits.batch_fn, place=place, num_workers=splits.num_workers)

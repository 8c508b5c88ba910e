"""End-to-end training loops: the demo teacher from labels, the student by distillation."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lana.config import FinetuneConfig
from lana.data import NO_LABEL, DataSplits, make_loader

LossFn = Callable[..., torch.Tensor]  # loss_fn(model, images, labels[, teacher_logits]) -> scalar
CACHE_LIMIT_BYTES = 256 * 2**20  # teacher logits kept in memory up to this size, else recomputed per step


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
) -> float:
    """Train ``model`` on the train split with AdamW and a one-cycle schedule.

    Args:
        model: the network to train (left in eval mode afterwards).
        splits: dataset splits (``train`` is used).
        loss_fn: ``loss_fn(model, images, labels)`` returning a scalar loss.
        epochs: passes over the train split (fractions allowed).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        batch_size: images per step.
        seed: shuffling seed.
        desc: progress bar label.
        train: what to train on instead of ``splits.train``, e.g. :class:`TeacherLogits`
            (its extra fields are passed on to ``loss_fn``).

    Returns:
        The mean loss over the last 50 steps.
    """
    train = splits.train if train is None else train
    steps = max(1, math.ceil(epochs * len(train) / batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = one_cycle(optimiser, lr, steps)
    model.train()
    recent: list[float] = []
    step, epoch = 0, 0
    with tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            for images, *rest in make_loader(train, batch_size, shuffle=True, seed=seed + epoch):
                if step >= steps:
                    break
                loss = loss_fn(model, images, *rest)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                recent = (recent + [loss.item()])[-50:]
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
            epoch += 1
    model.eval()
    return sum(recent) / len(recent)


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
    """
    teacher.eval()

    def loss_fn(student: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = teacher(images)
        target = F.log_softmax(teacher_logits / temperature, dim=1)
        logits = student(images)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        if bool((labels == NO_LABEL).any()):
            return temperature**2 * kl
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(logits, labels)

    return loss_fn


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
    targets: "TeacherLogits | None" = None,
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
            one epoch and they fit in memory.

    Returns:
        The mean loss over the last 50 steps.
    """
    epochs = cfg.epochs if epochs is None else epochs
    if targets is None and epochs > 1:
        targets = TeacherLogits.if_it_fits(teacher, splits, batch_size)
    return fit(student, splits, distillation_loss(teacher, cfg.temperature, cfg.alpha), epochs,
               cfg.lr if lr is None else lr, cfg.weight_decay, batch_size, seed, desc, train=targets)


class TeacherLogits(Dataset):
    """A dataset with the teacher's logits for each item: ``(image, label, logits)``.

    The teacher runs once over the data instead of once per step of every epoch; with the
    deterministic transforms lana uses, the targets are the same. Keeps the images as they
    come (lazy datasets stay lazy) and only the logits in memory.
    """

    def __init__(self, teacher: nn.Module, dataset: Dataset, batch_size: int, desc: str = "teacher logits") -> None:
        self.dataset = dataset
        teacher.eval()
        chunks = []
        loader = make_loader(dataset, batch_size, shuffle=False)
        with torch.no_grad():
            for images, _ in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True):
                chunks.append(teacher(images))
        self.logits = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, self.logits[index]

    @staticmethod
    def fits(dataset: Dataset, num_classes: int) -> bool:
        """Whether the logits of ``dataset`` fit :data:`CACHE_LIMIT_BYTES` (4 bytes per value)."""
        return len(dataset) * num_classes * 4 <= CACHE_LIMIT_BYTES

    @classmethod
    def if_it_fits(cls, teacher: nn.Module, splits: DataSplits, batch_size: int) -> "TeacherLogits | None":
        """The logits over ``splits.train``, or None (the teacher runs per step) when they would not fit."""
        return cls(teacher, splits.train, batch_size) if cls.fits(splits.train, splits.num_classes) else None

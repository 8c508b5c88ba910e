"""End-to-end training loops: the demo teacher from labels, the student by distillation."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lana.data import DataSplits, make_loader

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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

    Returns:
        The mean loss over the last 50 steps.
    """
    steps = max(1, math.ceil(epochs * len(splits.train) / batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    recent: list[float] = []
    step, epoch = 0, 0
    with tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            for images, labels in make_loader(splits.train, batch_size, shuffle=True, seed=seed + epoch):
                if step >= steps:
                    break
                loss = loss_fn(model, images, labels)
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


def label_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the labels (training the teacher)."""
    return F.cross_entropy(model(images), labels)


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """Logit distillation: ``alpha`` · T² · KL(teacher ‖ student) + (1 − alpha) · CE(labels)."""
    teacher.eval()

    def loss_fn(student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(teacher(images) / temperature, dim=1)
        logits = student(images)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(logits, labels)

    return loss_fn

"""The validation split and networks' figures on it.

The split is cut in two disjoint parts (:func:`split_validation`): swap-one scores come
from one, and every later choice made by accuracy (the solver's top-k selections compared,
the fine-tuning figures) from the other, so no choice rewards the scores' own noise.
:func:`evaluate` and :func:`evaluate_stream` give the loss, top-1 and agreement with the
teacher that the stages record (against labels, or against the teacher without them; the
normalised feature distance where the teacher's outputs are not logits).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from lana.config import ScoreConfig
from lana.data import NO_LABEL, DataSplits, is_loader, num_images, take_tensors, window
from lana.device import Placement, module_device
from lana.distill.inference import fast_inference
from lana.errors import DataError
from lana.teacher.outputs import feature_distance, is_logits

VALIDATION_SEED = 0  # the draw that cuts a validation Dataset into scoring and choice images
FAST_CPU_EVALUATION = True  # channels_last weights and the 1x1-map shortcut on a CPU (benchmarks/eval_rate.py)


def loss_hits(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss and top-1 hit against labels (integers) or the teacher's logits (floats).

    ``logits`` may carry leading candidate axes (``k, n, classes``); ``target`` is per image.
    """
    if target.is_floating_point():  # the teacher's logits: KL(teacher ‖ model) and agreement
        reference = F.log_softmax(target, dim=-1)
        loss = (reference.exp() * (reference - F.log_softmax(logits, dim=-1))).sum(-1)
        return loss, logits.argmax(-1) == target.argmax(-1)
    labels = target.expand(logits.shape[:-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return loss.view(logits.shape[:-1]), logits.argmax(-1) == labels


def output_figures(logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean KL from the teacher's outputs ``reference``, mean loss and top-1 (percent) against
    ``targets`` (labels, or the teacher's logits) of a model's ``logits`` on the same images."""
    loss, hits = loss_hits(logits, targets)
    kl = loss_hits(logits, reference)[0].clamp_min(0)
    return {"kl": kl.mean().item(), "loss": loss.mean().item(), "acc": 100.0 * hits.float().mean().item()}


@torch.no_grad()
def teacher_targets(teacher: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The teacher's logits on ``images`` (on the teacher's device, batch by batch; returned
    on the CPU): the targets where the data has no labels."""
    teacher.eval()
    place = Placement(module_device(teacher))
    return torch.cat([teacher(place.batch(images[start : start + batch_size])).float().cpu()
                      for start in range(0, len(images), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Mean loss and top-1 (percent) of ``model``: cross-entropy and accuracy against labels,
    or KL and agreement against the teacher's logits (see :func:`teacher_targets`).
    Batches go to the model's device; for a split too large to hold, see :func:`evaluate_stream`."""
    model.eval()
    place = Placement(module_device(model))
    loss, correct = 0.0, 0

    def one(start: int) -> tuple[float, float]:
        target = place.batch(targets[start : start + batch_size])
        per_image, hits = loss_hits(model(place.batch(images[start : start + batch_size])).float(), target)
        return per_image.sum().item(), hits.sum().item()
    with fast_inference([model], place.device, FAST_CPU_EVALUATION) as fast:  # on a CPU: the same figures, faster kernels
        for start in range(0, len(images), batch_size):
            batch_loss, batch_hits = fast.run(one, start)
            loss += batch_loss
            correct += batch_hits
    return loss / len(images), 100.0 * correct / len(images)


@torch.no_grad()
def evaluate_stream(models: dict[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], teacher: nn.Module,
                    place: Placement, limit: int | None = None) -> dict[str, dict[str, float]]:
    """Figures of each model over streamed batches, holding one batch at a time.

    Args:
        models: name -> network (the teacher may be one of them; it then runs once per batch).
        batches: ``(images, labels)`` batches (labels ``NO_LABEL`` where there are none).
        teacher: the reference for agreement, and the target where a batch has no labels.
        place: the compute device (models are expected there; batches are moved).
        limit: images to evaluate at most (None: all of them).

    Returns:
        Per model: ``loss`` and ``acc`` (cross-entropy and top-1 against labels; without
        labels, KL and top-1 agreement with the teacher), ``agreement`` (top-1 agreement with
        the teacher, percent), and ``images``; the counts are over the whole stream, never a
        concatenated split. A teacher whose outputs are not logits gives ``distance`` (the
        mean :func:`~lana.teacher.outputs.feature_distance` from its outputs), also as
        ``loss``, and ``acc`` and ``agreement`` None.
    """
    for model in (teacher, *models.values()):
        model.eval()
    sums = {name: torch.zeros(3, dtype=torch.float64) for name in models}  # loss, hits, agreement hits
    count, features = 0, False

    def one(x: torch.Tensor, labels: torch.Tensor) -> tuple[bool, dict[str, torch.Tensor]]:
        """One batch's sums per model, and whether the teacher's outputs are feature maps."""
        reference, out = teacher(x), {}
        if not is_logits(reference):  # feature maps: the distance from the teacher's outputs, no top-1
            for name, model in models.items():
                if model is not teacher:
                    out[name] = torch.stack([feature_distance(model(x), reference).sum().double().cpu(),
                                             *torch.zeros(2, dtype=torch.float64)])
            return True, out
        reference = reference.float()
        target = place.batch(labels) if bool((labels != NO_LABEL).all()) else reference
        for name, model in models.items():
            logits = reference if model is teacher else model(x).float()
            per_image, hits = loss_hits(logits, target)
            agree = logits.argmax(-1) == reference.argmax(-1)
            out[name] = torch.stack([per_image.sum(), hits.sum(), agree.sum()]).double().cpu()
        return False, out
    with fast_inference([teacher, *models.values()], place.device, FAST_CPU_EVALUATION) as fast:  # on a CPU: the same figures, faster
        for images, labels in batches:
            if limit is not None:
                images, labels = images[: limit - count], labels[: limit - count]
            if len(images) == 0:
                break
            x = place.batch(images)
            is_features, out = fast.run(one, x, labels)
            features = features or is_features
            for name, value in out.items():
                sums[name] += value
            count += len(images)
            if limit is not None and count >= limit:
                break
    if count == 0:
        raise DataError("evaluation got no images; pass a non-empty split")
    if features:
        return {name: {"loss": s[0].item() / count, "distance": s[0].item() / count, "acc": None, "agreement": None,
                       "images": count} for name, s in sums.items()}
    return {name: {"loss": s[0].item() / count, "acc": 100.0 * s[1].item() / count, "agreement": 100.0 * s[2].item() / count,
                   "images": count} for name, s in sums.items()}


def validation_order(data) -> list[int]:
    """The order the validation split is cut in: a seeded draw for a Dataset, so a split
    stored class by class (an ``ImageFolder``) is not scored on its first classes and chosen
    on its last; a user's DataLoader keeps its own stream's order (it cannot be indexed)."""
    n = num_images(data)
    if is_loader(data):
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED)).tolist()


def validation_counts(n: int, cfg: ScoreConfig) -> tuple[int, int]:
    """How many of ``n`` validation images score (``min(val_images, n - held)``) and how many
    make the choices (``min(val_images, held)``), where ``held = round(holdout * n)``."""
    if n < 2:
        raise DataError(f"the validation split has {n} image(s); lana needs at least 2 (scores and choices use disjoint images)")
    held = min(n - 1, max(1, round(cfg.holdout * n)))
    return min(cfg.val_images, n - held), min(cfg.val_images, held)


def split_validation(data, cfg: ScoreConfig):
    """The validation split in two disjoint parts: images to score on, and images to choose on.

    Swap-one scores come from the first part; whatever is chosen later by accuracy (which
    of the solver's top selections is kept, the fine-tuning figures) is measured on the
    second, so no choice rewards the scores' own noise.

    Args:
        data: the validation split (a Dataset, drawn in :func:`validation_order`; or a user's
            DataLoader: its stream in its own order, so the parts are disjoint where that
            order is fixed).
        cfg: ``score.holdout`` (share kept for choices) and ``score.val_images`` (most
            images in either part; see :func:`validation_counts`).

    Returns:
        (scoring images, choice images): the first and the last images of that order.
    """
    n = num_images(data)
    scored, chosen = validation_counts(n, cfg)
    if is_loader(data):
        return window(data, 0, scored), window(data, n - chosen, chosen)
    order = validation_order(data)
    return Subset(data, order[:scored]), Subset(data, order[n - chosen:])


def validation_tensors(splits: DataSplits, cfg: ScoreConfig, part: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one part of the validation split (0: scoring, 1: choices; see
    :func:`split_validation`), read batch by batch with the splits' ``batch_fn`` and workers."""
    return take_tensors(split_validation(splits.val, cfg)[part], None, cfg.batch_size, splits.batch_fn, splits.num_workers)


def choice_tensors(splits: DataSplits, cfg: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the choice part of the validation split (see :func:`split_validation`)."""
    return validation_tensors(splits, cfg, 1)

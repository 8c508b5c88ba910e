"""Swap-one scoring: each candidate alone replaces its block in the teacher.

LANA's accuracy estimate, assumed additive across blocks. The score the solver trusts by
default is ``-kl``: the mean KL divergence of the swapped network's outputs from the
teacher's (Puzzle's block score, and what the label-free mode measures). It is zero for
the keep-teacher candidate and never positive for any other: a candidate cannot look
better than the teacher's own block by noise, so the solver does not spend a budget's
slack on noise. The change of validation loss and of top-1 (against labels, or against
the teacher where the data has none: ``score_kind``) are recorded too and stay selectable
(``score.metric``).

The network before a block runs once per block and batch (:mod:`lana.distill.swap`
replays it); the candidates of a block then run side by side: the block is replaced by a
module that stacks their outputs along the batch axis, so the rest of the network sees all
of them at once. Models whose later layers reuse earlier activations (where stacking
cannot work) fall back to one candidate at a time.

The images scored on are disjoint from those the later choices are made on
(:func:`lana.distill.validation.split_validation`).

Labels are optional: without them the target of every candidate is the teacher's own
output, the loss is KL(teacher ‖ candidate) and the accuracy is top-1 agreement with the
teacher (``score_kind`` ``teacher_agreement`` instead of ``labels``).

A teacher whose output is not logits (feature maps: a tensor that is not ``(N, classes)``,
or a tuple, list or dict of tensors) is scored by :func:`score_by_features`: the mean
normalised distance of the swapped network's outputs from the teacher's
(:func:`lana.teacher.outputs.feature_distance`), labels ignored (``score_kind``
``feature_distance``; there is no accuracy).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from lana.device import Placement, module_device
from lana.distill.candidates import Candidate
from lana.distill.inference import fast_batch, fast_convs
from lana.distill.swap import Prefix, replayed
from lana.distill.validation import loss_hits, teacher_targets
from lana.errors import DataError
from lana.progress import bar as progress
from lana.teacher.blocks import get_submodule, set_submodule
from lana.teacher.outputs import feature_distance, flatten_outputs, is_logits

log = logging.getLogger("lana")


class _Stacked(nn.Module):
    """Runs several candidates on the same input and stacks their outputs on the batch axis."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches])


def score_column(table, metric: str):
    """The solver's score from a candidates table: ``-kl`` (default), ``-val_loss_delta`` or ``acc_delta``.

    A table written before ``kl`` was recorded has no such column: ask for another metric.
    """
    if metric == "kl" and "kl" not in table.columns:
        raise DataError("this candidates table has no 'kl' column (written by an older lana); "
                        "rerun `lana distill --force`, or set score.metric=loss")
    return {"kl": lambda: -table["kl"], "loss": lambda: -table["val_loss_delta"], "accuracy": lambda: table["acc_delta"]}[metric]()


class _ReplayMismatch(Exception):
    """The replayed prefix did not reproduce the teacher's outputs."""


class _FastFailed(Exception):
    """The model failed with the fast CPU kernels (e.g. a ``view`` of a channels_last tensor)."""


def _swapped_logits(teacher, block, modules, x, stack: bool) -> torch.Tensor:
    """Logits ``(k, n, classes)`` of the teacher with each of ``modules`` in ``block``."""
    original = get_submodule(teacher, block)
    try:
        if stack and len(modules) > 1:
            set_submodule(teacher, block, _Stacked(modules).eval())
            logits = teacher(x)
            if logits.shape[0] != len(modules) * len(x):
                raise RuntimeError("stacked outputs did not reach the logits")
            return logits.view(len(modules), len(x), -1)
        outputs = []
        for module in modules:
            set_submodule(teacher, block, module)
            outputs.append(teacher(x))
        return torch.stack(outputs)
    finally:
        set_submodule(teacher, block, original)


class _BlockScorer:
    """Sums of KL, loss and hits of every candidate of one block over the scoring images."""

    def __init__(self, teacher, images, targets, reference, batch_size, group_size) -> None:
        self.teacher, self.images, self.targets, self.reference = teacher, images, targets, reference
        self.batch_size, self.group_size = batch_size, group_size
        self.stack = True
        self.place = Placement(module_device(teacher))  # candidates and batches go where the teacher is
        self.fast = self.place.device.type == "cpu"  # exact faster CPU kernels (lana.distill.inference)
        self.prefix = Prefix(teacher, self.place.batch(images[:1]))

    @torch.no_grad()
    def __call__(self, block: str, cands: dict[str, Candidate], replay: bool) -> torch.Tensor:
        names = list(cands)
        for cand in cands.values():
            self.place.model(cand.module)
        try:
            while True:
                try:
                    with fast_convs([self.teacher, *(c.module for c in cands.values())] if self.fast else [], self.place.device):
                        return self._sums(block, cands, names, replay)
                except _FastFailed as exc:
                    log.info("score: the channels_last / 1x1 kernels failed (%s); scoring with the plain ones", exc.__cause__)
                    self.fast, self.stack = False, True
        finally:
            for cand in cands.values():
                self.place.offload(cand.module)

    def _logits(self, block: str, modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Stacked where the model allows it; one at a time after the first failure; a failure
        in one-at-a-time with the fast kernels turns those off (:class:`_FastFailed`)."""
        if self.stack:
            try:
                return _swapped_logits(self.teacher, block, modules, x, True)
            except RuntimeError as exc:
                log.info("score: stacking candidates failed (%s); scoring one at a time", exc)
                self.stack = False
        try:
            return _swapped_logits(self.teacher, block, modules, x, False)
        except RuntimeError as exc:
            if self.fast:
                raise _FastFailed from exc
            raise

    def _sums(self, block: str, cands: dict[str, Candidate], names: list[str], replay: bool) -> torch.Tensor:
        sums = torch.zeros(len(names), 3, dtype=torch.float64)  # kl, loss, hits
        for start in range(0, len(self.images), self.batch_size):
            end = start + self.batch_size
            x, target, reference = (self.place.batch(t[start:end]) for t in (self.images, self.targets, self.reference))
            x = fast_batch(x) if self.fast else x
            try:
                recorded = self.prefix.record(block, x) if replay else {}
            except RuntimeError as exc:
                if not self.fast:
                    raise
                raise _FastFailed from exc
            with replayed(self.teacher, recorded):
                for first in range(0, len(names), self.group_size):
                    group = names[first : first + self.group_size]
                    logits = self._logits(block, [cands[n].module.eval() for n in group], x)
                    if replay and "teacher" in group:
                        own = logits[group.index("teacher")]
                        if not torch.allclose(own, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()) + 1e-6):
                            raise _ReplayMismatch(block)
                    kl = loss_hits(logits, reference)[0].clamp_min(0)
                    loss, hits = loss_hits(logits, target)
                    rows = slice(first, first + len(group))
                    sums[rows, 0] += kl.sum(1).double().cpu()
                    sums[rows, 1] += loss.sum(1).double().cpu()
                    sums[rows, 2] += hits.sum(1).double().cpu()
        return sums / len(self.images)


def score_candidates(
    teacher: nn.Module,
    candidates: dict[str, dict[str, Candidate]],
    images: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int = 500,
    max_stack: int = 4096,
    plain: bool = False,
) -> tuple[dict[tuple[str, str], dict], dict]:
    """Score every candidate by swapping it alone into the teacher.

    Args:
        teacher: the teacher network (restored after every swap), on the compute device:
            each group of candidates moves there while it is scored, then back.
        candidates: candidates by block and op name.
        images, labels: the scoring images (disjoint from those later choices are made on:
            :func:`split_validation`); ``labels`` None measures loss and top-1 against the
            teacher's outputs (KL and top-1 agreement).
        batch_size: images per forward pass.
        max_stack: most candidate-images stacked into one forward pass.
        plain: the whole network for every group of candidates, with PyTorch's own kernels
            (no prefix replay, no :mod:`lana.distill.inference`): the reference the faster
            paths are checked and timed against (tests, ``benchmarks/score_rate.py``).

    Returns:
        Per (block, op) ``kl`` (mean KL divergence of the swapped network's outputs from
        the teacher's; 0 for keep-teacher, never negative), ``val_loss``, ``val_acc``,
        ``val_loss_delta`` and ``acc_delta`` (points); and the teacher's own
        ``{"val_loss", "val_acc", "score_kind", "score_images"}``.
    """
    teacher.eval()
    if not _gives_logits(teacher, images):
        return score_by_features(teacher, candidates, images, batch_size, max_stack)
    kind = "labels" if labels is not None else "teacher_agreement"
    reference = teacher_targets(teacher, images, batch_size)
    targets = labels if labels is not None else reference
    base = loss_hits(reference, targets)
    base_loss, base_acc = base[0].mean().item(), 100.0 * base[1].float().mean().item()
    scorer = _BlockScorer(teacher, images, targets, reference, batch_size, max(1, max_stack // batch_size))
    scorer.fast = scorer.fast and not plain
    replay = not plain
    results: dict[tuple[str, str], dict] = {}
    bar = progress(total=sum(len(c) for c in candidates.values()), desc="score", unit="cand")
    for block, cands in candidates.items():
        try:
            means = scorer(block, cands, replay)
        except _ReplayMismatch:
            log.info("score: replaying the network before %s changed the teacher's outputs; running it whole", block)
            replay = False
            means = scorer(block, cands, replay)
        for name, (kl, loss, hits) in zip(cands, means.tolist()):
            acc = 100.0 * hits
            if name == "teacher":  # by definition: keeping the block changes nothing
                kl, loss, acc = 0.0, base_loss, base_acc
            results[(block, name)] = {"kl": kl, "val_loss": loss, "val_acc": acc,
                                      "val_loss_delta": loss - base_loss, "acc_delta": acc - base_acc}
        bar.update(len(cands))
    bar.close()
    return results, {"val_loss": base_loss, "val_acc": base_acc, "score_kind": kind, "score_images": len(images)}


# -- teachers whose outputs are not logits -------------------------------------------------
@torch.no_grad()
def _gives_logits(teacher: nn.Module, images: torch.Tensor) -> bool:
    """Whether the teacher's output on one image is logits ``(N, classes)``."""
    return is_logits(teacher(Placement(module_device(teacher)).batch(images[:1])))


def _unstack(tensors: list[torch.Tensor], parts: int, n: int) -> list[list[torch.Tensor]]:
    """Split stacked output tensors into ``parts`` outputs of ``n`` images each; a tensor of
    ``n`` rows was computed before the swapped block, so it is the same for every part."""
    split = []
    for tensor in tensors:
        if tensor.shape[0] == parts * n:
            split.append(tensor.unflatten(0, (parts, n)))
        elif tensor.shape[0] == n:
            split.append(tensor.unsqueeze(0).expand(parts, *tensor.shape))
        else:
            raise RuntimeError("stacked outputs did not reach the outputs")
    return [[tensor[part] for tensor in split] for part in range(parts)]


@torch.no_grad()
def _feature_group(teacher: nn.Module, block: str, modules: list[nn.Module], images: torch.Tensor, batch_size: int,
                   stacked: bool) -> list[float]:
    """Mean feature distance from the teacher's outputs of each module swapped into ``block``.

    Stacked, the original block runs first in the stack, so its outputs (the reference) come
    from the same pass as the candidates'; otherwise each batch runs once with the original
    block and once per module.
    """
    original = get_submodule(teacher, block)
    place = Placement(module_device(teacher))
    for module in modules:
        place.model(module)
    totals = torch.zeros(len(modules), dtype=torch.float64)
    try:
        if stacked:
            set_submodule(teacher, block, _Stacked([original, *modules]).eval())
        for start in range(0, len(images), batch_size):
            x = place.batch(images[start : start + batch_size])
            if stacked:
                reference, *swapped = _unstack(flatten_outputs(teacher(x)), len(modules) + 1, len(x))
            else:
                set_submodule(teacher, block, original)
                reference, swapped = flatten_outputs(teacher(x)), []
                for module in modules:
                    set_submodule(teacher, block, module)
                    swapped.append(flatten_outputs(teacher(x)))
            for index, outputs in enumerate(swapped):
                totals[index] += feature_distance(outputs, reference).sum().double().cpu()
    finally:
        set_submodule(teacher, block, original)
        for module in modules:
            if module is not original:  # the teacher's own block stays where the teacher is
                place.offload(module)
    return (totals / len(images)).tolist()


def score_by_features(teacher: nn.Module, candidates: dict[str, dict[str, Candidate]], images: torch.Tensor,
                      batch_size: int = 500, max_stack: int = 4096) -> tuple[dict[tuple[str, str], dict], dict]:
    """Swap-one scores of a teacher whose outputs are feature maps, not logits.

    Each candidate's ``val_loss`` is the mean normalised distance of the swapped network's
    outputs from the teacher's (:func:`lana.teacher.outputs.feature_distance`); the teacher
    scores 0, so ``val_loss_delta`` is that distance, and the score is its negative. There is
    no accuracy (``val_acc`` and ``acc_delta`` are NaN).

    Args:
        teacher, candidates, images, batch_size, max_stack: as :func:`score_candidates`.

    Returns:
        As :func:`score_candidates`, with the teacher's ``score_kind`` ``feature_distance``.
    """
    teacher.eval()
    results: dict[tuple[str, str], dict] = {}
    bar = progress(total=sum(len(c) for c in candidates.values()), desc="score", unit="cand")
    stackable = True
    group_size = max(1, max_stack // batch_size - 1)  # the original block rides in the stack too
    for block, cands in candidates.items():
        names = list(cands)
        for first in range(0, len(names), group_size):
            group = names[first : first + group_size]
            modules = [cands[n].module.eval() for n in group]
            distances = None
            if stackable:
                try:
                    distances = _feature_group(teacher, block, modules, images, batch_size, stacked=True)
                except RuntimeError as exc:
                    log.info("score: stacking candidates failed (%s); scoring one at a time", exc)
                    stackable = False
            if distances is None:
                distances = _feature_group(teacher, block, modules, images, batch_size, stacked=False)
            for name, distance in zip(group, distances):
                distance = 0.0 if name == "teacher" else distance  # keeping the block changes nothing
                results[(block, name)] = {"kl": float("nan"), "val_loss": distance, "val_acc": float("nan"),
                                          "val_loss_delta": distance, "acc_delta": float("nan")}
            bar.update(len(group))
    bar.close()
    return results, {"val_loss": 0.0, "val_acc": None, "score_kind": "feature_distance", "score_images": len(images)}

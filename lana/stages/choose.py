"""The solver's top selections, assembled and compared on held-out images; the best is kept.

The ILP maximises a sum of swap-one scores, which ignores how blocks interact: two
replacements that each cost little alone can cost much together. So the ``solve.top_k``
best selections under the budget are assembled (distilled weights, before fine-tuning)
and measured on the choice images of the validation split, which no score was computed
on (:func:`lana.distill.validation.split_validation`); the one that keeps the teacher's
outputs best (``score.metric``: KL from the teacher's outputs, loss or top-1) is kept.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from lana.device import Placement, module_device, move_to
from lana.distill.candidates import assemble_student
from lana.distill.validation import choice_tensors, evaluate_stream, output_figures, teacher_targets
from lana.run.context import Context
from lana.selection import write_json_atomic
from lana.stages.solve import load_run, solve_run

log = logging.getLogger("lana")


@torch.no_grad()
def measure_selections(ctx: Context, alternatives: list[dict]) -> list[dict]:
    """KL from the teacher's outputs, loss and top-1 of each selection's assembled student
    on the choice images (``choice_kl``, ``choice_loss``, ``choice_acc``); for a teacher whose
    outputs are feature maps, the feature distance (as ``choice_kl`` and ``choice_loss``)."""
    images, labels = choice_tensors(ctx.splits, ctx.config.score)
    place = Placement.for_config(ctx.config)  # on the compute device; the teacher goes back where it was
    home = module_device(ctx.teacher)
    try:
        place.model(ctx.teacher)
        features = ctx.splits.num_classes == 0
        reference = None if features else teacher_targets(ctx.teacher, images)
        targets = labels if ctx.splits.labelled else reference
        figures = []
        for record in alternatives:
            student = place.model(assemble_student(ctx.teacher, ctx.specs, record["choice"], ctx.run.weights_dir).eval())
            if features:
                distance = evaluate_stream({"student": student}, [(images, labels)], ctx.teacher, place)["student"]["distance"]
                measured = {"kl": distance, "loss": distance, "acc": None}
            else:
                measured = output_figures(teacher_targets(student, images), reference, targets)
            figures.append({f"choice_{k}": v for k, v in measured.items()} | {"choice_images": len(images)})
    finally:
        move_to(ctx.teacher, home)
    return figures


def ranked(figures: list[dict], metric: str) -> list[int]:
    """Indices of the measured selections, best first by ``score.metric`` (ties: the solver's order)."""
    key = {"kl": lambda f: f["choice_kl"], "loss": lambda f: f["choice_loss"], "accuracy": lambda f: -f["choice_acc"]}[metric]
    return sorted(range(len(figures)), key=lambda i: (key(figures[i]), i))


def best_of(figures: list[dict], metric: str) -> int:
    """Index of the best measured selection by ``score.metric`` (ties: the solver's order)."""
    return ranked(figures, metric)[0]


def solve_and_choose(ctx: Context, budget: str | None, solver: str | None = None, time_limit: float | None = None,
                     max_params: str | None = None, max_macs: str | None = None) -> dict:
    """Solve for the ``solve.top_k`` best selections, compare them on held-out images, keep the best.

    Args:
        ctx: the prepared run (its folder holds the candidates table and latencies).
        budget, solver, time_limit, max_params, max_macs: as for
            :func:`lana.stages.solve.solve_run`.

    Returns:
        The kept selection's record (written to ``RUN/selection.json``), with ``top_k``: every
        compared selection's record and figures, and ``kept`` (its rank in the solver's order).
    """
    inputs = load_run(Path(ctx.run.path))
    k = ctx.config.solve.top_k
    record = solve_run(ctx.run, budget if budget is not None else ctx.config.solve.budget, solver or ctx.config.solve.solver,
                       time_limit, max_params, max_macs, top_k=k, inputs=inputs)
    alternatives = record.pop("top_k", None) or [dict(record)]
    figures = measure_selections(ctx, alternatives) if len(alternatives) > 1 else [{}]
    for alternative, measured in zip(alternatives, figures):
        alternative.update(measured)
    metric = "kl" if ctx.splits.num_classes == 0 else ctx.config.score.metric  # feature maps: the distance
    kept = best_of(figures, metric) if len(alternatives) > 1 else 0
    chosen = {**alternatives[kept], "kept": kept, "top_k": alternatives}
    if kept:
        log.info("solve: the solver's selection %d of %d keeps the teacher's outputs best on %d held-out images",
                 kept + 1, len(alternatives), figures[kept]["choice_images"])
    write_json_atomic(inputs.run_dir / "selection.json", chosen)
    return chosen

"""A teacher's output of any structure: a tensor, or a tuple, list or dict of tensors.

Backbones built with ``features_only=True``, detectors' backbones and segmentation
encoders return feature maps, not logits. This module flattens such an output into its
tensors (in a fixed order), records its structure so a student's output can be checked
against it and rebuilt, and gives the distance used to score candidates and fine-tune
students when there are no logits: the mean over output tensors of the squared error
normalised by the teacher tensor's energy (per sample), so every feature map weighs alike
whatever its scale or size.
"""
from __future__ import annotations

from typing import Any, Union

import torch

from lana.errors import TeacherOutputError

Structure = Union[str, tuple, dict]  # "tensor" | ("tuple"|"list", [children]) | {"dict": {key: child}}


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """The tensors of an output, depth first (dict entries in insertion order).

    Args:
        output: a tensor, or a tuple / list / dict nesting tensors.

    Returns:
        The tensors, in a fixed order.

    Raises:
        TeacherOutputError: something in the output is neither a tensor nor a container of them.
    """
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flatten_outputs(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in flatten_outputs(item)]
    raise TeacherOutputError(
        f"the teacher returned a {type(output).__name__}; lana handles a tensor, or a tuple, list or dict "
        f"of tensors; wrap the model so that its forward returns one of these"
    )


def output_structure(output: Any) -> Structure:
    """The shape of an output's nesting, without the tensors (JSON-able).

    Args:
        output: a tensor, or a tuple / list / dict nesting tensors.

    Returns:
        ``"tensor"``, ``["tuple" | "list", [children]]`` or ``{"dict": {key: child}}``.

    Raises:
        TeacherOutputError: as :func:`flatten_outputs`.
    """
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, (tuple, list)):
        return (type(output).__name__ if type(output) in (tuple, list) else "tuple", [output_structure(o) for o in output])
    if isinstance(output, dict):
        return {"dict": {str(k): output_structure(v) for k, v in output.items()}}
    flatten_outputs(output)  # raises the one-line error
    raise AssertionError("unreachable")


def rebuild_outputs(structure: Structure, tensors: list[torch.Tensor]) -> Any:
    """Put tensors back into a recorded structure (the inverse of :func:`flatten_outputs`).

    Args:
        structure: from :func:`output_structure`.
        tensors: as many tensors as the structure holds, in flattened order.

    Returns:
        The rebuilt output (tuples as tuples, lists as lists, dicts with the recorded keys).
    """
    remaining = list(tensors)

    def build(node: Structure) -> Any:
        if node == "tensor":
            return remaining.pop(0)
        if isinstance(node, dict):
            return {key: build(child) for key, child in node["dict"].items()}
        kind, children = node
        items = [build(child) for child in children]
        return tuple(items) if kind == "tuple" else items

    out = build(structure)
    if remaining:
        raise TeacherOutputError(f"{len(remaining)} tensors left over when rebuilding the output; the structure does not match")
    return out


def is_logits(output: Any) -> bool:
    """True when the output is one tensor of class scores ``(N, classes)``."""
    return isinstance(output, torch.Tensor) and output.dim() == 2


def classes_of(output: Any) -> int:
    """The number of classes of a teacher's output: its width for logits, 0 for anything else.

    Args:
        output: the teacher's output on a batch.

    Returns:
        ``output.shape[1]`` for logits ``(N, classes)``; 0 for feature maps (a tensor of
        another rank, or a tuple, list or dict of tensors), which lana scores and fine-tunes
        by :func:`feature_distance`.

    Raises:
        TeacherOutputError: the output holds something other than tensors.
    """
    flatten_outputs(output)  # anything but tensors is said here, in one line
    return output.shape[1] if is_logits(output) else 0


def check_same_structure(student: Any, teacher: Any) -> None:
    """Raise unless the student's output has the teacher's structure and tensor shapes.

    Args:
        student: the student's output on some batch.
        teacher: the teacher's output on the same batch.

    Raises:
        TeacherOutputError: the nesting or a tensor's shape differs (the message says where).
    """
    if output_structure(student) != output_structure(teacher):
        raise TeacherOutputError(
            f"the student's output structure {output_structure(student)} differs from the teacher's "
            f"{output_structure(teacher)}"
        )
    for index, (s, t) in enumerate(zip(flatten_outputs(student), flatten_outputs(teacher))):
        if s.shape != t.shape:
            raise TeacherOutputError(f"output tensor {index}: the student gives {tuple(s.shape)}, the teacher {tuple(t.shape)}")


def feature_distance(student: Any, teacher: Any, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample distance between two outputs of one structure, normalised per tensor.

    For each output tensor: ``sum((s - t)^2) / (sum(t^2) + eps)`` over everything but the
    batch dimension; the distance is the mean over the output's tensors. 0 means equal
    outputs; 1 is what an all-zero student output scores.

    Args:
        student: the student's output.
        teacher: the teacher's output (same structure and shapes).
        eps: guards tensors that are all zero.

    Returns:
        A tensor of shape ``(N,)``, differentiable in ``student``.

    Raises:
        TeacherOutputError: the structures or shapes differ.
    """
    check_same_structure(student, teacher)
    terms = []
    for s, t in zip(flatten_outputs(student), flatten_outputs(teacher)):
        s, t = s.float().flatten(1), t.detach().float().flatten(1)
        terms.append((s - t).square().sum(1) / (t.square().sum(1) + eps))
    return torch.stack(terms).mean(0)

"""Teachers whose output is not logits: flatten, rebuild, compare and measure the distance
between outputs of any structure (a features_only backbone's list of maps, tuples, dicts)."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

from lana.errors import TeacherOutputError
from lana.teacher.blocks import discover_blocks, set_submodule
from lana.teacher.outputs import (
    check_same_structure,
    feature_distance,
    flatten_outputs,
    is_logits,
    output_structure,
    rebuild_outputs,
)


def _nested(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {"p3": r(2, 4, 8, 8), "rest": (r(2, 8, 4, 4), [r(2, 16, 2, 2)]), "cls": r(2, 10)}


def test_flatten_and_rebuild_round_trip():
    out = _nested()
    tensors = flatten_outputs(out)
    assert [t.shape[1] for t in tensors] == [4, 8, 16, 10]
    rebuilt = rebuild_outputs(output_structure(out), tensors)
    assert isinstance(rebuilt["rest"], tuple) and isinstance(rebuilt["rest"][1], list)
    assert all(a is b for a, b in zip(flatten_outputs(rebuilt), tensors))
    assert output_structure(torch.zeros(1)) == "tensor"
    assert is_logits(torch.zeros(2, 10)) and not is_logits(out) and not is_logits(torch.zeros(2, 3, 4, 4))


def test_distance_is_normalised_per_tensor():
    teacher = _nested()
    assert torch.equal(feature_distance(teacher, teacher), torch.zeros(2))
    zeros = rebuild_outputs(output_structure(teacher), [torch.zeros_like(t) for t in flatten_outputs(teacher)])
    torch.testing.assert_close(feature_distance(zeros, teacher), torch.ones(2))
    # scaling every map (and the student with it) leaves the distance unchanged
    student = _nested(1)
    scale = lambda o, k: rebuild_outputs(output_structure(o), [t * k for t in flatten_outputs(o)])  # noqa: E731
    torch.testing.assert_close(feature_distance(scale(student, 100.0), scale(teacher, 100.0)), feature_distance(student, teacher))
    leaf = flatten_outputs(student)[0].requires_grad_(True)
    feature_distance(rebuild_outputs(output_structure(student), [leaf, *flatten_outputs(student)[1:]]), teacher).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_structure_mismatch_and_bad_outputs_are_one_line_errors():
    teacher = _nested()
    with pytest.raises(TeacherOutputError, match="structure"):
        check_same_structure([t for t in flatten_outputs(teacher)], teacher)
    wrong = copy.copy(teacher)
    wrong["cls"] = torch.zeros(2, 11)
    with pytest.raises(TeacherOutputError, match=r"output tensor 3: the student gives \(2, 11\), the teacher \(2, 10\)"):
        feature_distance(wrong, teacher)
    with pytest.raises(TeacherOutputError) as exc:
        flatten_outputs({"boxes": "not a tensor"})
    assert "str" in str(exc.value) and "\n" not in str(exc.value)


def test_features_only_student_keeps_the_teachers_structure():
    """Blocks of a features_only backbone swapped as lana swaps them: the student returns the
    same list of maps, and a skipped block shows as a positive distance."""
    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", features_only=True, pretrained=False, out_indices=(1, 2, 3, 4)).eval()
    for m in teacher.modules():  # timm zero-initialises each block's last BN: undo it, or blocks start as identities
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    specs = discover_blocks(teacher, (1, 3, 32, 32))
    student = copy.deepcopy(teacher)
    same = [s for s in specs if s.same_shape]
    set_submodule(student, same[0].name, torch.nn.Identity())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_out, s_out = teacher(x), student(x)
    assert isinstance(t_out, list) and len(t_out) == 4
    check_same_structure(s_out, t_out)
    assert (feature_distance(s_out, t_out) > 0).all() and feature_distance(t_out, t_out).max() == 0

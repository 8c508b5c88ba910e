"""A stopped fine-tune resumes where it stopped (no lost work): after a crash, from its last
saved state; after Ctrl-C, from the step it stopped at; either way to the same weights as a
run that was never stopped (lana's loader replays the epoch's order)."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import tiny_config

from lana.data import load_data
from lana.distill.train import Resumable, fit, label_loss
from lana.run.folder import load_tensors, save_tensors
from lana.teacher.demo_net import demo_resnet


def _model():
    torch.manual_seed(0)
    return demo_resnet(widths=[4, 8], depth=1)


def _stopping(at: int, how: str):
    """label_loss that crashes (or is sent SIGINT) on its ``at``-th training step (a 2-image
    channels_last probe, where there is one, does not count)."""
    calls = {"n": 0}

    def loss(model, images, labels):
        calls["n"] += len(images) > 2
        if calls["n"] == at:
            if how == "crash":
                raise RuntimeError("the machine went away")
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: this step ends, the state is saved
        return label_loss(model, images, labels)
    return loss


@pytest.mark.parametrize("how, at", [("crash", 6), ("crash", 17), ("sigint", 9), ("sigint", 15)])
def test_a_stopped_fit_resumes_to_the_same_weights(tmp_path, one_thread, how, at):
    splits = load_data(tiny_config().data)
    epochs = 1.5  # the stop falls inside the first epoch or the second
    reference = _model()
    fit(reference, splits, label_loss, epochs, 1e-2, 0.0, 32, 0, "whole")

    resume = Resumable(tmp_path / "state.pt", key="work", every_s=0.0)  # saved after every step
    save_tensors(resume.path, {"format": 1, "key": "other work"})  # another training's state: ignored, replaced
    with pytest.raises(RuntimeError if how == "crash" else KeyboardInterrupt):
        fit(_model(), splits, _stopping(at, how), epochs, 1e-2, 0.0, 32, 0, "stopped", resume=resume)
    state = load_tensors(resume.path)
    assert state["key"] == "work" and 0 < state["step"] < state["steps"]
    assert state["step"] == (at - 1 if how == "crash" else at)  # a crash loses its step; Ctrl-C lets it end

    torch.manual_seed(123)  # the resumed run restores the saved RNG state: what is set here does not matter
    resumed = demo_resnet(widths=[4, 8], depth=1)  # other initial weights: the saved ones are loaded
    fit(resumed, splits, label_loss, epochs, 1e-2, 0.0, 32, 0, "resumed", resume=resume)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_finetune_stage_leaves_no_state_and_a_rerun_starts_over(tmp_path, one_thread):
    from lana.run.context import prepare
    from lana.run.folder import RunFolder
    from lana.stages.finetune import FINETUNE_STATE, finetune_stage

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    config = tiny_config(ops={"include": ["conv_k1"]}, finetune={"epochs": 0.3, "checkpoint_every_s": 0.0})
    from lana.stages.distill import distill_stage

    distill_stage(config, run)
    ctx = prepare(config, run)
    block = ctx.specs[0].name
    first = finetune_stage(ctx, {"choice": {block: "conv_k1"}})
    assert not run.file(FINETUNE_STATE).exists() and run.file("student.pt").is_file()
    again = finetune_stage(ctx, {"choice": {block: "conv_k1"}})
    assert again["train_loss"] == pytest.approx(first["train_loss"])  # the same work from the start, not resumed at its end

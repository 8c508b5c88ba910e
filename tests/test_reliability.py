"""Issue #5: distillation resumes exactly, fits memory, and bad input gets one line with the run folder intact."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_main
from torch import nn

from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.distill.checkpoint import STATE_FILE, STATE_FORMAT
from lana.distill.core import FAULT_ENV, _Distiller, distill_candidates
from lana.distill.distributed import parse_bytes, plan_groups
from lana.errors import ConfigError, RunFolderError
from lana.latency.checkpoint import LATENCY_FAULT_ENV, PARTIAL_FILE
from lana.run.folder import RunFolder, load_tensors
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher


# -- helpers -------------------------------------------------------------------------------
def _cli(args: list, **env) -> subprocess.CompletedProcess:
    """``python -m lana ARGS`` in a fresh process (what a user runs)."""
    environ = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, LATENCY_FAULT_ENV)}
    return subprocess.run([sys.executable, "-m", "lana", *map(str, args)], capture_output=True, text=True,
                          env={**environ, **env}, timeout=300)


def _one_line_error(err: str) -> str:
    """The error line (progress bars may come before it) after checking it is the only one."""
    assert err.count("lana: error: ") == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lana: error: "), err
    return line


def _snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file in a run folder but its log."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


def _distilled(folder: Path) -> dict:
    return {(r["block"], r["candidate"]): r for r in json.loads((folder / "distill.json").read_text())}


def _same_table(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    """Same rows, statuses, distillation losses and scores (latency columns are timings: not compared)."""
    keys = ["block", "candidate", "status"]
    assert got[keys].reset_index(drop=True).equals(expected[keys].reset_index(drop=True))
    np.testing.assert_allclose(got["distill_loss"], expected["distill_loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-4, atol=1e-6)


def _fresh(config):
    """Teacher, blocks, candidates (seeded as distill_stage seeds them) and data."""
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape), config.teacher.blocks)
    return teacher, specs, build_all_candidates(specs, config.ops, seed=config.seed), splits


def _with(config, **distill):
    return config.model_copy(update={"distill": config.distill.model_copy(update=distill)})


def _assert_same_losses(expected: dict, got: dict, skip=()) -> None:
    for key, row in expected.items():
        if key[1] in skip:
            continue
        assert got[key]["status"] == row["status"], key
        assert got[key]["distill_loss"] == pytest.approx(row["distill_loss"], rel=1e-5, abs=1e-7), key


# -- 1. resumable --------------------------------------------------------------------------
def test_killed_at_random_steps_resumes_to_the_same_table(trained_run, tmp_path):
    """SIGKILL twice at random steps (inside and across memory groups), rerun: the same table."""
    run, _config, table = trained_run
    folder = tmp_path / "killed"
    folder.mkdir()
    shutil.copy(run.file("latency.json"), folder)  # timings are not compared; reuse them
    args = ["distill", "--config", run.file("config.yaml"), "--run", folder, "--max-memory", "+6MB", "--set", "distill.checkpoint_every=5"]
    total = 3 * 12  # three memory groups of 12 steps
    rng = random.Random(15)  # seeded: a failure names kill points that reproduce
    first = rng.randint(1, total - 2)
    second = rng.randint(max(first + 1, 6), total - 1)  # after the first checkpoint
    for kill_at in (first, second):
        done = _cli(args, **{FAULT_ENV: str(kill_at)})
        assert done.returncode == -signal.SIGKILL, (kill_at, done.stderr[-2000:])
        assert not (folder / "distill.json").exists()
        if kill_at >= 5:
            assert load_tensors(folder / STATE_FILE)["format"] == STATE_FORMAT  # whole, never half-written
    done = _cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming group" in (folder / "logs" / "lana.log").read_text()
    _same_table(table, RunFolder(folder).load_table())
    assert not (folder / STATE_FILE).exists() and not (folder / "distill_groups").exists(), "state is cleared once distill.json exists"


@pytest.mark.parametrize("phase", ["isolated", "context"])
def test_killed_while_timing_resumes_from_the_saved_timings(trained_run, tmp_path, phase):
    """SIGKILL right after the first block (alone) or group (in context) is saved; the rerun keeps them."""
    run, _config, table = trained_run
    folder = tmp_path / phase
    shutil.copytree(run.path, folder, ignore=shutil.ignore_patterns("latency.json", "candidates.*", "logs"))
    args = ["distill", "--config", run.file("config.yaml"), "--run", folder]
    done = _cli(args, **{LATENCY_FAULT_ENV: f"{phase}:1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (folder / "latency.json").exists()
    saved = json.loads((folder / PARTIAL_FILE).read_text())  # whole, never half-written
    assert len(saved[phase]) == 1 and (phase == "context" or not saved["context"])
    done = _cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "latency: resuming from latency_partial.json" in (folder / "logs" / "lana.log").read_text()
    assert not (folder / PARTIAL_FILE).exists(), "the checkpoint is cleared once latency.json holds the profile"
    latency = json.loads((folder / "latency.json").read_text())
    rows = {(r["block"], r["candidate"]): r for r in latency["candidates"]}
    block, timed = next(iter(saved["isolated"].items()))
    for name, timing in timed.items():  # kept verbatim, not re-timed
        assert rows[(block, name)]["isolated_ms"] == timing["median_ms"]
    if phase == "context":
        assert latency["reference_groups_ms"][0] == saved["context"]["0"]["reference_ms"]
        assert latency["teacher_latency_ms"] == saved["context"]["0"]["whole"]["median_ms"]
    resumed = RunFolder(folder).load_table()
    _same_table(table, resumed)
    # the resumed profile still adds up across the two processes: its prediction of the teacher is
    # the clocked teacher of the first window (each later window is scaled to that one's speed);
    # the deployed, unclocked teacher differs from it by the clocks' overhead, which is not resuming's
    teacher_rows = resumed[resumed["candidate"] == "teacher"]
    predicted = latency["fixed_latency_ms"] + teacher_rows["latency_ms"].sum()
    assert predicted == pytest.approx(latency["clocked_teacher_ms"], rel=0.25)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_after_saving_and_resumes_exactly(trained_run, tmp_path, monkeypatch, capsys, signum):
    run, config, _ = trained_run
    original = _Distiller._step

    def step(self, members, blocks, feats, index, *rest):
        if index == 4:
            os.kill(os.getpid(), signum)  # handled at the next step boundary
        return original(self, members, blocks, feats, index, *rest)

    monkeypatch.setattr(_Distiller, "_step", step)
    folder = RunFolder(tmp_path / "interrupted")
    code, err = run_main(["distill", "--config", run.file("config.yaml"), "--run", folder.path], monkeypatch, capsys)
    assert code == 130 and err.strip().splitlines()[-1] == "lana: interrupted; progress so far is saved in the run folder"
    assert load_tensors(folder.file(STATE_FILE))["step"] == 5
    monkeypatch.setattr(_Distiller, "_step", original)
    teacher, specs, cands, splits = _fresh(config)  # as a new process: everything from the run folder
    _assert_same_losses(_distilled(run.path), distill_candidates(teacher, specs, cands, splits, config, folder))


def test_state_from_other_distill_settings_is_refused(trained_run, tmp_path, monkeypatch):
    _, config, _ = trained_run
    folder = RunFolder(tmp_path / "other")
    original = _Distiller._step

    def step(self, members, blocks, feats, index, *rest):
        if index == 2:
            raise KeyboardInterrupt  # a hard stop: the checkpoint of step 2 stays
        return original(self, members, blocks, feats, index, *rest)

    monkeypatch.setattr(_Distiller, "_step", step)
    with pytest.raises(KeyboardInterrupt):
        distill_candidates(*_fresh(config), _with(config, checkpoint_every=2), folder)
    monkeypatch.setattr(_Distiller, "_step", original)
    with pytest.raises(RunFolderError, match="other distill settings.*--force"):
        distill_candidates(*_fresh(config), _with(config, lr=1e-2), folder)
    assert load_tensors(folder.file(STATE_FILE))["step"] == 2


# -- 3. memory-bounded ---------------------------------------------------------------------
def test_memory_groups_and_feature_cache_change_no_result(trained_run, tmp_path):
    run, config, _ = trained_run
    profile: dict = {}
    got = distill_candidates(*_fresh(config), _with(config, max_memory="+8MB"), RunFolder(tmp_path / "groups"), profile=profile)
    _assert_same_losses(_distilled(run.path), got)
    # three groups; the last one's block was kept from the group before, so it needs no teacher pass
    assert (profile["groups"], profile["teacher_passes"], profile["cached_steps"]) == (3, 24, 12)
    profile = {}
    distill_candidates(*_fresh(config), _with(config, max_memory="+8MB", feature_cache="none", max_steps=2), RunFolder(tmp_path / "none"),
                       profile=profile)
    assert (profile["groups"], profile["teacher_passes"], profile["cached_steps"]) == (3, 6, 0)


def test_memory_limit_below_the_teacher_is_one_line(trained_run):
    _, config, _ = trained_run
    teacher, specs, cands, splits = _fresh(config)
    with pytest.raises(ConfigError, match="raise --max-memory or lower distill.batch_size"):
        plan_groups(teacher, specs, cands, 32, parse_bytes("10KB"), splits.input_shape)
    groups, _ = plan_groups(teacher, specs, cands, 32, parse_bytes("1GB"), splits.input_shape)
    assert len(groups) == 1
    with pytest.raises(ConfigError, match="not understood"):
        parse_bytes("lots")


def test_a_group_needs_its_parameters_and_its_largest_blocks_activations_only():
    """A step trains one block's candidates, forward and backward, before the next block's: the
    planner counts every parameter of the group but only one block's activations (with margin)."""
    from types import SimpleNamespace

    from lana.distill.distributed import BLOCK_MARGIN, FLOAT, leaf_outputs

    teacher = nn.Sequential(nn.Conv2d(1, 1, 1))
    specs = [SimpleNamespace(name=b, in_shape=(1, 4, 4), in_channels=1, in_size=(4, 4), out_channels=1, out_size=(4, 4))
             for b in "abc"]
    acts, params = 10_000, 1_000
    cands = {b: {op: SimpleNamespace(params=params, activations=acts) for op in ("x", "y")} for b in "abc"}
    groups, estimate = plan_groups(teacher, specs, cands, 1, 2**40, (1, 4, 4))
    block_peak = BLOCK_MARGIN * 2 * FLOAT * 2 * acts  # two candidates of one block, twice their activations, with margin
    fixed = FLOAT * (2 + 3 * max(leaf_outputs(teacher, (1, 4, 4))) + 3 * 2 * 16)  # the teacher, its activations, the features
    assert len(groups) == 1 and estimate == fixed + 6 * 16 * params + block_peak  # not 3 blocks' activations
    assert len(plan_groups(teacher, specs, cands, 1, estimate, (1, 4, 4))[0]) == 1  # three blocks' activations not summed
    assert len(plan_groups(teacher, specs, cands, 1, estimate - 1, (1, 4, 4))[0]) == 2


# -- 5. bad input --------------------------------------------------------------------------
class _Explodes(nn.Module):
    """A candidate whose output turns NaN (or infinite) after some calls."""

    def __init__(self, inner: nn.Module, after: int, value: float) -> None:
        super().__init__()
        self.inner, self.after, self.value, self.calls = inner, after, value, 0

    def forward(self, x):
        self.calls += self.training  # training steps only (memory planning runs it once in eval mode)
        y = self.inner(x)
        return y + self.value if self.calls > self.after else y


def test_nan_and_inf_candidates_are_dropped_and_the_run_goes_on(trained_run, tmp_path):
    run, config, _ = trained_run
    teacher, specs, cands, splits = _fresh(config)
    cands["layers.0"]["conv_k3"].module = _Explodes(cands["layers.0"]["conv_k3"].module, 4, float("nan"))
    cands["layers.1"]["conv_k1"].module = _Explodes(cands["layers.1"]["conv_k1"].module, 6, float("inf"))
    got = distill_candidates(teacher, specs, cands, splits, config, RunFolder(tmp_path / "nan"))
    assert got[("layers.0", "conv_k3")]["status"] == "dropped: loss nan at step 4"
    assert got[("layers.1", "conv_k1")]["status"] == "dropped: loss inf at step 6"
    _assert_same_losses(_distilled(run.path), got, skip=("conv_k3", "conv_k1"))


def test_disk_full_keeps_the_previous_checkpoint(trained_run, tmp_path, monkeypatch, capsys):
    run, _, _ = trained_run
    folder = tmp_path / "full"
    state = folder / STATE_FILE
    real_fsync = os.fsync

    def fsync(fd):
        if state.is_file():  # the disk fills up after the first checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, err = run_main(["distill", "--config", run.file("config.yaml"), "--run", folder, "--set", "distill.checkpoint_every=3"],
                      monkeypatch, capsys)
    assert code == 2 and _one_line_error(err).startswith("lana: error: no space left on the disk")
    assert load_tensors(state)["step"] == 3
    assert not list(folder.glob(".*.tmp")), "no temp file is left behind"


def _other_arch_checkpoint(tmp: Path, run: RunFolder) -> str:
    from lana.teacher.demo_net import demo_resnet

    torch.save(demo_resnet(widths=[4, 8], depth=1).state_dict(), tmp / "small.pt")
    return str(tmp / "small.pt")


def _other_teacher(tmp: Path, run: RunFolder) -> str:
    weights = torch.load(run.load_config().teacher.checkpoint, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, tmp / "other.pt")
    return str(tmp / "other.pt")


def _empty_images(tmp: Path, run: RunFolder) -> str:
    for split in ("train", "val"):
        (tmp / "empty" / split / "cls").mkdir(parents=True)
    return str(tmp / "empty")


def _bad_idx(tmp: Path, run: RunFolder) -> str:
    folder = tmp / "idx"
    folder.mkdir()
    for name, shape in (("train-images-idx3-ubyte", (50, 28)), ("train-labels-idx1-ubyte", (50,)),
                        ("t10k-images-idx3-ubyte", (10, 28)), ("t10k-labels-idx1-ubyte", (10,))):
        header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
        (folder / name).write_bytes(header + bytes(int(np.prod(shape))))
    return str(folder)


def _corrupt(*names: str, remove: str | None = None):
    def setup(tmp: Path, run: RunFolder) -> str:
        for name in names:
            run.file(name).write_bytes(b"not what it should be")
        if remove:
            run.file(remove).unlink()
        return ""

    return setup


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")


def _case(case: str, command: str, message: str, code: int = 2, setup=None, marks=()):
    """One bad input: the command (@RUN = a copy of the tiny run, @X = what setup returns), its message and exit code."""
    return pytest.param(command, message, code, setup, id=case, marks=marks)


BAD_INPUTS = [
    _case("unknown-model", "distill --run @RUN --set teacher.model=timm:resnet_nope", "unknown timm model 'resnet_nope'"),
    _case("unknown-op", "distill --run @RUN --set ops.include=[mbconv_k9_nope]", "matches no op"),
    _case("unknown-solver", "solve --run @RUN --solver nope", "unknown solver 'nope'"),
    _case("checkpoint-misfit", "distill --run @RUN --set teacher.checkpoint=@X", "does not fit", setup=_other_arch_checkpoint),
    _case("no-checkpoint", "distill --run @RUN --set teacher.checkpoint=null", "has no checkpoint"),
    _case("block-not-found", "distill --run @RUN --set teacher.blocks=[nope]", "teacher.blocks"),
    _case("no-blocks", "distill --run @RUN --set teacher.model=torch.nn:Identity --set teacher.kwargs={} --set teacher.checkpoint=random",
          "no replaceable blocks"),
    _case("budget-unparseable", "solve --run @RUN --budget fast", "budget 'fast'"),
    _case("budget-infeasible", "solve --run @RUN --budget 0.0001ms", "fastest reachable", code=3),
    _case("data-missing", "distill --run @RUN --set data.kind=fashion_mnist --set data.root=@X/nowhere", "not found",
          setup=lambda t, r: str(t)),
    _case("data-empty", "distill --run @RUN --set data.kind=imagefolder --set data.root=@X", "no valid file", setup=_empty_images),
    _case("data-wrong-shape", "distill --run @RUN --set data.kind=fashion_mnist --set data.root=@X", "unexpected shapes", setup=_bad_idx),
    _case("data-misfits-teacher", "distill --run @RUN --set data.channels=3", "in_chans"),
    _case("cuda-latency", "distill --run @RUN --set latency.device=cuda", "CUDA is not available", marks=NO_CUDA),
    _case("cuda-distill", "distill --run @RUN --set distill.device=cuda", "set distill.device", marks=NO_CUDA),
    _case("another-config", "distill --run @RUN --set seed=1", "made from another config"),
    _case("another-teacher", "distill --run @RUN --set teacher.checkpoint=@X", "made from another teacher", setup=_other_teacher),
    _case("corrupted-table", "show --run @RUN", "candidates.parquet is corrupted", setup=_corrupt("candidates.parquet")),
    _case("corrupted-weights", "distill --run @RUN", "--force", setup=_corrupt("weights/layers.0/conv_k1.pt")),
    _case("corrupted-state", "distill --run @RUN", "distill_state.pt is corrupted", setup=_corrupt(STATE_FILE, remove="distill.json")),
    _case("memory-unparseable", "distill --run @RUN --max-memory lots", "distill.max_memory 'lots'"),
]


@pytest.mark.parametrize("command, message, code, setup", BAD_INPUTS)
def test_bad_input_is_one_line_and_the_run_folder_is_intact(trained_run, tmp_path, monkeypatch, capsys, command, message, code, setup):
    run, _, _ = trained_run
    copy = RunFolder(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    extra = setup(tmp_path, copy) if setup else ""
    before = _snapshot(copy.path)
    got, err = run_main([part.replace("@RUN", str(copy.path)).replace("@X", extra) for part in command.split()], monkeypatch, capsys)
    assert got == code and message in _one_line_error(err), err
    assert _snapshot(copy.path) == before, "the run folder changed"


def test_bad_input_on_a_new_run_folder_creates_nothing(trained_run, tmp_path, monkeypatch, capsys):
    run, _, _ = trained_run
    for extra in (["--set", "teacher.model=timm:resnet_nope"], ["--set", "ops.include=[nope_op]"], ["--set", "latency.device=tpu"],
                  ["--set", "teacher.checkpoint=null"]):
        code, err = run_main(["distill", "--config", run.file("config.yaml"), "--run", tmp_path / "new", *extra], monkeypatch, capsys)
        assert code == 2 and _one_line_error(err)
        assert not (tmp_path / "new").exists()

"""Data-parallel distillation: two gloo processes under torchrun match one process; its pieces."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lana.distill.checkpoint import STATE_FILE
from lana.distill.core import FAULT_ENV
from lana.distill.distributed import (
    Dist,
    GlobalBatches,
    _global_bn_forward,
    parse_bytes,
)
from lana.run.folder import RunFolder


def test_two_gloo_processes_match_one_process(trained_run, tmp_path):
    """`torchrun --nproc_per_node=2 -m lana -- distill ...` on CPU: the table of the one-process run."""
    run, _, table = trained_run
    folder = tmp_path / "ddp"
    folder.mkdir()
    shutil.copy(run.file("latency.json"), folder)  # timings are not compared; reuse them
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lana", "--", "distill", "--config", str(run.file("config.yaml")), "--run", str(folder)]
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("candidates over 2 blocks") == 1, done.stdout  # rank 0 alone reports
    got = RunFolder(folder).load_table()
    keys = ["block", "candidate", "status"]
    assert got[keys].equals(table[keys])
    np.testing.assert_allclose(got["distill_loss"], table["distill_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["score"], table["score"], rtol=1e-3, atol=1e-5)
    assert not (folder / STATE_FILE).exists() and not list(folder.glob(".*.tmp"))


def test_ranks_split_every_global_batch_in_the_same_order():
    data = torch.utils.data.TensorDataset(torch.arange(50).float().view(50, 1), torch.zeros(50))
    one = GlobalBatches(data, 16, seed=3, dist=Dist(), workers=0)
    ranks = [GlobalBatches(data, 16, seed=3, dist=Dist(rank, 3), workers=0) for rank in range(3)]
    for step in range(9):  # across epoch boundaries (4 batches per epoch, the last one short)
        whole, size = one.indices(step)
        parts = [r.indices(step) for r in ranks]
        assert torch.equal(torch.cat([p for p, _ in parts]), whole) and all(s == size == len(whole) for _, s in parts)
    images = next(ranks[1].images(range(5, 6)))
    assert torch.equal(images.view(-1), ranks[1].indices(5)[0].float())


def test_global_batchnorm_is_batchnorm_on_one_process():
    torch.manual_seed(0)
    reference, synced = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2)
        reference.bias.uniform_(-1, 1)
    synced.load_state_dict(reference.state_dict())
    x = torch.randn(6, 3, 5, 5) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(6, 3, 5, 5)
    out_a, out_b = reference(xa), _global_bn_forward(synced, Dist())(xb)
    (out_a * upstream).sum().backward()
    (out_b * upstream).sum().backward()
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced.bias.grad, reference.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(synced, name), getattr(reference, name))


@pytest.mark.parametrize("text, size", [("8GB", 8 * 2**30), ("512MiB", 512 * 2**20), ("1.5k", 1536), ("100", 100)])
def test_memory_sizes(text, size):
    assert parse_bytes(text) == size

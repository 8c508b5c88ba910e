"""Peak memory of evaluating a large, lazily generated test split: streamed vs concatenated.

    .venv/bin/python -m benchmarks.eval_memory             # both modes, each in its own process

10 000 images of 3×64×64 (491 MB as one float32 tensor) made on demand by a Dataset, read
through a DataLoader of batch 500, and evaluated by a tiny network: ``stream`` is what the
fine-tune and export stages do now (:func:`lana.distill.validation.evaluate_stream`), ``concat``
what export did before (the whole split as one tensor, then :func:`evaluate`). Prints the
process's peak RSS (the same imports either way) and the evaluation's wall seconds.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lana.data import iterate, take_tensors
from lana.device import Placement
from lana.distill.validation import evaluate, evaluate_stream


class LazyImages(Dataset):
    """Images generated when read: nothing is held until a batch is asked for."""

    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, index: int):
        return torch.rand(3, 64, 64), index % 10


def measure(mode: str) -> None:
    """Evaluate once in ``mode`` (``stream`` or ``concat``) and print the process's peak RSS."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10)).eval()
    loader = DataLoader(LazyImages(), batch_size=500)
    tick = time.time()
    if mode == "stream":
        evaluate_stream({"model": model}, iterate(loader, 500), model, Placement())
    else:
        evaluate(model, *take_tensors(loader))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{mode}: peak RSS of the process {peak / 1024:.0f} MiB, {time.time() - tick:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1])
    else:
        for mode in ("stream", "concat"):
            subprocess.run([sys.executable, __file__, mode], check=True)

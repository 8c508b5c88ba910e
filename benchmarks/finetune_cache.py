"""Fine-tuning with the teacher's logits computed once vs running the teacher every step.

    .venv/bin/python -m benchmarks.finetune_cache            # 1 thread, 3 repeats

The quality benchmark's CPU-mode ResNet-18-D teacher (half width, Fashion-MNIST 28×28,
10 000 training images, batch 128) and a ×0.5-width student: one fine-tune epoch each
way, alternated, median wall seconds over the repeats. Weights are untrained: speed does
not depend on them. Prints the one-off cost of computing the logits too.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import quality  # benchmarks/quality.py, beside this script: the benchmark's teacher and data settings
import torch

from benchmarks.baselines import width_scaled
from lana.data import load_data
from lana.distill.train import TeacherLogits, distil_into
from lana.teacher.load import build_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's location)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = quality.teacher_config("cpu", "resnet", Path("/nonexistent"), args.data, [])
    splits = load_data(config.data)
    torch.manual_seed(0)
    teacher = build_model(config.teacher.model, config.teacher.kwargs).eval()
    student = width_scaled(config.teacher.model, config.teacher.kwargs, 0.5)
    batch = config.data.batch_size
    tick = time.perf_counter()
    targets = TeacherLogits(teacher, splits.train, batch)
    logits_s = time.perf_counter() - tick
    times: dict[str, list[float]] = {"per step": [], "cached": []}
    for _ in range(args.repeats):
        for name, shared in (("per step", None), ("cached", targets)):
            model = copy.deepcopy(student)
            tick = time.perf_counter()
            distil_into(model, teacher, splits, config.finetune, batch, 0, desc=name, epochs=1, targets=shared)
            times[name].append(time.perf_counter() - tick)
    plain, cached = (statistics.median(times[k]) for k in ("per step", "cached"))
    print(f"{len(splits.train)} images, batch {batch}, {args.threads} thread(s), median of {args.repeats}")
    print(f"teacher logits once: {logits_s:.1f} s")
    print(f"one epoch, teacher per step: {plain:.1f} s; logits cached: {cached:.1f} s; ratio {plain / cached:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation on a CPU: plain kernels against lana's (channels_last weights, 1x1-map shortcut).

    OMP_NUM_THREADS=1 python -m benchmarks.eval_rate            # the quality benchmark's CPU-mode teachers
    OMP_NUM_THREADS=1 python -m benchmarks.eval_rate --images 2000 --rounds 5

:func:`lana.distill.validation.evaluate` (and ``evaluate_stream``, and the quality benchmark's
teacher training) run a network's batches with its 4-D weights channels_last and convolutions
of 1x1 feature maps as matrix products (:class:`lana.distill.inference.fast_inference`). Here
each of the quality benchmark's CPU-mode teachers (fresh weights: the speed does not depend on
them) is evaluated on seeded 28x28 1-channel images both ways, interleaved, one thread,
batches of 500; the table gives the median CPU seconds per 5 000 images, the ratio, and the
largest difference of the mean loss (the top-1 is the same). Nothing is written.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lana.distill import validation
from lana.distill.validation import evaluate


def plain_evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``evaluate`` with the plain kernels (contiguous weights, every convolution as it is)."""
    validation.FAST_CPU_EVALUATION = False
    try:
        return evaluate(model, x, y)
    finally:
        validation.FAST_CPU_EVALUATION = True


def main(argv: list[str] | None = None) -> list[dict]:
    from benchmarks.quality import MODES
    from lana.teacher.load import build_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images per evaluation (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.images, 1, 28, 28, generator=gen), torch.randint(0, 10, (args.images,), generator=gen)
    rows = []
    print("| teacher | plain s / 5 000 images | lana's s / 5 000 images | ratio | loss difference |\n| --- | --- | --- | --- | --- |")
    for key, (name, kwargs) in MODES["cpu"]["teachers"].items():
        torch.manual_seed(0)
        model = build_model(name, kwargs).eval()
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        losses: dict[str, float] = {}
        for _ in range(args.rounds):
            for way, fn in (("plain", plain_evaluate), ("fast", evaluate)):
                tick = time.process_time()
                losses[way] = fn(model, x, y)[0]
                times[way].append((time.process_time() - tick) * 5000 / args.images)
        plain, fast = statistics.median(times["plain"]), statistics.median(times["fast"])
        row = {"teacher": key, "plain_s": plain, "fast_s": fast, "ratio": plain / fast,
               "loss_diff": abs(losses["plain"] - losses["fast"])}
        rows.append(row)
        print(f"| {key} | {plain:.2f} | {fast:.2f} | {plain / fast:.2f}x | {row['loss_diff']:.1e} |", flush=True)
    return rows


if __name__ == "__main__":
    main()

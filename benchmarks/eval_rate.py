"""Evaluation on a CPU: plain kernels against lana's (channels_last weights, 1x1-map shortcut).

    OMP_NUM_THREADS=1 python -m benchmarks.eval_rate            # the quality benchmark's CPU-mode teachers
    OMP_NUM_THREADS=1 python -m benchmarks.eval_rate --images 2000 --rounds 5
    OMP_NUM_THREADS=1 python -m benchmarks.eval_rate --train     # a teacher-training step both ways

:func:`lana.distill.validation.evaluate` (and ``evaluate_stream``, and the quality benchmark's
teacher training) run a network's batches with its 4-D weights channels_last and convolutions
of 1x1 feature maps as matrix products (:class:`lana.distill.inference.fast_inference`). Here
each of the quality benchmark's CPU-mode teachers (fresh weights: the speed does not depend on
them) is evaluated on seeded 28x28 1-channel images both ways, interleaved, one thread,
batches of 500; the table gives the median CPU seconds per 5 000 images, the ratio, and the
largest difference of the mean loss (the top-1 is the same). ``--train`` times one training
step instead (batch 128, forward, cross-entropy, backward), contiguous against channels_last
weights and batches, as the quality benchmark's teacher training now runs it
(``benchmarks.teachers``). Nothing is written.
"""
from __future__ import annotations

import argparse
import copy
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


def train_steps(rounds: int) -> list[dict]:
    """Median CPU seconds of a training step of each CPU-mode teacher, contiguous against channels_last."""
    from benchmarks.quality import MODES
    from lana.distill.inference import channels_last_trains_safely
    from lana.teacher.load import build_model

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    rows = []
    print("| teacher | contiguous ms / step | channels_last ms / step | ratio | oneDNN trains it right |\n| --- | --- | --- | --- | --- |")
    for key, (name, kwargs) in MODES["cpu"]["teachers"].items():
        torch.manual_seed(0)
        base = build_model(name, kwargs).train()
        nets = {"plain": (base, x), "cl": (copy.deepcopy(base).to(memory_format=torch.channels_last),
                                          x.contiguous(memory_format=torch.channels_last))}
        times: dict[str, list[float]] = {"plain": [], "cl": []}
        for _ in range(rounds + 1):  # the first round warms up
            for way, (model, batch) in nets.items():
                model.zero_grad(set_to_none=True)
                tick = time.process_time()
                torch.nn.functional.cross_entropy(model(batch), y).backward()
                times[way].append(time.process_time() - tick)
        plain, cl = (1000 * statistics.median(times[w][1:]) for w in ("plain", "cl"))
        rows.append({"teacher": key, "plain_ms": plain, "channels_last_ms": cl, "ratio": plain / cl})
        print(f"| {key} | {plain:.0f} | {cl:.0f} | {plain / cl:.2f}x | {'yes' if channels_last_trains_safely(base) else 'no'} |",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from benchmarks.quality import MODES
    from lana.teacher.load import build_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images per evaluation (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    parser.add_argument("--train", action="store_true", help="time a training step (batch 128) instead of evaluation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.train:
        return train_steps(args.rounds)
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

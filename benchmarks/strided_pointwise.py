"""Is this CPU hit by oneDNN issue #6035? (why ``channels_last_trains_safely`` exists)

    python -m benchmarks.strided_pointwise

For a 1x1 convolution with stride 2, the largest difference between its gradients on
channels_last and on contiguous input, by input channels and threads. Each case runs in its
own process, since a hit machine may crash (a bus error or heap corruption) rather than
return wrong figures. Prints a markdown table; nothing is written.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

CASE = """
import torch
from torch import nn
torch.manual_seed(0)
torch.set_num_threads({threads})
conv = nn.Conv2d({ic}, 8, 1, {stride}, bias=False)
x = torch.randn(32, {ic}, 16, 16)
def grads(channels_last):
    c = nn.Conv2d({ic}, 8, 1, {stride}, bias=False)
    c.load_state_dict(conv.state_dict())
    xx = x.clone()
    if channels_last:
        c = c.to(memory_format=torch.channels_last)
        xx = xx.contiguous(memory_format=torch.channels_last)
    xx.requires_grad_()
    out = c(xx)
    (out * torch.arange(out.numel()).reshape(out.shape).float().sin()).sum().backward()
    return out.detach(), c.weight.grad, xx.grad
plain, fast = grads(False), grads(True)
diffs = [float((a - b).abs().max()) for a, b in zip(plain, fast)]
print(" ".join(f"{{d:.2g}}" for d in diffs), f"{{float(plain[1].abs().max()):.2g}}")
"""


def run_case(ic: int, threads: int, stride: int) -> str:
    """``output / weight grad / input grad`` max differences (and the weight gradient's largest
    entry, for scale), or how the process ended."""
    done = subprocess.run([sys.executable, "-c", CASE.format(ic=ic, threads=threads, stride=stride)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        return f"crashed (exit {done.returncode})"
    *diffs, scale = done.stdout.split()
    return " / ".join(diffs) + f" (of {scale})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default="1,2,4,7,8,12,16", help="input channels to try")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--stride", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, stride {args.stride}\n")
    threads = [int(t) for t in args.threads.split(",")]
    print("| input channels | " + " | ".join(f"{t} thread(s): output / weight grad / input grad" for t in threads) + " |")
    print("| --- |" + " --- |" * len(threads))
    for ic in (int(c) for c in args.channels.split(",")):
        print(f"| {ic} | " + " | ".join(run_case(ic, t, args.stride) for t in threads) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

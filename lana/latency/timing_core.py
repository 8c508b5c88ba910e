"""The timing core, and the runner of a latency bundle: needs nothing but torch.

lana's profiler (``lana.latency``) times with the functions here, and ``lana profile
--bundle`` copies this very file into the bundle as ``runner.py``, so a device without lana
times candidates exactly as lana would: warm-up until successive windows agree, then
repeats until the 95 % confidence interval of the median is tight (or a time cap), CUDA
events with synchronisation on a GPU, ``perf_counter`` with a fixed thread count on a CPU.

On the other machine::

    python runner.py [--device cuda] [--threads 4] [--name jetson] [--out latency.csv]

then, back home, ``lana profile --run DIR --import latency.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CSV_FIELDS = ("kind", "block", "candidate", "name", "choice", "median_ms", "iqr_ms", "ci_ms", "repeats", "tag", "host", "torch")


# -- statistics ----------------------------------------------------------------------------
def median_ci(samples: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Median and a distribution-free confidence interval of it (binomial order statistics).

    Returns:
        ``(median, low, high)``; with fewer than 3 samples the interval is the full range.
    """
    ordered = sorted(samples)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)) - 1) if n >= 3 else 0
    high = min(n - 1, int(math.ceil(n / 2 + half))) if n >= 3 else n - 1
    return statistics.median(ordered), ordered[low], ordered[high]


def summarize(samples: list[float], warmup: int = 0) -> dict:
    """``median_ms``, ``iqr_ms``, ``ci_ms`` (half-width of the median's 95 % CI), ``repeats``, ``warmup``."""
    median, low, high = median_ci(samples)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": median, "iqr_ms": quartiles[2] - quartiles[0], "ci_ms": (high - low) / 2,
            "repeats": len(samples), "warmup": warmup}


def relative_ci(samples: list[float]) -> float:
    """Half-width of the median's CI relative to the median (inf when it can't be told)."""
    median, low, high = median_ci(samples)
    return (high - low) / 2 / median if median > 0 and len(samples) >= 3 else math.inf


# -- the process ---------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_malloc(limit: int = 1 << 30) -> bool:  # restore with limit=128 * 1024 (glibc's initial thresholds)
    """Pin glibc's malloc thresholds so timed calls reuse memory instead of faulting pages in.

    By default glibc returns large blocks to the kernel (``mmap``/``munmap``, heap trimming)
    depending on the process's allocation history, so the same network can cost hundreds of
    page faults per call in one process and none in another. Pinned, every call after
    warm-up reuses memory, as a server with jemalloc or tcmalloc does. A no-op (``False``)
    where the C library is not glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


# -- one timed call ------------------------------------------------------------------------
def cpu_step(fn: Callable, example: torch.Tensor, clock: str = "wall") -> Callable[[], float]:
    """A function that runs ``fn(example)`` once and returns its time in ms.

    ``clock="wall"`` is the latency a user waits (``perf_counter``); ``clock="process"`` is the
    CPU time of this process, which on a machine shared with other jobs leaves out the time
    the scheduler gave to them: with one thread it is the wall time a quiet machine would show.
    """
    now = time.perf_counter if clock == "wall" else time.process_time

    def step() -> float:
        begin = now()
        fn(example)
        return (now() - begin) * 1e3

    return step


def cuda_step(fn: Callable, example: torch.Tensor) -> Callable[[], float]:
    """A function that runs ``fn(example)`` once between CUDA events and returns the GPU time in ms.

    The stream is synchronised before the start event (nothing queued earlier is counted)
    and after the end event (the whole call is counted, launch gaps included).
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        torch.cuda.synchronize(example.device)
        start.record()
        fn(example)
        end.record()
        torch.cuda.synchronize(example.device)
        return start.elapsed_time(end)

    return step


def cuda_graph(fn: Callable, example: torch.Tensor) -> Callable:
    """Capture ``fn(example)`` as a CUDA graph; the returned callable replays it (same input buffer)."""
    stream = torch.cuda.Stream(example.device)
    stream.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(3):
            fn(example)
    torch.cuda.current_stream(example.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(example)
    return lambda _x: graph.replay()


def make_step(fn: Callable, example: torch.Tensor, graphs: bool = False, clock: str = "wall") -> Callable[[], float]:
    """The right timed call for the example's device (CUDA events, or a CPU clock)."""
    if example.device.type == "cuda":
        return cuda_step(cuda_graph(fn, example) if graphs else fn, example)
    return cpu_step(fn, example, clock)


# -- adaptive sampling ---------------------------------------------------------------------
def warm_up(step: Callable[[], float], warmup: int, cap_s: float, stable: float = 0.05) -> int:
    """Call ``step`` in windows until two successive window medians agree within ``stable``.

    Returns:
        The number of warm-up calls made (at least ``warmup``; at most 10 windows or ``cap_s``).
    """
    window = max(3, warmup)
    begin = time.perf_counter()
    previous = statistics.median(step() for _ in range(window))
    calls = window
    while calls < 10 * window and time.perf_counter() - begin < cap_s:
        current = statistics.median(step() for _ in range(window))
        calls += window
        if abs(current - previous) <= stable * previous:
            break
        previous = current
    return calls


def sample_until_tight(step: Callable[[], float], warmup: int = 5, repeats: int = 25, max_repeats: int | None = None,
                       ci: float = 0.02, time_cap_s: float = 3.0) -> dict:
    """Warm up, then time ``step`` until the median's 95 % CI half-width is within ``ci`` of it.

    Args:
        step: one timed call returning milliseconds.
        warmup: fewest warm-up calls (more while timings still drift).
        repeats: fewest timed calls.
        max_repeats: most timed calls (default 8 × ``repeats``).
        ci: target relative half-width of the median's confidence interval.
        time_cap_s: wall-clock cap for warm-up plus repeats; reaching it stops early.

    Returns:
        :func:`summarize` of the samples, plus ``tight`` (whether the CI target was met).
    """
    begin = time.perf_counter()
    max_repeats = max(repeats, max_repeats or 8 * repeats)
    warm = warm_up(step, warmup, time_cap_s / 4)
    samples = [step() for _ in range(repeats)]
    while relative_ci(samples) > ci and len(samples) < max_repeats and time.perf_counter() - begin < time_cap_s:
        samples.extend(step() for _ in range(min(max(1, repeats // 2), max_repeats - len(samples))))
    return {**summarize(samples, warm), "tight": relative_ci(samples) <= ci}


def sample_interleaved(steps: list[Callable[[], float]], warmup: int = 5, repeats: int = 25,
                       max_repeats: int | None = None, ci: float = 0.02, time_cap_s: float = 30.0,
                       per_round: int = 3, min_time_s: float = 0.0) -> list[dict]:
    """Time several callables round-robin, so drift of the machine hits them all alike.

    Each round takes ``per_round`` samples of every callable; rounds go on until every
    median's CI is tight and the timed rounds took ``min_time_s`` (or ``max_repeats`` /
    ``time_cap_s``): a floor that gives fast callables more calls. Odd and even rounds are also
    summarised apart (``half_a_ms``, ``half_b_ms``): a gap between them says the window was disturbed.

    Returns:
        One :func:`summarize` dict per callable, with ``half_a_ms``, ``half_b_ms`` and ``tight``.
    """
    begin = time.perf_counter()
    max_repeats = max(repeats, max_repeats or 8 * repeats)
    warm = [warm_up(step, warmup, time_cap_s / 8 / max(1, len(steps))) for step in steps]
    halves: list[list[list[float]]] = [[[], []] for _ in steps]
    rounds, sampling = 0, time.perf_counter()

    def samples(i: int) -> list[float]:
        return halves[i][0] + halves[i][1]

    while True:
        for i, step in enumerate(steps):
            halves[i][rounds % 2].extend(step() for _ in range(per_round))
        rounds += 1
        count = len(samples(0))
        if count < repeats or rounds < 2:
            continue
        short = time.perf_counter() - sampling < min_time_s
        loose = short or any(relative_ci(samples(i)) > ci for i in range(len(steps)))
        if not loose or count >= max_repeats or time.perf_counter() - begin > time_cap_s:
            break
    return [{**summarize(samples(i), warm[i]), "half_a_ms": statistics.median(halves[i][0]),
             "half_b_ms": statistics.median(halves[i][1]), "tight": relative_ci(samples(i)) <= ci}
            for i in range(len(steps))]


# -- the bundle runner ---------------------------------------------------------------------
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", platform.node() or "host")


def _load(path: Path, device: torch.device, dtype: torch.dtype, settings: dict) -> torch.jit.ScriptModule:
    module = torch.jit.load(str(path), map_location=device).eval().to(dtype)
    if settings.get("channels_last"):
        module = module.to(memory_format=torch.channels_last)
    return torch.jit.freeze(module) if settings.get("runtime", "torchscript") == "torchscript" else module


def bundle_tag(base: str, device: str, threads: int | None, clock: str, name: str) -> str:
    """The settings tag of a bundle timed elsewhere, e.g. ``cuda-b64-float16-torchscript@jetson``."""
    tag = f"{device}-{base}"
    if device == "cpu":
        tag += (f"-t{threads}" if threads else "") + ("-cputime" if clock == "process" else "")
    return f"{tag}@{name}"


@torch.inference_mode()
def run_bundle(folder: Path, device: str, threads: int | None, name: str, out: Path) -> Path:
    """Time every module listed in ``folder/manifest.json`` and write one CSV row per module."""
    manifest = json.loads((folder / "manifest.json").read_text())
    settings = manifest["settings"]
    target = torch.device(device)
    dtype = DTYPES[settings["dtype"]]
    if threads:
        torch.set_num_threads(threads)
    if settings.get("steady_malloc", True):
        steady_malloc()
    tag = bundle_tag(manifest["tag_base"], str(target).replace(":", ""), torch.get_num_threads(), settings.get("clock", "wall"), name)
    knobs = {k: settings[k] for k in ("warmup", "repeats", "max_repeats", "ci", "time_cap_s") if settings.get(k) is not None}
    rows = []
    for index, entry in enumerate(manifest["entries"], start=1):
        example = torch.randn(settings["batch_size"], *entry["input_shape"], device=target, dtype=dtype)
        if settings.get("channels_last"):
            example = example.contiguous(memory_format=torch.channels_last)
        module = _load(folder / entry["file"], target, dtype, settings)
        step = make_step(module, example, graphs=bool(settings.get("cuda_graphs")) and target.type == "cuda",
                         clock=settings.get("clock", "wall"))
        result = sample_until_tight(step, **knobs)
        rows.append({"kind": entry["kind"], "block": entry.get("block", ""), "candidate": entry.get("candidate", ""),
                     "name": entry.get("name", ""), "choice": json.dumps(entry.get("choice", "")),
                     **{k: result[k] for k in ("median_ms", "iqr_ms", "ci_ms", "repeats")},
                     "tag": tag, "host": name, "torch": torch.__version__})
        print(f"[{index}/{len(manifest['entries'])}] {entry['file']}: {result['median_ms']:.4g} ms", flush=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line of the bundle runner."""
    parser = argparse.ArgumentParser(description="Time a lana latency bundle (needs only torch).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--name", default=_host(), help="a name for this machine (goes into the column tag)")
    parser.add_argument("--out", type=Path, default=Path("latency.csv"), help="CSV to write")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="bundle folder")
    args = parser.parse_args(argv)
    written = run_bundle(args.bundle, args.device, args.threads, re.sub(r"[^A-Za-z0-9_.-]", "_", args.name), args.out)
    print(f"wrote {written}; import it with: lana profile --run RUN --import {written}")


if __name__ == "__main__":
    main()

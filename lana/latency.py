"""Latency measurement: the figures the solver adds up.

Each module is timed at its real input shape on the configured device, batch size, dtype,
memory format and runtime: warm-up first, then the median of repeated timings (CUDA events
with synchronisation on a GPU, ``perf_counter`` with a fixed thread count on a CPU). The
settings are stored beside the figures so tables from different settings never mix.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lana.candidates import Candidate
from lana.config import LatencyConfig
from lana.errors import DeviceError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Timing:
    """Median and spread (interquartile range) of repeated timings, in milliseconds."""

    median_ms: float
    iqr_ms: float
    repeats: int


def resolve_device(name: str) -> torch.device:
    """The torch device for a config string, or a one-line error if it is not there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' asked for but CUDA is not available here; set latency.device: cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device '{name}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device '{name}' is not supported; use cpu or cuda")
    return device


def settings_tag(cfg: LatencyConfig) -> str:
    """A short name of the measurement settings, e.g. ``cpu-b64-float32-eager``."""
    tag = f"{cfg.device}-b{cfg.batch_size}-{cfg.dtype}-{cfg.runtime}"
    return tag + ("-cl" if cfg.channels_last else "")


@contextmanager
def _threads(count: int | None):
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_for_timing(module: nn.Module, example: torch.Tensor, cfg: LatencyConfig) -> nn.Module:
    """Move, cast and (for ``torchscript``) script-and-freeze a module as it will be deployed."""
    module = module.eval().to(device=example.device, dtype=example.dtype)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if cfg.runtime == "torchscript":
        try:
            scripted = torch.jit.script(module)
        except Exception:  # some third-party modules only trace
            scripted = torch.jit.trace(module, example)
        module = torch.jit.freeze(scripted.eval())
    return module


@torch.inference_mode()
def time_module(module: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig) -> Timing:
    """Time one module at ``(batch, *input_shape)`` under the configured settings.

    Args:
        module: the module to time (not modified; a prepared copy is timed).
        input_shape: ``(C, H, W)`` of one input.
        cfg: device, batch size, dtype, runtime, warm-up and repeat counts.

    Returns:
        The median and interquartile range of the repeats in milliseconds.
    """
    device = resolve_device(cfg.device)
    example = torch.randn(cfg.batch_size, *input_shape, device=device, dtype=DTYPES[cfg.dtype])
    if cfg.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    import copy

    prepared = prepare_for_timing(copy.deepcopy(module), example, cfg)
    samples: list[float] = []
    with _threads(cfg.threads):
        if device.type == "cuda":
            for _ in range(cfg.warmup):
                prepared(example)
            torch.cuda.synchronize(device)
            for _ in range(cfg.repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                prepared(example)
                end.record()
                torch.cuda.synchronize(device)
                samples.append(start.elapsed_time(end))
        else:
            for _ in range(cfg.warmup):
                prepared(example)
            for _ in range(cfg.repeats):
                begin = time.perf_counter()
                prepared(example)
                samples.append((time.perf_counter() - begin) * 1e3)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return Timing(statistics.median(samples), quartiles[2] - quartiles[0], len(samples))


def measure_candidates(
    candidates: dict[str, dict[str, Candidate]], input_shapes: dict[str, tuple[int, ...]], cfg: LatencyConfig
) -> dict[tuple[str, str], Timing]:
    """Time every candidate at its block's input shape.

    Args:
        candidates: candidates by block and op name.
        input_shapes: each block's ``(C, H, W)`` input.
        cfg: measurement settings.

    Returns:
        Timing per (block, op).
    """
    results = {}
    total = sum(len(c) for c in candidates.values())
    with tqdm(total=total, desc="latency", unit="cand", dynamic_ncols=True) as bar:
        for block, cands in candidates.items():
            for name, cand in cands.items():
                results[(block, name)] = time_module(cand.module, input_shapes[block], cfg)
                bar.update(1)
    return results


def measure_network(model: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig, rounds: int = 3) -> Timing:
    """Whole-network latency: the median over ``rounds`` separate timing runs (less drift)."""
    timings = [time_module(model, input_shape, cfg) for _ in range(rounds)]
    best = sorted(timings, key=lambda t: t.median_ms)[len(timings) // 2]
    return best

"""Latency measurement: the figures the solver adds up.

Every figure is taken in the configured deployment: device, batch size, dtype, memory
format, runtime (eager, TorchScript, Inductor, AOTInductor, ONNX Runtime, OpenVINO, TensorRT; CUDA graphs on a GPU) and a fixed CPU
thread count. Timing itself (warm-up until stable, repeats until the median's confidence
interval is tight, with a time cap; CUDA events and synchronisation on a GPU) lives in
``lana.bundle_runner`` so that bundles timed on other machines use the very same code.

Two ways to time a candidate:

- *isolated*: the candidate alone at its block's input shape (cheap, portable, but the sum
  of isolated blocks drifts from the whole network: caches, launch overlap, stem/head);
- *in context* (default): the candidate inside the whole network, clocked at its block's
  boundaries. Every candidate is placed in a few "cover" networks (each block cycles
  through its candidates) that are timed interleaved; the fixed part (stem, head, glue)
  is the whole teacher, as deployed, minus its clocked blocks (:mod:`lana.latency.context`).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lana.config import LatencyConfig
from lana.errors import ConfigError, DeviceError
from lana.latency import timing_core as core
from lana.latency.checkpoint import PartialTimings
from lana.latency.runtimes import CLOCKABLE, deployable
from lana.progress import bar as progress

log = logging.getLogger("lana")
DTYPES = core.DTYPES


@dataclass
class Timing:
    """Median and spread of repeated timings, in milliseconds.

    ``iqr_ms`` is the interquartile range, ``ci_ms`` the half-width of the median's 95 %
    confidence interval, ``tight`` whether that interval met ``latency.ci`` within the cap.
    """

    median_ms: float
    iqr_ms: float
    repeats: int
    ci_ms: float = 0.0
    warmup: int = 0
    tight: bool = True

    @classmethod
    def from_summary(cls, summary: dict) -> "Timing":
        """From a :func:`lana.bundle_runner.summarize` dict."""
        return cls(*(summary.get(k, d) for k, d in (("median_ms", 0.0), ("iqr_ms", 0.0), ("repeats", 0),
                                                    ("ci_ms", 0.0), ("warmup", 0), ("tight", True))))

    def as_dict(self) -> dict:
        """JSON-able fields."""
        return asdict(self)


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


def resolved_threads(cfg: LatencyConfig) -> int | None:
    """The CPU thread count measurements use (the configured one, else torch's current)."""
    return cfg.threads or torch.get_num_threads() if cfg.device == "cpu" else None


def settings_tag(cfg: LatencyConfig) -> str:
    """A short name of the measurement settings, e.g. ``cpu-b64-float32-eager-t2``.

    Device, batch size, dtype, runtime, channels-last (``-cl``), CUDA graphs (``-graphs``)
    and the CPU thread count (``-tN``): tables from different settings never share a name.
    """
    tag = f"{cfg.device.replace(':', '')}-b{cfg.batch_size}-{cfg.dtype}-{cfg.runtime}"
    tag += "-cl" if cfg.channels_last else ""
    tag += "-graphs" if cfg.cuda_graphs and cfg.device.startswith("cuda") else ""
    threads = resolved_threads(cfg)
    tag += f"-t{threads}" if threads else ""
    return tag + ("-cputime" if cfg.clock == "process" and cfg.device == "cpu" else "")


def check_settings(cfg: LatencyConfig) -> torch.device:
    """The device, after checking that the settings make sense together (one-line errors)."""
    device = resolve_device(cfg.device)
    if cfg.clock == "process" and device.type == "cpu" and resolved_threads(cfg) != 1:
        raise ConfigError("latency.clock 'process' (CPU time) equals latency only with one thread; set latency.threads: 1")
    if cfg.runtime not in CLOCKABLE and cfg.cuda_graphs:
        raise ConfigError(f"latency.cuda_graphs applies to eager and torchscript, not {cfg.runtime}; drop one")
    return device


def settings_record(cfg: LatencyConfig) -> dict:
    """The settings as stored beside the figures (config, resolved threads, torch version)."""
    return {**cfg.model_dump(mode="json"), "threads_used": resolved_threads(cfg), "torch": torch.__version__}


@contextmanager
def _measuring(cfg: LatencyConfig):
    """Fix the CPU thread count (restored after) and, if asked, steady the allocator."""
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    steady = cfg.steady_malloc and cfg.device == "cpu" and core.steady_malloc()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if steady:  # give memory back to the system again (glibc's initial thresholds)
            core.steady_malloc(128 * 1024)


def example_input(input_shape: tuple[int, ...], cfg: LatencyConfig) -> torch.Tensor:
    """A random batch ``(batch_size, *input_shape)`` on the device, in the dtype and memory format."""
    example = torch.randn(cfg.batch_size, *input_shape, device=check_settings(cfg), dtype=DTYPES[cfg.dtype])
    # channels_last is a 4-D memory format: token inputs (N, L, D) stay as they are
    return example.contiguous(memory_format=torch.channels_last) if cfg.channels_last and example.dim() == 4 else example


def _knobs(cfg: LatencyConfig) -> dict:
    return {"warmup": cfg.warmup, "repeats": cfg.repeats, "max_repeats": cfg.max_repeats, "ci": cfg.ci}


def _graphs(cfg: LatencyConfig, example: torch.Tensor) -> bool:
    return cfg.cuda_graphs and example.device.type == "cuda" and cfg.runtime in CLOCKABLE


def prepare_for_timing(module: nn.Module, example: torch.Tensor, cfg: LatencyConfig):
    """The module as deployed under ``cfg`` (see :func:`lana.runtimes.deployable`)."""
    return deployable(module, example, cfg.runtime, cfg.channels_last, resolved_threads(cfg))


@torch.inference_mode()
def time_module(module: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig) -> Timing:
    """Time one module at ``(batch, *input_shape)`` under the configured settings.

    Args:
        module: the module to time (not modified; a prepared copy is timed).
        input_shape: ``(C, H, W)`` of one input.
        cfg: device, batch size, dtype, runtime, warm-up, repeats, CI target and time cap.

    Returns:
        The median, spread and confidence interval of the repeats in milliseconds.
    """
    example = example_input(input_shape, cfg)
    with _measuring(cfg):
        prepared = prepare_for_timing(module, example, cfg)
        step = core.make_step(prepared, example, _graphs(cfg, example), cfg.clock)
        return Timing.from_summary(core.sample_until_tight(step, **_knobs(cfg), time_cap_s=cfg.time_cap_s))


def measure_candidates(candidates: dict, input_shapes: dict[str, tuple[int, ...]], cfg: LatencyConfig,
                       partial: PartialTimings | None = None) -> dict[tuple[str, str], Timing]:
    """Time every candidate alone at its block's input shape.

    Args:
        candidates: :class:`lana.candidates.Candidate` (or modules) by block and op name.
        input_shapes: each block's ``(C, H, W)`` input.
        cfg: measurement settings.
        partial: where each block's timings are saved as soon as they are taken (and found
            again after a kill).

    Returns:
        Timing per (block, op).
    """
    partial = partial or PartialTimings(None, "")
    results = {}
    total = sum(len(c) for c in candidates.values())
    with progress(total=total, desc="latency (isolated)", unit="cand") as bar:
        for block, cands in candidates.items():
            stored = partial.get("isolated", block)
            if stored is None:
                stored = {name: time_module(getattr(cand, "module", cand), input_shapes[block], cfg).as_dict()
                          for name, cand in cands.items()}
                partial.put("isolated", block, stored)
            results.update({(block, name): Timing(**stored[name]) for name in cands})
            bar.update(len(cands))
    return results


@torch.inference_mode()
def measure_networks(models: list[nn.Module], input_shape: tuple[int, ...], cfg: LatencyConfig,
                     time_cap_s: float | None = None) -> list[dict]:
    """Whole networks end to end in the deployment runtime, timed interleaved.

    Returns:
        One dict per model: ``median_ms``, ``iqr_ms``, ``ci_ms``, ``repeats``, and the medians
        of odd and even rounds (``half_a_ms``, ``half_b_ms``) whose gap says the window was disturbed.
    """
    example = example_input(input_shape, cfg)
    with _measuring(cfg):
        steps = [core.make_step(prepare_for_timing(m, example, cfg), example, _graphs(cfg, example), cfg.clock) for m in models]
        cap = time_cap_s if time_cap_s is not None else cfg.time_cap_s * len(models)
        return core.sample_interleaved(steps, **_knobs(cfg), time_cap_s=cap)


@torch.inference_mode()
def measure_callables(fns: list, input_shape: tuple[int, ...], cfg: LatencyConfig, time_cap_s: float | None = None) -> list[dict]:
    """Already-deployed callables (e.g. reloaded export artefacts) timed interleaved, as they are.

    Args:
        fns: callables taking a batch like :func:`example_input` makes.
        input_shape: ``(C, H, W)`` of one input.
        cfg: measurement settings (``runtime`` is ignored: each callable is its own runtime).
        time_cap_s: wall-clock cap for the whole group (default ``latency.time_cap_s`` × callables).

    Returns:
        One dict per callable, as :func:`measure_networks`.
    """
    example = example_input(input_shape, cfg)
    with _measuring(cfg):
        steps = [core.make_step(fn, example, False, cfg.clock) for fn in fns]
        cap = time_cap_s if time_cap_s is not None else cfg.time_cap_s * len(fns)
        return core.sample_interleaved(steps, **_knobs(cfg), time_cap_s=cap)


def measure_network(model: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig, rounds: int = 3) -> Timing:
    """Whole-network latency, deployed, with a time cap of ``rounds`` × ``latency.time_cap_s``."""
    return Timing.from_summary(measure_networks([model], input_shape, cfg, time_cap_s=cfg.time_cap_s * max(1, rounds))[0])

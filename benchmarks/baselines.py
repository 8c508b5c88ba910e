"""What users would do instead of lana, each held to a measured latency budget.

Three alternatives, used by ``benchmarks/quality.py`` to compare against lana's selection
at equal measured latency:

- structured channel pruning with Torch-Pruning: the least-pruned copy whose measured
  latency meets the budget (:func:`prune_sweep`, then :meth:`Sweep.pick`);
- uniform width scaling of the teacher's family: the widest multiplier whose measured
  latency meets the budget (:func:`width_sweep`);
- random selections from the same candidate tables that meet the budget
  (:func:`random_selection`).

The sweeps measure whole networks in the same settings as lana's report, each interleaved
with the teacher (:func:`measure_share`), once per teacher; each budget, a share of the
teacher's latency, then picks from them, so the budget is met on the device and not in a
model, and drift of the machine between measurements cancels out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from lana.config import LatencyConfig
from lana.errors import ConfigError, InfeasibleError
from lana.latency.measure import measure_networks
from lana.teacher.load import build_model


def measure_share(model: nn.Module, reference: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig,
                  rounds: int = 3) -> tuple[float, float]:
    """``model``'s measured latency (ms) and its share of ``reference``'s, timed interleaved.

    The share comes from one interleaved run of both networks, so drift of the machine
    between measurements (frequency, other jobs) cancels out of it.
    """
    ref, own = measure_networks([reference.eval(), model.eval()], input_shape, cfg, time_cap_s=cfg.time_cap_s * rounds)
    return own["median_ms"], own["median_ms"] / ref["median_ms"]


@dataclass
class Sweep:
    """Whole networks measured along one knob, from the least to the most aggressive setting."""

    knobs: list[float]
    latency_ms: list[float]
    shares: list[float]  # latency as a share of the reference's, measured interleaved with it
    build: Callable[[float], nn.Module]

    def pick(self, share: float, tolerance: float = 0.0) -> tuple[float, float]:
        """The least aggressive knob whose measured share of the reference meets ``share`` (and that share).

        Measured latency need not fall monotonically along the knob (odd channel counts
        can be slower than rounder, larger ones), so every setting is looked at.
        """
        for knob, got in zip(self.knobs, self.shares):
            if got <= share * (1 + tolerance):
                return knob, got
        fastest = min(self.shares)
        raise InfeasibleError(f"no setting reaches {share:.2f}× the teacher's latency; the fastest measured is "
                              f"{fastest:.2f}× (at {self.knobs[self.shares.index(fastest)]:.3g})")

    def as_rows(self) -> list[dict]:
        return [{"knob": k, "latency_ms": ms, "share": r} for k, ms, r in zip(self.knobs, self.latency_ms, self.shares)]


def sweep(build: Callable[[float], nn.Module], knobs: list[float], reference: nn.Module, input_shape: tuple[int, ...],
          cfg: LatencyConfig) -> Sweep:
    """Measure ``build(knob)`` at every knob, each interleaved with ``reference`` (whole networks, deployed settings)."""
    from tqdm.auto import tqdm

    measured = [measure_share(build(k), reference, input_shape, cfg) for k in tqdm(knobs, desc="baseline sweep", unit="net")]
    return Sweep(list(knobs), [m[0] for m in measured], [m[1] for m in measured], build)


def _classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The output layer pruning must keep: the last Linear or conv with ``num_classes`` outputs.

    Only the last one: an inner layer that happens to have ``num_classes`` channels is pruned as usual.
    """
    outputs = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
               or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    return outputs[-1:]


def prune(teacher: nn.Module, input_shape: tuple[int, ...], ratio: float, num_classes: int, round_to: int | None = 8) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of each layer's channels removed by Torch-Pruning.

    L2-magnitude importance over dependency groups (Torch-Pruning's ``MetaPruner``, the
    usual "magnitude pruner"), the same ratio in every layer, channel counts rounded to
    ``round_to`` (hardware-friendly widths) unless the narrowest conv has fewer than
    4 × ``round_to`` channels, where rounding would forbid pruning it; the classifier is kept whole.
    """
    import torch_pruning as tp

    model = copy.deepcopy(teacher).cpu().eval()
    if ratio <= 0:
        return model
    narrowest = min((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), default=0)
    if round_to and narrowest < 4 * round_to:
        round_to = None
    example = torch.randn(1, *input_shape)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=_classifier(model, num_classes), round_to=round_to,
    )
    pruner.step()
    return model.eval()


def max_ratio(teacher: nn.Module, round_to: int | None = 8) -> float:
    """The largest uniform pruning ratio that leaves the narrowest conv ``round_to`` channels."""
    narrowest = min((m.out_channels for m in teacher.modules() if isinstance(m, nn.Conv2d)), default=1)
    if not round_to or narrowest < 4 * round_to:
        return 0.9
    return min(0.9, 1 - round_to / narrowest)


def prune_sweep(teacher: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig, num_classes: int, points: int = 12) -> Sweep:
    """Torch-Pruning copies of ``teacher`` at ``points`` ratios from 0 to :func:`max_ratio`, measured against it."""
    ratios = list(np.linspace(0.0, max_ratio(teacher), points + 1)[1:])
    return sweep(lambda r: prune(teacher, input_shape, float(r), num_classes), ratios, teacher, input_shape, cfg)


def _divisible(value: float, by: int = 8) -> int:
    return max(by, int(value / by + 0.5) * by)


def width_scaled(model: str, kwargs: dict, multiplier: float) -> nn.Module:
    """The teacher's family member at ``multiplier`` × its channel widths (untrained).

    Supported: timm ResNets (``channels`` and ``stem_width``), torchvision MobileNetV2
    (``width_mult``) and the demo ResNet (``widths``); other families raise ConfigError.
    """
    kwargs = dict(kwargs)
    if model.startswith("timm:resnet") or model.startswith("timm:resnext"):
        channels = kwargs.pop("channels", (64, 128, 256, 512))
        kwargs["channels"] = tuple(_divisible(c * multiplier) for c in channels)
        kwargs["stem_width"] = _divisible(kwargs.pop("stem_width", 64) * multiplier)
    elif model == "torchvision:mobilenet_v2":
        kwargs["width_mult"] = kwargs.pop("width_mult", 1.0) * multiplier
    elif model == "lana.teacher.demo_net:demo_resnet":
        kwargs["widths"] = tuple(_divisible(c * multiplier) for c in kwargs.pop("widths", (32, 64, 128)))
    else:
        raise ConfigError(
            f"no width multiplier known for '{model}'; the width baseline supports timm:resnet*, "
            "torchvision:mobilenet_v2 and lana.teacher.demo_net:demo_resnet"
        )
    return build_model(model, kwargs)


def width_sweep(model: str, kwargs: dict, teacher: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig,
                points: int = 12, min_multiplier: float = 0.1) -> Sweep:
    """The teacher's family at ``points`` width multipliers from 1 down to ``min_multiplier``, measured against ``teacher``."""
    widths = list(np.linspace(1.0, min_multiplier, points + 1)[1:])
    return sweep(lambda w: width_scaled(model, kwargs, float(w)), widths, teacher, input_shape, cfg)


def random_selection(problem, rng: np.random.Generator, latency: str = "latency_ms") -> dict[str, str]:
    """A uniformly drawn selection that meets the problem's latency limit (predicted).

    Blocks are visited in random order; each draws uniformly among its candidates that
    still leave the remaining blocks a feasible choice, so every draw meets the budget
    without rejection, however tight.

    Args:
        problem: a :class:`solvers.SelectionProblem` with an upper limit on ``latency``.
        rng: the random generator (seeded by the caller).

    Returns:
        block → op name.
    """
    cost = problem.cost(latency)
    cap = problem.upper_cap(latency) - problem.offsets.get(latency, 0.0)
    starts = problem.block_start
    fastest = np.array([cost[a:z].min() for a, z in zip(starts[:-1], starts[1:])])
    if fastest.sum() > cap:
        reachable = fastest.sum() + problem.offsets.get(latency, 0.0)
        raise InfeasibleError(f"no selection meets {problem.upper[latency]:.4g} ms; the fastest is {reachable:.4g} ms")
    left = fastest.sum()
    used = 0.0
    choice: dict[str, str] = {}
    for b in rng.permutation(problem.n_blocks):
        a, z = starts[b], starts[b + 1]
        left -= fastest[b]
        ok = np.flatnonzero(used + cost[a:z] + left <= cap)
        row = a + int(rng.choice(ok))
        used += cost[row]
        choice[problem.blocks[b]] = str(problem.candidates[row])
    return {block: choice[block] for block in problem.blocks}

"""Successive halving of distillation: candidates dominated in their block stop training.

After a warm-up (``distill.halving_warmup`` of the steps), and again each time the steps
done double, every candidate of a block is compared with the others of that block on two
figures: its distillation loss over the steps since the last cut, and its cost (MACs:
latency is measured after distillation). A candidate that another one beats on both (no
worse on either, better on one) is *dominated*: it stops training and keeps the weights it
has. The survivors train on; with fewer candidates, each step takes less time. A stopped
candidate is still scored, timed and offered to the solver: MACs are not latency (on a CPU
a fused MBConv with more MACs can be faster than the op that dominated it), and the
students a 0.3x budget selected without halving used ops that halving had stopped
(docs/benchmarks.md; offering them did not close halving's gap there). The table records
the steps each candidate trained and why it stopped.
"""
from __future__ import annotations

from collections.abc import Hashable


def cut_steps(steps: int, warmup: float) -> list[int]:
    """Steps (counted from 0) after which the cuts happen: ``warmup``, ``2·warmup``, ... of ``steps``, before the end."""
    cuts, share = [], warmup
    while share < 1.0:
        step = round(steps * share)
        if 0 < step < steps and step not in cuts:
            cuts.append(step)
        share *= 2
    return cuts


def dominated(entries: dict[Hashable, tuple[float, float]]) -> set[Hashable]:
    """Keys whose (loss, cost) another entry matches or beats on both and beats on one.

    Args:
        entries: key -> (distillation loss, cost); one block's candidates still in play.

    Returns:
        The dominated keys (entries with a non-finite loss are left to the NaN check).
    """
    out = set()
    items = list(entries.items())
    for key, (loss, cost) in items:
        for other, (loss_o, cost_o) in items:
            if other != key and loss_o <= loss and cost_o <= cost and (loss_o < loss or cost_o < cost):
                out.add(key)
                break
    return out

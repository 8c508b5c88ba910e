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

from collections.abc import Callable, Hashable


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


def cut_dominated(stats: dict, members: list, done: int, trainable: Callable[[Hashable], bool],
                  cost: Callable[[Hashable], float]) -> tuple[int, int]:
    """One cut over a group: mark its dominated trainable candidates stopped, start a new window.

    Args:
        stats: per candidate key (``(block, op)``), its running record: ``status``, the loss over
            the window since the last cut (``win_sum``/``win_n``) and over the last quarter
            (``loss_sum``/``loss_n``); updated in place.
        members: the group's keys.
        done: steps done (named in the stopped candidates' status).
        trainable: whether a key trains (fixed ops cost nothing to keep and are never stopped).
        cost: a key's cost (its MACs).

    Returns:
        How many candidates stopped now, and how many trainable ones train on.
    """
    blocks: dict[Hashable, dict[Hashable, tuple[float, float]]] = {}
    for key in members:
        record = stats[key]
        if record["status"] == "ok" and record["win_n"]:
            blocks.setdefault(key[0], {})[key] = (record["win_sum"] / record["win_n"], float(cost(key)))
    stopped = 0
    for entries in blocks.values():
        for key in dominated(entries):
            record = stats[key]
            if not trainable(key):
                continue
            record["status"] = f"stopped: dominated at step {done}"
            if not record["loss_n"]:  # the loss it had when it stopped
                record["loss_sum"], record["loss_n"] = record["win_sum"], record["win_n"]
            stopped += 1
    for key in members:
        stats[key]["win_sum"], stats[key]["win_n"] = 0.0, 0
    live = sum(stats[k]["status"] == "ok" and trainable(k) for k in members)
    return stopped, live

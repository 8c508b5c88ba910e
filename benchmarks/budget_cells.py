"""What the quality comparison runs at one budget (``benchmarks.compare.compare_teacher``).

- :func:`run_budget`: every method's networks, each searched into the band and fine-tuned, per seed;
- :func:`equal_compute`: the best other method again, fine-tuned for as long as lana's whole run took;
- :func:`long_finetune`: the networks that start from the teacher's weights, fine-tuned long on
  every training image (the rows the 2.5×-within-0.5-points bar is judged on).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pandas as pd

from benchmarks.baselines import MEMBERS
from benchmarks.report import EQUAL
from lana.distill.validation import evaluate

if TYPE_CHECKING:
    from benchmarks.compare import Comparison

log = logging.getLogger("lana")

LONG_METHODS = ("lana", "tp-taylor")  # the methods whose networks start from the teacher's weights


def long_finetune(cmp: Comparison, share: float, steps: int, methods: tuple[str, ...] | list[str]) -> None:
    """At ``share``: each method's network per seed, fine-tuned for ``steps`` steps on the whole train split.

    What a user with time to spare would do with the network they keep: the same
    distillation fine-tune, longer and on every training image. Each method is searched
    into the band as at the other budgets; rows are named ``"<method> (long fine-tune)"``,
    with ``protocol`` ``"long"``, and compared only with each other (``benchmarks.report``).
    """
    splits, _ = cmp.full_train()
    epochs = steps * cmp.ctx.config.data.batch_size / max(1, len(splits.train))
    log.info("long fine-tune at %.2f×: %s, %d steps (%.2f epochs of %d images)", share, ", ".join(methods), steps, epochs,
             len(splits.train))
    first = len(cmp.rows)
    for method in methods:
        for seed in cmp.seeds:
            found = cmp.found.get((method, share, seed))
            if found is None:
                found = cmp.lana(share, seed) if method == "lana" else cmp.pruned(method, share, seed)
            if found is not None:
                setting = f"ratio {found.knob:.3f}" if method.startswith("tp-") else ""
                cmp.train_and_add(f"{method} (long fine-tune)", share, found, seed, found.seconds, epochs=epochs,
                                  setting=setting, full=True, finetune_steps=steps)
    for row in cmp.rows[first:]:  # misses too: they belong to this protocol, not to the budget's comparison
        row["protocol"] = "long"
        row.setdefault("finetune_steps", steps)
        if not row["method"].endswith(" (long fine-tune)"):
            row["method"] += " (long fine-tune)"


def run_budget(cmp: Comparison, share: float, methods: tuple[str, ...], n_random: int, distill_s: dict[int, float]) -> None:
    """Every method's networks at one budget, each seed's own (see the module docstring)."""
    model_name, kwargs = cmp.ctx.config.teacher.model, cmp.ctx.config.teacher.kwargs
    log.info("budget %.2f× the teacher: %s", share, ", ".join(methods))
    for seed in cmp.seeds if "lana" in methods else []:
        if found := cmp.lana(share, seed):  # lana's network needs its whole distillation: in its training seconds
            cmp.train_and_add("lana", share, found, seed, found.seconds, base_s=distill_s[seed])
    for seed in cmp.seeds if "random" in methods else []:
        draws = cmp.random_draws(share, seed)
        if not draws:
            cmp.rows.append({"method": "random", "budget": share, "seed": seed,
                             "note": f"no random draw inside the band in {n_random} searches"})
            continue
        search_s = sum(d.seconds for d in draws)
        cmp.found[("random", share, seed)] = draws[0]
        cmp.train_and_add("random", share, draws[0], seed, draws[0].seconds, base_s=distill_s[seed])
        # random's row and network (a miss row has no network, so the two lists are indexed apart)
        row, model, tick = cmp.rows[-1], cmp.models[-1], time.time()
        # best of N by validation top-1 of the distilled, not yet fine-tuned, network
        best = cmp.found[("random-best", share, seed)] = max(draws, key=lambda d: evaluate(d.model, *cmp.val)[1])
        if best is draws[0] and row.get("method") == "random":
            # random's network, seed and fine-tune: the same (deterministic) training, so its row, not a second run
            cmp.rows.append({**row, "method": "random-best", "search_s": search_s + time.time() - tick})
            cmp.models.append(model)
            log.info("random-best at %.2f× seed %d is random's own draw: its fine-tuned network and row", share, seed)
        else:
            cmp.train_and_add("random-best", share, best, seed, search_s + time.time() - tick, base_s=distill_s[seed])
    for method in ("tp-taylor", "tp-magnitude") if "torch-pruning" in methods else ():
        for seed in cmp.seeds:
            if found := cmp.pruned(method, share, seed):
                cmp.train_and_add(method, share, found, seed, found.seconds, setting=f"ratio {found.knob:.3f}")
            if method == "tp-magnitude":  # no random choice in the ratio search: one search serves every seed
                for other in cmp.seeds[1:] if found else []:
                    cmp.found[(method, share, other)] = found
                    cmp.train_and_add(method, share, found, other, found.seconds, setting=f"ratio {found.knob:.3f}")
                break
    if "width" in methods:
        families = [("width", model_name, {}, 1.0)] + [(f"member:{label}", m, extra, 2.0)
                                                        for label, m, extra in MEMBERS.get(model_name, [])]
        for method, model, extra, widest in families:
            if found := cmp.scaled(method, model, {**kwargs, **extra}, share, widest):
                for seed in cmp.seeds:
                    cmp.train_and_add(method, share, found, seed, found.seconds, setting=f"{model} ×{found.knob:.3f}")


def equal_compute(cmp: Comparison, share: float, max_epochs: float, distill_s: dict[int, float]) -> None:
    """At ``share``, the best baseline by validation top-1, fine-tuned for as long as lana's total took.

    lana's total is its distillation (all of it) + its search + its fine-tune; the baseline's
    fine-tune is lengthened by the difference, at its own measured seconds per epoch, up to
    ``max_epochs`` (the row's ``train_s`` shows what it really got). A baseline that had lana's
    total already (random-best: its draws need lana's distillation) is not trained again: its
    rows are repeated under the equal-compute name, saying so in ``setting``.
    """
    rows = pd.DataFrame([r for r in cmp.rows if r.get("budget") == share and "val_top1" in r])
    if rows.empty or "lana" not in set(rows["method"]) or len(set(rows["method"])) < 2:
        return
    means = rows.groupby("method")[["val_top1", "train_s", "search_s", "finetune_s"]].mean()
    lana_total = means.loc["lana", "train_s"] + means.loc["lana", "search_s"]
    best = means.drop(index="lana").sort_values("val_top1").index[-1]
    other_total = means.loc[best, "train_s"] + means.loc[best, "search_s"]
    epochs = cmp.ctx.config.finetune.epochs
    if other_total >= lana_total:  # it had lana's compute already (random-best: the whole distillation too)
        log.info("equal compute: %s at %.2f× had lana's compute already (%.0f s, lana %.0f s): its rows stand for it",
                 best, share, other_total, lana_total)
        with_model = [r for r in cmp.rows if "val_top1" in r]  # one network per such row, in order
        for index in [i for i, r in enumerate(with_model) if r.get("budget") == share and r["method"] == best]:
            setting = f"its own rows: {other_total:.0f} s ≥ lana's {lana_total:.0f} s"
            cmp.rows.append({**with_model[index], "method": best + EQUAL, "setting": setting})
            cmp.models.append(cmp.models[index])
        return
    more = min(max_epochs, epochs * (1 + max(0.0, lana_total - other_total) / means.loc[best, "finetune_s"]))
    log.info("equal compute: %s at %.2f× gets %.1f fine-tune epochs (lana %.0f s, it %.0f s)", best, share, more,
             lana_total, other_total)
    for seed in cmp.seeds:
        # each seed's own network (random draws, Taylor's ranking differ per seed) is trained longer
        pick = rows[(rows["method"] == best) & (rows["seed"] == seed)]
        found = cmp.found.get((best, share, seed))
        if found is None or pick.empty:
            continue
        base = distill_s[seed] if best.startswith("random") else 0.0
        cmp.train_and_add(best + EQUAL, share, found, seed, float(pick["search_s"].iloc[0]), base_s=base,
                          epochs=more, setting=f"{more:.1f} fine-tune epochs")

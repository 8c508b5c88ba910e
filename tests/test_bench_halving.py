"""benchmarks/halving.py: the two settings and the tie rule of its verdict."""
from __future__ import annotations

import pandas as pd

from benchmarks.halving import markdown, settings, verdicts


def _row(setting, budget, val, spread, distill_s=100.0):
    return {"setting": setting, "budget": budget, "seeds": 2, "distill_s": distill_s, "distill_cpu_s": distill_s * 0.9,
            "steps_per_candidate": 60.0,
            "val_top1": val, "val_spread": spread, "top1": val, "spread": spread, "share": budget}


def test_halving_gets_twice_the_steps_and_is_switched_on():
    s = settings(60)
    assert "distill.max_steps=60" in s["uniform"] and "distill.halving=true" not in s["uniform"]
    assert "distill.halving=true" in s["halving"] and "distill.max_steps=120" in s["halving"]
    # max_steps alone sets the steps: the epochs (one epoch of the CPU mode is 32 steps) do not cap them
    from benchmarks.quality import MODES
    from lana.config import build_config
    from lana.distill.core import total_steps

    for name, steps in (("uniform", 60), ("halving", 120)):
        tree = {**MODES["cpu"]["tree"], "distill": dict(MODES["cpu"]["tree"]["distill"])}
        for override in s[name]:
            key, value = override.split("=")
            tree["distill"][key.split(".")[1]] = {"true": True}.get(value, value)
        assert total_steps(build_config(tree), 4000) == steps


def test_a_difference_within_the_larger_spread_is_a_tie_and_beyond_it_a_win_or_loss():
    table = pd.DataFrame([_row("uniform", 0.5, 90.0, 0.6), _row("halving", 0.5, 90.5, 0.2),
                          _row("uniform", 0.3, 85.0, 0.2), _row("halving", 0.3, 86.0, 0.3),
                          _row("uniform", 0.7, 91.0, 0.1), _row("halving", 0.7, 90.0, 0.1),
                          _row("uniform", 0.2, 80.0, 0.1)])
    lines = {line.split("×")[0]: line for line in verdicts(table)}
    assert ": tie:" in lines["0.5"]
    assert "halving wins" in lines["0.3"]
    assert "halving LOSES" in lines["0.7"]
    assert "only uniform" in lines["0.2"]
    text = markdown(table, "python -m benchmarks.halving")
    assert text.count("| halving |") == 3 and "90.50 ± 0.10 %" in text and "| 100 / 90 |" in text


def test_a_budget_one_seed_reached_gets_no_verdict():
    one = _row("halving", 0.3, 92.0, 0.0)
    one["seeds"] = 1
    lines = verdicts(pd.DataFrame([_row("uniform", 0.3, 90.0, 0.2), one]))
    assert lines[0].startswith("0.3×: no verdict (seeds in the band: uniform 2, halving 1)")

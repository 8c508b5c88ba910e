"""benchmarks/channels_last.py: both layouts timed, alternating, with positive CPU seconds."""
from __future__ import annotations

import torch

from benchmarks.channels_last import LAYOUTS, fit_rate, interleaved


def test_the_layouts_alternate_round_by_round():
    seen = []
    interleaved(seen.append, 2)
    assert seen == [torch.contiguous_format, torch.channels_last] * 2 and list(LAYOUTS) == ["nchw", "channels_last"]


def test_a_fit_rate_times_both_layouts():
    rates = fit_rate("demo", 1)
    assert set(rates) == {"nchw", "channels_last"} and all(v > 0 for v in rates.values())

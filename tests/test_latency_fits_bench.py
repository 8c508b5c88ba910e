"""benchmarks/latency_fit_alternatives.py: the rejected corrections are judged on held-out networks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.latency_fit_alternatives import judge


def _frame(residual) -> pd.DataFrame:
    """A saved latency_error CSV: 13 networks (the first the teacher), each measured = sum + residual."""
    rng = np.random.default_rng(0)
    ops = ["identity", "conv_k1", "conv_k3"]
    sums = np.linspace(2.0, 14.0, 13)
    choices = [json.dumps({f"b{i}": ops[int(k)] for i, k in enumerate(rng.integers(0, 3, 4))}) for _ in sums]
    measured = sums + residual(sums)
    return pd.DataFrame({"kind": ["teacher"] + ["random"] * 12, "choice": choices, "raw_sum_ms": sums,
                         "measured_profiled_ms": measured, "predicted_profiled_ms": sums + 0.9})


def test_every_correction_is_judged_on_every_network_but_the_teacher():
    errors = judge(_frame(lambda s: 0.5 + 0.1 * s), alpha=10.0)
    assert set(errors) == {"current", "relative", "per-op"}
    assert all(len(e) == 12 for e in errors.values())


def test_an_exact_offset_and_scale_is_recovered_by_the_fits_but_not_by_per_op_terms():
    # measured = 0.5 ms + 1.1 x sum exactly: both LOO fits predict every held-out network exactly;
    # per-op counts cannot express a scale, so they leave an error
    errors = judge(_frame(lambda s: 0.5 + 0.1 * s), alpha=10.0)
    assert errors["current"].max() == pytest.approx(0.0, abs=1e-6)
    assert errors["relative"].max() == pytest.approx(0.0, abs=1e-4)
    assert errors["per-op"].max() > 1.0

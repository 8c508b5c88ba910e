"""lana's selection at a table budget in the quality benchmark (benchmarks/table_choice.py):
the window under the budget, the choice images, and the top-k kept as lana's pipeline keeps it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from benchmarks.table_choice import solve_in_window

ROOT = Path(__file__).resolve().parents[1]


def test_lanas_selection_is_the_best_inside_the_window_when_one_is_there():
    """Selections predict 9.8, 7.8, 6.0, 4.8, 4.0 and 1.0 ms; lana's search draws the best one
    predicted inside [0.97 × table budget, table budget] when there is one, else the plain best."""
    from lana.selection import SolveInputs

    table = pd.DataFrame({"block": ["a", "a", "a", "b", "b"], "candidate": ["teacher", "slim", "tiny", "teacher", "skip"],
                          "latency_ms": [6.0, 4.0, 1.0, 3.8, 0.0], "score": [0.0, -0.1, -0.2, 0.0, -3.0]})
    inputs = SolveInputs(table, ROOT, teacher_ms=9.8)
    assert solve_in_window(inputs, 10.0, 0.97) == [{"a": "teacher", "b": "teacher"}]  # 9.8 ms: the best, inside
    # 6 ms: the best under it predicts 4.8 ms, far under the band; 6.0 ms lies inside [5.82, 6]
    assert solve_in_window(inputs, 6.0, 0.97) == [{"a": "teacher", "b": "skip"}]
    # 7 ms: nothing predicted inside [6.79, 7]: the best under 7 ms (4.8), as the solver alone gives it
    assert solve_in_window(inputs, 7.0, 0.97) == [{"a": "tiny", "b": "teacher"}]
    # top-k: the k best inside the window, best first; none inside: the k best under the budget
    assert solve_in_window(inputs, 7.0, 0.97, top_k=2) == [{"a": "tiny", "b": "teacher"}, {"a": "teacher", "b": "skip"}]


def test_the_comparisons_choice_images_are_every_validation_image_lana_did_not_score():
    """benchmarks.compare makes its choices on the validation images no swap-one score
    used: the complement of lana's scoring part, whatever order lana draws it in."""
    from types import SimpleNamespace

    from benchmarks.table_choice import choice_split
    from lana.config import ScoreConfig
    from lana.distill.validation import split_validation

    data = torch.utils.data.TensorDataset(torch.arange(40.0).view(40, 1), torch.arange(40) % 4)
    cfg = ScoreConfig(val_images=10)
    ctx = SimpleNamespace(splits=SimpleNamespace(val=data), config=SimpleNamespace(score=cfg))
    x, y = choice_split(ctx)
    scored = set(split_validation(data, cfg)[0].indices)
    assert sorted(x.view(-1).long().tolist()) == sorted(set(range(40)) - scored) and len(scored) == 10
    assert torch.equal(y, x.view(-1).long() % 4)


def test_lanas_draw_keeps_the_top_k_selection_that_keeps_the_teachers_outputs_best(trained_run, one_thread):
    """As lana's pipeline does (``solve.top_k``): the k best in the window, assembled, compared on the choice images."""
    from benchmarks.table_choice import choose_in_window, rank_in_window
    from lana.run.context import prepare
    from lana.stages.choose import measure_selections
    from lana.stages.solve import load_run

    run, config, _ = trained_run
    inputs = load_run(run.path)
    ctx = prepare(config, run, writes=False)
    # a window from 0 to the teacher's latency: many selections in it, whatever this machine's timings were
    table_ms = inputs.teacher_ms
    choices = solve_in_window(inputs, table_ms, 0.0, top_k=config.solve.top_k)
    k = config.solve.top_k
    assert len(choices) == k == 10 and len({tuple(sorted(c.items())) for c in choices}) == k
    kl = [f["choice_kl"] for f in measure_selections(ctx, [{"choice": c} for c in choices])]
    assert choose_in_window(ctx, inputs, table_ms, 0.0) == choices[kl.index(min(kl))]
    # a search asks again at other table budgets: the same alternatives are compared once
    import benchmarks.compare as compare_mod
    import benchmarks.table_choice as choice_mod

    picked, calls = {}, []
    real, solve = choice_mod.measure_selections, choice_mod.solve_in_window
    other = next(c for c in solve(inputs, table_ms * 0.5, 0.0, top_k=k) if c not in choices)
    choice_mod.measure_selections = lambda ctx, records: (calls.append(len(records)), real(ctx, records))[1]
    try:
        first = choose_in_window(ctx, inputs, table_ms, 0.0, picked=picked)
        assert choose_in_window(ctx, inputs, table_ms * 1.000001, 0.0, picked=picked) == first == choices[kl.index(min(kl))]
        assert calls == [k] and len(picked) == k
        # another budget's k share some selections with these: only the new ones are assembled
        choice_mod.solve_in_window = lambda *a: choices[:3] + [other]
        again = rank_in_window(ctx, inputs, table_ms, 0.0, picked=picked)
    finally:
        choice_mod.measure_selections, choice_mod.solve_in_window = real, solve
    assert calls[1:] == [1] and len(again) == 4 and sorted(map(str, again)) == sorted(map(str, choices[:3] + [other]))
    # the band search's alternatives: all k, best first; a table budget's network offers the others
    order = rank_in_window(ctx, inputs, table_ms, 0.0)
    assert order == [choices[i] for i in sorted(range(k), key=lambda i: (kl[i], i))]
    cmp = compare_mod.Comparison.__new__(compare_mod.Comparison)
    cmp.contexts, cmp.inputs = {0: ctx}, {0: inputs}
    build, _, _ = cmp._table(0.5, 0, lambda problem, t: order)
    _, extra = build(table_ms)
    # the next two by the choice images: more would take every measurement left at a closed bracket
    assert extra["choice"] == order[0] and [key for key, _ in extra["alternatives"]] == [tuple(sorted(c.items())) for c in order[1:3]]
    assert extra["alternatives"][1][1]()[1]["choice"] == order[2] and extra["rank"] == 0

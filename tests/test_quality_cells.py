"""The budget cells' bookkeeping (``benchmarks.budget_cells``): a baseline whose own training
already matched lana's compute is repeated, not trained again, and random-best that is random's
own draw reuses random's network."""
from __future__ import annotations

import pytest


def test_a_baseline_that_had_lanas_compute_already_is_not_trained_again():
    from types import SimpleNamespace

    from benchmarks.budget_cells import equal_compute

    def row(method, seed, val, train_s):
        return {"method": method, "budget": 0.5, "seed": seed, "val_top1": val, "top1": val, "train_s": train_s,
                "search_s": 5.0, "finetune_s": 10.0, "setting": ""}
    rows = [{"method": "teacher", "budget": 1.0, "val_top1": 93.0, "train_s": 0.0, "search_s": 0.0, "finetune_s": 0.0}]
    rows += [row("lana", s, 90.0, 100.0) for s in (0, 1)] + [row("random-best", s, 85.0 + s, 100.0) for s in (0, 1)]
    rows += [row("tp-taylor", s, 80.0, 10.0) for s in (0, 1)]
    models = [f"net{i}" for i in range(len(rows))]
    cmp = SimpleNamespace(rows=list(rows), models=list(models), seeds=[0, 1], found={},
                          ctx=SimpleNamespace(config=SimpleNamespace(finetune=SimpleNamespace(epochs=2.0))),
                          train_and_add=lambda *a, **k: pytest.fail("random-best had lana's compute: not trained again"))
    equal_compute(cmp, 0.5, 8.0, {0: 90.0, 1: 90.0})
    added = cmp.rows[len(rows):]
    assert [(r["method"], r["seed"], r["val_top1"]) for r in added] == [("random-best (lana's compute)", 0, 85.0),
                                                                        ("random-best (lana's compute)", 1, 86.0)]
    assert cmp.models[len(models):] == ["net3", "net4"]  # the same networks: the final re-timing stays aligned
    assert "105 s ≥ lana's 105 s" in added[0]["setting"]


@pytest.mark.parametrize("pick", [0, 1])
@pytest.mark.parametrize("earlier", [[], [{"method": "tp-taylor", "budget": 0.3, "seed": 1, "note": "missed the band"}]])
def test_random_best_that_is_randoms_own_draw_is_not_trained_twice(monkeypatch, pick, earlier):
    """``earlier``: rows of a budget before, a miss among them (a row without a network): random-best
    still reuses random's own network, not the one at random's row index."""
    from types import SimpleNamespace

    from benchmarks import budget_cells

    draws = [SimpleNamespace(model=f"draw{i}", seconds=2.0) for i in range(2)]
    trained = []

    def train_and_add(method, share, found, seed, search_s, base_s=0.0):
        trained.append((method, found.model))
        cmp.rows.append({"method": method, "budget": share, "seed": seed, "val_top1": 80.0 + len(trained), "search_s": search_s})
        cmp.models.append(f"tuned {found.model}")

    teacher = SimpleNamespace(model="timm:resnet18d", kwargs={})
    cmp = SimpleNamespace(rows=list(earlier), models=[], seeds=[0], found={}, val=(None, None), train_and_add=train_and_add,
                          random_draws=lambda share, seed: draws, ctx=SimpleNamespace(config=SimpleNamespace(teacher=teacher)))
    monkeypatch.setattr(budget_cells, "evaluate", lambda model, *a: (0.0, 1.0 if model == f"draw{pick}" else 0.0))
    budget_cells.run_budget(cmp, 0.5, ("random",), 2, {0: 100.0})
    assert cmp.rows[:len(earlier)] == earlier
    cmp.rows = cmp.rows[len(earlier):]
    assert [r["method"] for r in cmp.rows] == ["random", "random-best"]
    assert cmp.found[("random-best", 0.5, 0)] is draws[pick]
    if pick == 0:  # random's own draw: its fine-tuned network and results, one training
        assert trained == [("random", "draw0")] and cmp.models == ["tuned draw0", "tuned draw0"]
        assert cmp.rows[1]["val_top1"] == cmp.rows[0]["val_top1"] and cmp.rows[1]["search_s"] >= 4.0
    else:
        assert trained == [("random", "draw0"), ("random-best", "draw1")] and cmp.models == ["tuned draw0", "tuned draw1"]

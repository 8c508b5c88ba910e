"""The quality benchmark's converged teachers: cached by recipe hash, reused, resumed after a
stop, and listed by ``--teachers-only``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import quality_benchmark


# -- converged teachers: the cache ---------------------------------------------------------
DEMO = "lana.teacher.demo_net:demo_resnet"
DEMO_KWARGS = {"num_classes": 10, "in_chans": 1, "widths": [8, 16], "depth": 1}


def _tiny_recipe(**changes):
    from benchmarks.teachers import merge_recipe

    data = {"kind": "synthetic", "image_size": 12, "val_size": 100, "seed": 3}
    return merge_recipe({"epochs": 2, "batch_size": 20, "lr": 0.05, "data": data, "pad_crop": 0, "hflip": False, **changes})


def test_teacher_is_cached_by_recipe_hash_reused_and_resumed_after_a_stop(tmp_path, monkeypatch, one_thread):
    from benchmarks import teachers

    recipe = _tiny_recipe()
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    # a run stopped after epoch 1 leaves its per-epoch checkpoint and no teacher
    assert teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=stopped, stop_after=1) is None
    folder = stopped / teachers.recipe_hash(DEMO, DEMO_KWARGS, recipe)[:16]
    assert (folder / "checkpoint.pt").is_file() and not (folder / "teacher.pt").exists()
    first_epoch = torch.load(folder / "checkpoint.pt", weights_only=True)["state"]["history"]
    assert [h["epoch"] for h in first_epoch] == [1]
    # started again, it trains epoch 2 only, and ends where an uninterrupted run ends
    resumed = teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=stopped)
    assert resumed["trained_now"] == 1 and resumed["history"][0] == first_epoch[0]
    whole = teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=straight)
    assert whole["trained_now"] == 2
    assert [h["val_top1"] for h in whole["history"]] == [h["val_top1"] for h in resumed["history"]]
    a, b = torch.load(resumed["weights"], weights_only=True), torch.load(whole["weights"], weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the record: recipe, hash, the epoch chosen on validation, its figures
    vals = [h["val_top1"] for h in whole["history"]]
    assert whole["chosen_epoch"] == vals.index(max(vals)) + 1 and whole["val_top1"] == max(vals)
    assert whole["recipe"] == recipe and whole["hash"] == teachers.recipe_hash(DEMO, DEMO_KWARGS, recipe)
    assert whole["history"][-1]["test_top1"] > 50 and not (folder / "checkpoint.pt").exists()
    # reused without training: the same record, the same file
    monkeypatch.setattr(teachers, "_train", lambda *a, **k: pytest.fail("a cached teacher was trained again"))
    mtime = Path(resumed["weights"]).stat().st_mtime_ns
    again = teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=stopped)
    assert again["trained_now"] == 0 and again["weights"] == resumed["weights"]
    assert Path(again["weights"]).stat().st_mtime_ns == mtime
    # another recipe (or another model) is another teacher
    other = _tiny_recipe(lr=0.02)
    assert teachers.recipe_hash(DEMO, DEMO_KWARGS, other) != whole["hash"]
    assert teachers.recipe_hash(DEMO, {**DEMO_KWARGS, "depth": 2}, recipe) != whole["hash"]
    assert teachers.cached(DEMO, DEMO_KWARGS, other, stopped) is None


def test_teacher_augmentation_shifts_by_at_most_the_padding_and_flips():
    from benchmarks.teachers import augment

    x = torch.zeros(64, 1, 8, 10)
    x[:, 0, 3, 2] = 1.0  # one bright pixel in the left half, 2 from the edge: a crop never loses it
    out = augment(x, torch.Generator().manual_seed(0), pad=2, flip=True, fill=torch.zeros(1, 1, 1, 1))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), torch.ones(64))
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where.div(10, rounding_mode="floor"), where % 10
    assert set((rows - 3).tolist()) == {-2, -1, 0, 1, 2}
    flipped = cols >= 5  # a flip moves the pixel to the right half (column 7 ± 2)
    assert 10 < int(flipped.sum()) < 54 and ((cols - 2).abs() <= 2)[~flipped].all() and ((cols - 7).abs() <= 2)[flipped].all()
    assert torch.equal(augment(x, torch.Generator(), pad=0, flip=False, fill=torch.zeros(1)), x)


def test_teacher_cache_location_and_recipe_errors(tmp_path, monkeypatch, capsys):
    from benchmarks.teachers import cache_root, merge_recipe

    monkeypatch.setenv("LANA_TEACHER_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("LANA_TEACHER_CACHE")
    assert cache_root() == Path.home() / ".cache" / "lana" / "quality-teachers"
    with pytest.raises(KeyError, match="unknown recipe key 'epoch'"):
        merge_recipe({"epoch": 3})
    with pytest.raises(SystemExit) as info:
        quality_benchmark().main(["--teachers-only", "--recipe", '{"epoch": 3}'])
    assert info.value.code == 2 and "unknown recipe key 'epoch'" in capsys.readouterr().err


def test_teachers_only_prints_the_table_of_cached_teachers(tmp_path, monkeypatch, capsys, one_thread):
    bench = quality_benchmark()
    monkeypatch.setenv("LANA_TEACHER_CACHE", str(tmp_path))
    monkeypatch.setitem(bench.MODES, "tiny", {**bench.MODES["cpu"], "image_size": 12, "recipe": _tiny_recipe(epochs=1),
                                              "teachers": {"demo": (DEMO, DEMO_KWARGS)}})
    assert bench.main(["--mode", "tiny", "--teachers-only"]) == 0
    out = capsys.readouterr().out
    assert "| demo | lana.teacher.demo_net:demo_resnet |" in out and "| 1 / 1 |" in out and str(tmp_path) in out
    import torch

    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    assert bench.main(["--mode", "tiny", "--teachers-only", "--threads", "2"]) == 0  # the cached teacher, on 2 threads
    assert asked == [2] and "| demo |" in capsys.readouterr().out


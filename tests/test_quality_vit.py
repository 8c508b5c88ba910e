"""The quality benchmark's vision transformer: its recipe, its alternatives, and a reduced run.

A DeiT-Tiny-shaped timm ViT (tiny here) goes through the same comparison as the CNN
teachers: Torch-Pruning removes whole heads and MLP hidden units (the token width kept),
the narrower and shallower ViTs come from the same family, and lana gets the token ops.
"""
from __future__ import annotations

import importlib

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from benchmarks.baselines import DEIT, MEMBERS, prune_magnitude, prune_taylor, width_scaled
from lana.teacher.load import build_model

TINY_VIT = {"num_classes": 10, "in_chans": 1, "img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 2,
            "num_heads": 3, "mlp_ratio": 4.0}


def _load_benchmark():
    """``benchmarks.quality`` itself: a mode a test adds to its ``MODES`` is seen by ``benchmarks.quality_run`` too."""
    return importlib.import_module("benchmarks.quality")


def test_vit_pruning_removes_heads_and_mlp_units_and_keeps_the_token_width(one_thread):
    torch.manual_seed(0)
    teacher = build_model(DEIT, TINY_VIT).eval()
    x = torch.randn(4, 1, 16, 16)
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    for ratio, heads in ((0.3, 2), (0.5, 1), (0.95, 1)):  # per layer: ceil(ratio × 3) heads go, never the last one
        for pruned in (prune_magnitude(teacher, (1, 16, 16), ratio, 10), prune_taylor(teacher, batches, ratio, 10)):
            assert [b.attn.num_heads for b in pruned.blocks] == [heads, heads]
            assert all(b.attn.qkv.out_features == 3 * heads * 8 and b.attn.proj.in_features == heads * 8 for b in pruned.blocks)
            assert all(b.mlp.fc1.out_features < 96 and b.mlp.fc2.out_features == 24 for b in pruned.blocks)
            assert pruned.cls_token.shape[-1] == 24 and pruned.head.out_features == 10
            assert pruned(x).shape == (4, 10)
    assert prune_taylor(teacher, batches, 0.0, 10).blocks[0].attn.num_heads == 3


def test_vit_width_and_shallower_members_are_the_same_family():
    narrow = width_scaled(DEIT, TINY_VIT, 0.5)
    assert narrow.embed_dim == 12 and narrow.blocks[0].attn.num_heads == 3 and narrow.blocks[0].mlp.fc1.out_features == 48
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert width_scaled(DEIT, TINY_VIT, 0.01).embed_dim == 6  # two channels a head at the least
    # without embed_dim / num_heads in kwargs, the named model's own (DeiT-Tiny: 192, 3 heads)
    assert width_scaled(DEIT, {k: v for k, v in TINY_VIT.items() if k not in ("embed_dim", "num_heads")}, 0.25).embed_dim == 48
    depths = {label: len(width_scaled(model, {**TINY_VIT, **extra}, 1.0).blocks) for label, model, extra in MEMBERS[DEIT]}
    assert depths == {"depth 6": 6, "depth 4": 4}


def test_vit_recipe_uses_adamw_and_leaves_the_cnn_teachers_hashes_alone(tmp_path, capsys):
    from benchmarks.teachers import merge_recipe, recipe_hash

    bench = _load_benchmark()
    vit = bench.recipe_for("cpu", "vit")
    assert vit["optimizer"] == "adamw"
    model, kwargs = bench.MODES["cpu"]["teachers"]["vit"]
    # the ViT teacher: a second, shorter schedule at a lower learning rate from one 60-epoch schedule
    # from scratch (cached as 51b90e7ddd3d710c), both with ResNet-18-D's top class as a second label
    # (DeiT's hard distillation) and an EMA of the weights
    first = vit["init"]
    assert recipe_hash(first["model"], first["kwargs"], first["recipe"])[:16] == "51b90e7ddd3d710c"
    assert recipe_hash(model, kwargs, vit)[:16] == "bab7b66d6e978fb7" and first["recipe"]["epochs"] == 60
    # the 40-epoch chain before it (91.98 % test, docs/benchmarks.md) keeps its cache folders
    deit2 = bench._resolve("cpu", merge_recipe(bench.VIT_DEIT2_RECIPE, bench.teacher_recipe("cpu")), None)
    assert recipe_hash(model, kwargs, deit2)[:16] == "b911623791953ebc"
    assert recipe_hash(model, kwargs, deit2["init"]["recipe"])[:16] == "ab83772e489a24b3"
    assert "init" not in first["recipe"] and first["recipe"]["epochs"] > bench.recipe_for("cpu", "resnet")["epochs"]
    assert vit["lr"] < first["recipe"]["lr"] and vit["epochs"] < first["recipe"]["epochs"]
    for recipe in (vit, first["recipe"]):
        assert recipe["kd"]["hard"] and recipe["kd"]["alpha"] == 0.5 and "key" not in recipe["kd"] and recipe["ema"] == 0.999
        assert recipe_hash(recipe["kd"]["model"], recipe["kd"]["kwargs"], recipe["kd"]["recipe"])[:16] == "25a77904e4e4b812"
    assert recipe_hash(model, kwargs, vit)[:16] not in ("9ecf1608b947576b", "c0aa0e9e29bf1118")
    # the chain it replaces (docs/benchmarks.md) keeps its cache folders: its third schedule, the
    # fourth (tried, not kept) from the third, the second and the first (the 40-epoch run)
    third = bench._resolve("cpu", merge_recipe(bench.VIT_HARD_RECIPE, bench.teacher_recipe("cpu")), None)
    assert recipe_hash(model, kwargs, third)[:16] == "9ecf1608b947576b"
    fourth = bench._resolve("cpu", merge_recipe(bench.VIT_HARD2_RECIPE, bench.teacher_recipe("cpu")), None)
    assert recipe_hash(model, kwargs, fourth)[:16] == "e2ff758696937665"
    assert recipe_hash(model, kwargs, fourth["init"]["recipe"])[:16] == "9ecf1608b947576b"
    second = third["init"]
    assert recipe_hash(second["model"], second["kwargs"], second["recipe"])[:16] == "f476d0df87421aee"
    first = second["recipe"]["init"]
    assert recipe_hash(first["model"], first["kwargs"], first["recipe"])[:16] == "c0aa0e9e29bf1118"
    for kd in (third["kd"], fourth["kd"], second["recipe"]["kd"]):
        assert recipe_hash(kd["model"], kd["kwargs"], kd["recipe"])[:16] == "25a77904e4e4b812"
        assert kd["alpha"] == 0.5 and "key" not in kd
    assert third["kd"]["hard"] and fourth["kd"]["hard"] and not second["recipe"]["kd"].get("hard")
    assert third["ema"] == fourth["ema"] == 0.999 and fourth["lr"] < third["lr"]
    assert first["recipe"]["optimizer"] == "adamw" and "init" not in first["recipe"]
    # the CNN teachers' cache folders (docs/benchmarks.md) are the same after the ViT's recipe keys were added
    model, kwargs = bench.MODES["cpu"]["teachers"]["resnet"]
    assert recipe_hash(model, kwargs, bench.recipe_for("cpu", "resnet"))[:16] == "25a77904e4e4b812"
    model, kwargs = bench.MODES["cpu"]["teachers"]["efficientnet"]  # its 15-epoch run (90.47 %) under the common recipe
    assert recipe_hash(model, kwargs, bench.teacher_recipe("cpu", {"epochs": 15}))[:16] == "407f3ceec8664ec4"
    # its teacher: a second schedule from its 40-epoch run, with ResNet-18-D's soft targets
    eff = bench.recipe_for("cpu", "efficientnet")
    assert recipe_hash(eff["init"]["model"], eff["init"]["kwargs"], eff["init"]["recipe"])[:16] == "1ba508c2feb0206a"
    assert recipe_hash(eff["kd"]["model"], eff["kd"]["kwargs"], eff["kd"]["recipe"])[:16] == "25a77904e4e4b812"
    assert not eff["kd"].get("hard") and eff["ema"] == 0.999 and eff["lr"] < eff["init"]["recipe"]["lr"]
    model, kwargs = bench.MODES["cpu"]["teachers"]["mobilenet"]  # 40 epochs, training since 2026-12-05
    assert recipe_hash(model, kwargs, bench.recipe_for("cpu", "mobilenet"))[:16] == "1427cffba4a13055"
    # the GPU mode's ViT follows the same recipe, at its own image size and from its own ResNet-18-D
    gpu = bench.recipe_for("gpu", "vit")
    assert gpu["kd"]["hard"] and gpu["kd"]["kwargs"] == bench.MODES["gpu"]["teachers"]["resnet"][1]
    assert {gpu["data"]["image_size"], gpu["kd"]["recipe"]["data"]["image_size"]} == {64}
    # --recipe comes last: a short trial shortens a teacher that has its own epoch count
    assert bench.recipe_for("cpu", "vit", {"epochs": 2})["epochs"] == 2
    assert bench.recipe_for("cpu", "vit", {"epochs": 2})["optimizer"] == "adamw"
    assert bench.recipe_for("cpu", "vit", {"epochs": 2})["kd"]["recipe"]["epochs"] == 2  # the teacher it learns from too
    third = bench._resolve("cpu", merge_recipe(bench.VIT_HARD_RECIPE, bench.teacher_recipe("cpu", {"epochs": 2})), {"epochs": 2})
    assert third["init"]["recipe"]["epochs"] == 2  # and the ones a schedule starts from
    with pytest.raises(ValueError, match="optimizer 'adam' is not one of sgd, adamw"):
        merge_recipe({"optimizer": "adam"})
    with pytest.raises(SystemExit) as info:
        bench.main(["--teachers-only", "--recipe", '{"optimizer": "lion"}'])
    assert info.value.code == 2 and "optimizer 'lion'" in capsys.readouterr().err


def test_vit_takes_no_weight_decay_on_its_embeddings():
    from benchmarks.teachers import _optimiser, merge_recipe

    model = build_model(DEIT, TINY_VIT)
    optimiser = _optimiser(model, merge_recipe({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}))
    assert isinstance(optimiser, torch.optim.AdamW)
    decayed, free = (set(map(id, g["params"])) for g in optimiser.param_groups)
    assert id(model.pos_embed) in free and id(model.cls_token) in free and id(model.blocks[0].attn.qkv.weight) in decayed
    assert id(model.blocks[0].norm1.weight) in free and optimiser.param_groups[0]["weight_decay"] == 0.05


def test_reduced_benchmark_runs_every_method_on_a_vit(tmp_path, monkeypatch, one_thread):
    """A tiny ViT teacher (AdamW recipe, cached), one budget, one seed: every method gives a row; lana gets token ops."""
    bench = _load_benchmark()
    config = tiny_config(latency={"batch_size": 32, "warmup": 1, "repeats": 5, "threads": 1, "clock": "process", "time_cap_s": 0.1})
    tree = config.model_dump(mode="json")
    tree["teacher"] = {"model": DEIT, "kwargs": TINY_VIT}
    tree["ops"] = {"include": ["identity", "conv_k1"]}  # the CNN teachers' list: replaced for the ViT below
    tree["distill"]["max_steps"] = 4
    tree["finetune"]["epochs"] = 0.1
    tree["teacher_training"]["epochs"] = 0.1
    tree["score"]["val_images"] = 120
    recipe = {"epochs": 1, "batch_size": 32,
              "data": {"kind": "digits", "image_size": 16, "val_size": 200, "train_limit": 400, "mean": [0.3], "std": [0.42]}}
    monkeypatch.setenv("LANA_TEACHER_CACHE", str(tmp_path / "teachers"))
    monkeypatch.setitem(MEMBERS, DEIT, [("depth 1", DEIT, {"depth": 1})])  # shallower than the tiny teacher
    vit_ops = ["identity", "attn_heads50", "attn_removed", "mlp_keep50", "mlp_removed", "token_pool"]
    monkeypatch.setitem(bench.MODES, "tiny", {
        "image_size": 16, "tree": tree, "random": 2, "threads": 1, "jobs": 1, "recipe": recipe, "shares": [0.85],
        "seeds": [0], "max_measurements": 6, "max_equal_epochs": 0.2, "band": (0.75, 1.0),
        "teachers": {"vit": (DEIT, TINY_VIT)},
        "teacher_recipes": {"vit": {**bench.VIT_RECIPE, "epochs": 1, "warmup_epochs": 0}},
        "teacher_trees": {"vit": {"ops": {"include": vit_ops}}}})
    assert bench.main(["--mode", "tiny", "--run", str(tmp_path / "q"), "--docs", str(tmp_path / "docs")]) == 0
    frame = pd.read_csv(tmp_path / "q" / "quality.csv")
    expected = {"teacher", "lana", "random", "random-best", "tp-taylor", "tp-magnitude", "width", "member:depth 1"}
    assert expected <= set(frame["method"]), set(frame["method"])
    # every method has a network with figures, or one row saying why its search missed
    for method, rows in frame[frame["method"] != "teacher"].groupby("method"):
        reached = rows.dropna(subset=["top1"])
        assert not reached.empty or rows["note"].str.contains("cannot reach|missed the band|no random draw").all(), method
        assert reached["share"].between(0.85 * 0.75 - 1e-9, 0.85 + 1e-9).all(), method
    # lana's table: both transformer blocks found, the token ops built for them (and no conv op)
    table = pd.read_csv(tmp_path / "q" / "vit" / "seed0" / "candidates.csv")
    assert set(table["block"]) == {"blocks.0", "blocks.1"}
    assert {"attn_heads50", "attn_removed", "mlp_keep50", "mlp_removed", "token_pool"} <= set(table["candidate"])
    assert "conv_k1" not in set(table["candidate"])
    # the teacher came from the cache, trained once with the ViT's own recipe (AdamW)
    record = pd.read_json(next((tmp_path / "teachers").glob("*/teacher.json")), typ="series")
    assert record["recipe"]["optimizer"] == "adamw" and record["recipe"]["epochs"] == 1
    # the report says how the transformer's alternatives were made, with the ops lana had
    text = (tmp_path / "docs" / "quality.md").read_text()
    assert "vision transformer" in text and "identity, attn_heads50, attn_removed" in text and "| tp-taylor |" in text


def test_the_vit_gets_its_own_lana_settings_and_the_cnns_keep_theirs():
    bench = _load_benchmark()
    vit = bench.teacher_config("cpu", "vit", "random", bench.recipe_for("cpu", "vit"), None, [])
    resnet = bench.teacher_config("cpu", "resnet", "random", bench.recipe_for("cpu", "resnet"), None, [])
    assert vit.ops.include == bench.VIT_OPS and vit.latency.batch_size == 32 and vit.teacher_training.lr == 1e-3
    assert resnet.ops.include == bench.CPU_OPS and resnet.latency.batch_size == 128 and resnet.teacher_training.lr == 4e-3
    assert vit.finetune == resnet.finetune and vit.distill == resnet.distill and vit.data == resnet.data  # the same rules


DEMO = "lana.teacher.demo_net:demo_resnet"
DEMO_KWARGS = {"num_classes": 10, "in_chans": 1, "widths": [8, 16], "depth": 1}


def _tiny_recipe(**changes):
    from benchmarks.teachers import merge_recipe

    data = {"kind": "synthetic", "image_size": 12, "val_size": 100, "seed": 3, **changes.pop("data", {})}
    return merge_recipe({"epochs": 2, "batch_size": 20, "lr": 0.05, "data": data, "pad_crop": 0, "hflip": False, **changes})


def test_a_teacher_can_start_from_another_and_learn_from_a_third(tmp_path, one_thread):
    """``init``: the second schedule starts from the first's chosen weights; ``kd``: soft targets in the loss."""
    from benchmarks import teachers

    first = _tiny_recipe(epochs=1)
    other = {"model": DEMO, "kwargs": DEMO_KWARGS, "recipe": first}
    # lr 0: the weights stay the first teacher's (BatchNorm's running statistics still move)
    frozen = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(epochs=1, lr=0.0, init=other), root=tmp_path)
    parent = teachers.cached(DEMO, DEMO_KWARGS, first, tmp_path)  # trained first, as it was missing
    assert parent is not None
    a, b = torch.load(frozen["weights"], weights_only=True), torch.load(parent["weights"], weights_only=True)
    weights = [k for k in a if k.endswith(("weight", "bias"))]
    assert len(weights) > 4 and all(torch.equal(a[k], b[k]) for k in weights)
    torch.manual_seed(first["seed"])  # what the second schedule would start from without init: its own seeded draw
    own = build_model(DEMO, DEMO_KWARGS).state_dict()
    assert not all(torch.equal(own[k], a[k]) for k in weights)
    assert frozen["wall_s"] == pytest.approx(frozen["own_wall_s"] + parent["wall_s"])
    # the soft targets change the loss (same start, same batches); alpha 0 is the plain loss
    plain = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(epochs=1, init=other), root=tmp_path)
    taught = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(epochs=1, init=other, kd={**other, "alpha": 0.5, "temperature": 2.0}),
                                      root=tmp_path)
    none = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(epochs=1, init=other, kd={**other, "alpha": 0.0, "temperature": 2.0}),
                                    root=tmp_path)
    assert taught["history"][0]["train_loss"] != plain["history"][0]["train_loss"] == none["history"][0]["train_loss"]
    assert len({plain["hash"], taught["hash"], none["hash"], parent["hash"]}) == 4
    # hard distillation: the teacher's top class as a second label, another loss again
    hard = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(epochs=1, init=other, kd={**other, "alpha": 0.5, "temperature": 2.0,
                                                                                              "hard": True}), root=tmp_path)
    assert len({hard["history"][0]["train_loss"], taught["history"][0]["train_loss"], plain["history"][0]["train_loss"]}) == 3
    # a teacher on another split cannot start the schedule
    elsewhere = {**other, "recipe": _tiny_recipe(epochs=1, data={"image_size": 16})}
    with pytest.raises(ValueError, match="'init' teacher's recipe has another data split"):
        teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(init=elsewhere), root=tmp_path)
    temp = torch.tensor([[2.0, 0.0, -1.0]])
    assert teachers.soft_loss(temp, temp, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert teachers.soft_loss(temp, -temp, 2.0).item() > 0


def test_a_teacher_can_keep_a_moving_average_of_its_weights_and_resume_it(tmp_path, one_thread):
    """``ema``: each epoch's network is the average (chosen, saved); a stopped run resumes it exactly."""
    from benchmarks import teachers

    recipe = _tiny_recipe(ema=0.9)
    assert teachers.recipe_hash(DEMO, DEMO_KWARGS, recipe) != teachers.recipe_hash(DEMO, DEMO_KWARGS, _tiny_recipe())
    assert teachers.recipe_hash(DEMO, DEMO_KWARGS, _tiny_recipe()) == teachers.recipe_hash(DEMO, DEMO_KWARGS, _tiny_recipe(ema=None))
    stopped, straight, plain = tmp_path / "stopped", tmp_path / "straight", tmp_path / "plain"
    assert teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=stopped, stop_after=1) is None
    resumed = teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=stopped)
    whole = teachers.prepare_teacher(DEMO, DEMO_KWARGS, recipe, root=straight)
    assert resumed["trained_now"] == 1 and whole["trained_now"] == 2
    assert [h["val_top1"] for h in resumed["history"]] == [h["val_top1"] for h in whole["history"]]
    a, b = torch.load(resumed["weights"], weights_only=True), torch.load(whole["weights"], weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the saved network is the average, not the last raw weights: it differs from the same schedule without ema
    assert all("raw_val_top1" in h for h in whole["history"])
    without = teachers.prepare_teacher(DEMO, DEMO_KWARGS, _tiny_recipe(), root=plain)
    assert "raw_val_top1" not in without["history"][0]
    c = torch.load(without["weights"], weights_only=True)
    assert a.keys() == c.keys() and not all(torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    model = build_model(DEMO, DEMO_KWARGS)
    model.load_state_dict(a)  # an ordinary state_dict: lana loads it as any teacher


def test_latency_error_times_the_quality_benchmarks_vit_with_its_token_ops():
    """``benchmarks.latency_error --families vit``: the benchmark's ViT, its token ops on all 12 blocks."""
    from benchmarks import latency_error
    from lana.config import OpsConfig
    from lana.distill.candidates import build_all_candidates
    from lana.teacher.blocks import discover_blocks

    bench = _load_benchmark()
    model, kwargs, shape, batch = latency_error.FAMILIES["vit"]
    assert (model, kwargs) == bench.MODES["cpu"]["teachers"]["vit"] and shape == (1, 28, 28) and batch == 32
    teacher = build_model(model, kwargs).eval()
    specs = discover_blocks(teacher, (1, *shape))
    cands = build_all_candidates(specs, OpsConfig(include=latency_error.FAMILY_OPS["vit"]))
    assert len(specs) == 12 and all({"attn_heads50", "mlp_keep50", "identity"} <= set(c) for c in cands.values())

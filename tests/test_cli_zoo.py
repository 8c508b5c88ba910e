"""``lana ops`` and ``lana blocks``: the op zoo and the candidates each block is offered."""
from __future__ import annotations

import fnmatch
import json

import pytest
import torch
import yaml
from conftest import run_main
from typer.testing import CliRunner

import op_zoo
from lana.cli import app as cli
from lana.config import build_config
from lana.distill.candidates import build_all_candidates
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

runner = CliRunner()
SMALL_OPS = ["identity", "conv_k1", "mbconv_k3_e1", "pruned_keep50", "avgpool_conv_k1", "s2d_conv_k1"]
# The demo ResNet, narrow: one same-shape block and one strided, channel-doubling block.
DEMO = {
    "teacher": {"checkpoint": "random", "kwargs": {"num_classes": 10, "in_chans": 1, "widths": [16, 32], "depth": 1}},
    "data": {"kind": "synthetic", "channels": 1, "image_size": 16, "val_size": 100},
}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread (two on a shared 2-core machine makes small convs ~30× slower). No wide console
    is patched in: off a terminal lana's own consoles keep every row on one line."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str):
    result = runner.invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table, cells stripped."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


def write_config(path, tree: dict):
    path.write_text(yaml.safe_dump(tree))
    return path


def block_counts(config_path, *extra: str) -> dict[str, int]:
    output = invoke("blocks", "--config", str(config_path), *extra)
    return {row[0]: int(row[-1]) for row in table_rows(output)}


# --- lana ops -------------------------------------------------------------------------


def test_ops_table_lists_every_op_with_one_line_description_and_source():
    defs = op_zoo.list_ops()
    output = invoke("ops")
    assert f"{len(defs)} ops" in output
    assert table_rows(output) == [[d.name, d.family, d.description, d.source] for d in defs]
    for d in defs:
        assert d.description and d.source and "\n" not in d.description + d.source, d.name


def test_ops_json_matches_the_registry():
    rows = json.loads(invoke("ops", "--json"))
    assert [r["name"] for r in rows] == [d.name for d in op_zoo.list_ops()]
    assert all(set(r) == {"name", "family", "description", "source"} for r in rows)
    assert len(rows) >= 100 and len({r["family"] for r in rows}) >= 12


@pytest.mark.parametrize("pattern", ["mbconv_k3_*", "*_relu", "pruned_keep?0", "lowrank_*", "[gr]*"])
def test_ops_pattern_filter(pattern):
    every = [d.name for d in op_zoo.list_ops()]
    names = [r["name"] for r in json.loads(invoke("ops", pattern, "--json"))]
    assert names == sorted(fnmatch.filter(every, pattern)) and names
    table = [row[0] for row in table_rows(invoke("ops", pattern))]
    assert table == names


def test_ops_pattern_matching_nothing_is_an_error():
    from lana.errors import UnknownOpError

    result = runner.invoke(cli.app, ["ops", "no_such_op*", "--json"])
    assert result.exit_code != 0 and isinstance(result.exception, UnknownOpError)
    assert "no op matches 'no_such_op*'" in str(result.exception)


USER_OPS = """
from torch import nn
from op_zoo import BlockSpec, ConvBnAct, geometry_ok, register_op


@register_op("{name}", family="user", description="3x3 conv-BN-act, any stride", source="tests, 2025")
def user_conv(spec: BlockSpec):
    if not geometry_ok(spec):
        return None
    return ConvBnAct(spec.in_channels, spec.out_channels, 3, spec.stride, act=spec.act)
"""


def test_ops_and_blocks_with_user_op_module(tmp_path, monkeypatch):
    from op_zoo import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))  # restored after
    name = f"user_conv_{tmp_path.name.lower().replace('-', '_')}"
    module = tmp_path / f"{name}_ops.py"
    module.write_text(USER_OPS.format(name=name))
    tree = {**DEMO, "ops": {"modules": [str(module)], "include": [name, "identity"]}}
    config = write_config(tmp_path / "user.yaml", tree)
    rows = json.loads(invoke("ops", "user_*", "--json", "--config", str(config)))
    assert rows == [{"name": name, "family": "user", "description": "3x3 conv-BN-act, any stride", "source": "tests, 2025"}]
    assert block_counts(config) == {"layers.0": 3, "layers.1": 2}


# --- lana blocks ----------------------------------------------------------------------


def test_blocks_prints_names_shapes_and_candidate_counts(tmp_path):
    tree = {
        "teacher": {"model": "timm:resnet18", "checkpoint": "random", "kwargs": {"num_classes": 10}},
        "data": {"kind": "synthetic", "channels": 3, "image_size": 32},
        "ops": {"include": SMALL_OPS},
    }
    output = invoke("blocks", "--config", str(write_config(tmp_path / "r18.yaml", tree)))
    config = build_config(tree)
    specs = discover_blocks(load_teacher("timm:resnet18", "random", {"num_classes": 10}), (1, 3, 32, 32))
    counts = {b: len(c) for b, c in build_all_candidates(specs, config.ops).items()}
    assert "8 blocks of timm:resnet18" in output
    expected = [
        [s.name, type(s.module).__name__, str([s.in_channels, *s.in_size]), str([s.out_channels, *s.out_size]), str(s.stride), s.act,
         str(counts[s.name])]
        for s in specs
    ]
    assert table_rows(output) == expected
    # teacher + conv_k1 + mbconv + pruned, then identity (same shape) or avgpool/s2d (strided)
    assert {s.name: counts[s.name] for s in specs if s.same_shape} == {s.name: 5 for s in specs if s.same_shape}
    assert {s.name: counts[s.name] for s in specs if s.stride == 2} == {s.name: 6 for s in specs if s.stride == 2}


def test_blocks_with_listed_names(tmp_path):
    tree = {**DEMO, "teacher": {**DEMO["teacher"], "blocks": ["layers.1"]}, "ops": {"include": SMALL_OPS}}
    rows = table_rows(invoke("blocks", "--config", str(write_config(tmp_path / "c.yaml", tree))))
    assert [r[:5] for r in rows] == [["layers.1", "BasicBlock", "[16, 8, 8]", "[32, 4, 4]", "2"]]


def test_full_zoo_offers_over_100_candidates_and_patterns_change_counts(tmp_path):
    config = write_config(tmp_path / "demo.yaml", DEMO)
    full = block_counts(config)
    assert list(full) == ["layers.0", "layers.1"] and min(full.values()) >= 100

    lowrank = len(op_zoo.list_ops("lowrank_*"))
    assert block_counts(config, "--set", "ops.exclude=['lowrank_*']") == {b: n - lowrank for b, n in full.items()}
    # teacher is always offered; identity only where the shape is kept
    assert block_counts(config, "--set", "ops.include=[identity]") == {"layers.0": 2, "layers.1": 1}
    assert block_counts(config, "--set", "ops.exclude=['*']") == {"layers.0": 1, "layers.1": 1}
    mbconv_k3 = len(op_zoo.list_ops("mbconv_k3_e?")) + len(op_zoo.list_ops("mbconv_k3_e?_se"))
    narrowed = block_counts(config, "--set", "ops.include=['mbconv_k3_*']", "--set", "ops.exclude=['*_1act','*_relu']")
    assert narrowed == {"layers.0": 1 + mbconv_k3, "layers.1": 1 + mbconv_k3}

    # a config file's include/exclude lists (not only --set) are applied
    tree = {**DEMO, "ops": {"include": ["mbconv_*", "fused_mbconv_*"], "exclude": ["*_se*"]}}
    filed = block_counts(write_config(tmp_path / "patterns.yaml", tree))
    allowed = [d.name for d in op_zoo.list_ops() if fnmatch.fnmatch(d.name, "*mbconv_*") and "_se" not in d.name]
    assert all(1 < n <= 1 + len(allowed) for n in filed.values()) and filed["layers.0"] < full["layers.0"]


# --- one-line errors ------------------------------------------------------------------



def test_unknown_op_pattern_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "typo.yaml", {**DEMO, "ops": {"include": ["mbconv_k3_e1", "mbconv_k9_*"]}})
    code, err = run_main(["blocks", "--config", str(config)], monkeypatch, capsys)
    assert code == 2 and err.startswith("lana: error:") and err.strip().count("\n") == 0
    assert "mbconv_k9_*" in err and "Traceback" not in err

    run = tmp_path / "run"
    code, err = run_main(["distill", "--config", str(config), "--run", str(run)], monkeypatch, capsys)
    assert code == 2 and err.startswith("lana: error:") and "mbconv_k9_*" in err
    # nothing is written, so the fixed config can reuse the same run folder
    assert not (run / "fingerprint.json").exists() and not (run / "weights").exists()


def test_unknown_op_module_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "mods.yaml", {**DEMO, "ops": {"modules": ["no_such_ops_module_h6"]}})
    code, err = run_main(["blocks", "--config", str(config)], monkeypatch, capsys)
    assert code == 2 and err.startswith("lana: error:") and "no_such_ops_module_h6" in err
    assert err.strip().count("\n") == 0

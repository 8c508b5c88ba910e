"""benchmarks/gpu_check.py and benchmarks/scale.py: they run end to end and say what they measured."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check, scale
from benchmarks.stage_probe import LazyImages


def test_gpu_check_refuses_without_cuda_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main([])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("gpu_check: no CUDA device") and "\n" not in err


def test_gpu_check_smoke_runs_every_stage_on_the_cpu(tmp_path, one_thread):
    """The CPU smoke mode: the same script, a tiny ResNet-18, every stage timed with its peak memory."""
    result = gpu_check.main(["--smoke", "--out", str(tmp_path / "r.json")])
    stages = result["stages"]
    for name in ("new_run", "distill_stage", "  distill", "  score", "  latency", "solve", "finetune", "export"):
        assert stages[name]["seconds"] >= 0 and stages[name]["peak_rss_mib"] > 0, name
    assert result["candidates"] == 2 * result["blocks"]  # the teacher's own block and conv_k1
    assert result["student_ms"] > 0 and result["verdict"]["total_s"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["smoke"] is True


def test_lazy_images_are_made_from_their_index():
    data = LazyImages(50_000, (3, 8, 8))
    first, label = data[49_999]
    assert len(data) == 50_000 and label == 49_999 % 10 and torch.equal(first, data[49_999][0])
    assert not torch.equal(first, data[0][0])
    with pytest.raises(IndexError):
        data[50_000]


def test_scale_eval_streams_a_lazy_split(one_thread):
    result = scale.main(["eval", "--images", "300", "--size", "16", "--model", "timm:resnet10t", "--batch", "50"])
    assert result["images"] == 300 and 0 <= result["top1"] <= 1
    assert list(result["rss_mib_at"]) == ["10%", "50%", "100%"]
    assert result["stages"]["evaluate"]["peak_rss_mib"] > 0

"""The graph export formats (pt2, aoti, onnx): each saved, reloaded from disk and matched
against eager at two batch sizes; format parsing; clear errors for missing runtimes and for
models a graph cannot capture."""
from __future__ import annotations

import logging
import shutil
import sys
import zipfile

import pytest
import torch
from torch import nn

from lana.errors import ConfigError, ExportError
from lana.export import aoti, onnx
from lana.export.verify import FORMATS, check_artifact, export_and_verify, format_module, parse_formats

ATOL = 1e-4
HAS_CXX = bool(shutil.which("g++") or shutil.which("c++"))


class TinyNet(nn.Module):
    """conv-bn-relu, a residual add, then pooling and a linear head, on 1×16×16 images."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.body(x)))


class ValueBranch(nn.Module):
    """A forward whose Python ``if`` reads a tensor's value: no graph can record it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.mean() > 0:
            return y.flatten(1)
        return -y.flatten(1)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(1))


GRAPH_FORMATS = [
    "pt2",
    pytest.param("aoti", marks=pytest.mark.skipif(not HAS_CXX, reason="AOTInductor needs a C++ compiler (g++/c++)")),
    pytest.param("onnx", marks=pytest.mark.skipif(not onnx.available(), reason="onnx/onnxruntime/onnxscript not installed")),
]


@pytest.mark.parametrize("name", GRAPH_FORMATS)
def test_save_reload_matches_eager(name, net, images, tmp_path):
    path = tmp_path / f"student{FORMATS[name].suffix}"
    info = export_and_verify(name, net, path, images, ATOL)
    assert path.is_file() and info["path"] == str(path) and info["max_abs_diff"] <= ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind
    reloaded = format_module(name).load(path)  # a fresh load, at batch sizes the export never saw
    with torch.no_grad():
        for batch in (images[:1], images[:5]):
            torch.testing.assert_close(torch.as_tensor(reloaded(batch)), net(batch), atol=ATOL, rtol=0)
    if name == "onnx":
        assert info["method"] == "dynamo", info.get("fallback_reason")
    if name == "aoti":
        assert info["compile_s"] > 0


def test_parse_formats():
    assert parse_formats("pt2") == ["pt2"]
    assert parse_formats(" PT2, pt2 ,") == ["pt2"]
    if aoti.available():
        assert parse_formats("aoti,pt2") == ["aoti", "pt2"]
    with pytest.raises(ConfigError, match="unknown export format.*tflite.*torchscript, pt2, aoti, onnx"):
        parse_formats("pt2,tflite")
    with pytest.raises(ConfigError, match="no export format given"):
        parse_formats(" , ")
    with pytest.raises(ConfigError, match="unknown export format 'bogus'"):
        format_module("bogus")


def test_missing_onnx_runtime(monkeypatch, net, images, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when absent
    assert not onnx.available()
    with pytest.raises(ExportError, match=r"onnxruntime missing\): pip install 'lana\[onnx\]'"):
        onnx.save(net, tmp_path / "student.onnx", images[:2])
    with pytest.raises(ExportError, match=r"pip install 'lana\[onnx\]'"):
        parse_formats("pt2,onnx")
    with caplog.at_level(logging.WARNING, logger="lana"):
        chosen = parse_formats("all")
    assert "pt2" in chosen and "onnx" not in chosen
    assert "skipping onnx" in caplog.text and "lana[onnx]" in caplog.text
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", GRAPH_FORMATS)
def test_value_dependent_branch_is_a_clear_error(name, images, tmp_path, caplog):
    torch.manual_seed(0)
    path = tmp_path / f"branch{FORMATS[name].suffix}"
    with caplog.at_level(logging.WARNING, logger="lana"), pytest.raises(ExportError) as err:
        format_module(name).save(ValueBranch(), path, images[:2])
    message = str(err.value)
    assert "ValueBranch" in message and "branches on a tensor's value" in message and "\n" not in message
    if name == "onnx":  # the legacy fallback was tried, said so, and refused the baked-in branch
        assert "legacy" in caplog.text and "wrong for other inputs" in message
    assert not path.exists() and not list(tmp_path.iterdir())


def test_check_artifact_catches_mismatch(net, images):
    with pytest.raises(ExportError, match="differs from eager"):
        check_artifact(lambda x: net(x) + 1e-2, net, images, ATOL)
    with pytest.raises(ExportError, match="batch dimension is not dynamic"):
        check_artifact(lambda x: net(x[:1]), net, images, ATOL)
    assert check_artifact(net, net, images, ATOL) == 0.0


def test_pt2_holds_two_example_rows_and_its_own_name(net, tmp_path):
    """torch.export.save stores the capture's example inputs: a whole check set made a 32 MB file."""
    many = torch.randn(512, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "student.pt2"
    export_and_verify("pt2", net, path, many, ATOL)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        samples = sum(i.file_size for i in archive.infolist() if "sample_inputs" in i.filename)
    assert {name.split("/")[0] for name in names} == {"student"}  # named after the file, not the temporary one
    assert samples < many[:4].numel() * 4 + 4096  # two rows (plus pickling), not 512

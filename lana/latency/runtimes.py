"""Deployment runtimes a module is timed in: eager PyTorch, TorchScript, ONNX Runtime.

``deployable`` turns an ``nn.Module`` into the callable that the device would run, so the
profiler, the latency check and ``lana export`` time the same thing. ONNX Runtime is an
optional dependency (``pip install onnx onnxruntime``, or ``onnxruntime-gpu`` for CUDA);
its import is guarded here and its error raised only when that runtime is asked for.
"""
from __future__ import annotations

import copy
import io
from typing import Callable

import torch
from torch import nn

import op_zoo
from lana.errors import ConfigError

try:  # optional: only the onnxruntime runtime needs it
    import onnxruntime as _ort
except ImportError:  # pragma: no cover - depends on the environment
    _ort = None


def onnx_available() -> bool:
    """Whether ONNX export and ONNX Runtime can be used here."""
    if _ort is None:
        return False
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def _need_onnx() -> None:
    if not onnx_available():
        raise ConfigError("latency.runtime 'onnxruntime' needs the onnx and onnxruntime packages; "
                          "run `pip install onnx onnxruntime` (onnxruntime-gpu for CUDA) or pick eager / torchscript")


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The module as ONNX bytes (batch axis dynamic), re-parameterisable branches fused first."""
    _need_onnx()
    module = op_zoo.fuse_for_export(copy.deepcopy(module).eval().float().to(memory_format=torch.contiguous_format))
    buffer = io.BytesIO()
    sample = example.float().contiguous().cpu()
    module = module.cpu()
    with torch.no_grad():
        torch.onnx.export(module, (sample,), buffer, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


class OrtCallable:
    """An ONNX Runtime session called like a module on a torch tensor (I/O bound on the device)."""

    def __init__(self, onnx_bytes: bytes, device: torch.device, threads: int | None) -> None:
        _need_onnx()
        options = _ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        self.session = _ort.InferenceSession(onnx_bytes, options, providers=providers)
        self.device = device

    def __call__(self, x: torch.Tensor):
        if self.device.type != "cuda":
            return self.session.run(None, {"input": x.float().contiguous().numpy()})[0]
        import numpy as np

        x = x.float().contiguous()  # the graph is exported in fp32
        binding = self.session.io_binding()
        binding.bind_input("input", "cuda", self.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output("output", "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        return binding


def deployable(module: nn.Module, example: torch.Tensor, runtime: str, channels_last: bool = False,
               threads: int | None = None) -> Callable:
    """The callable the device runs: a prepared copy of ``module`` in ``runtime``.

    Args:
        module: the module (not modified).
        example: an input with the device, dtype and memory format to deploy with.
        runtime: ``eager``, ``torchscript`` (scripted, or traced when scripting fails, then frozen)
            or ``onnxruntime``.
        channels_last: convert the weights to channels-last memory format.
        threads: intra-op threads for ONNX Runtime (PyTorch's are set by the caller).

    Returns:
        A callable taking a tensor like ``example``.
    """
    if runtime == "onnxruntime":
        return OrtCallable(export_onnx(module, example), example.device, threads)
    module = copy.deepcopy(module).eval().to(device=example.device, dtype=example.dtype)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if runtime == "torchscript" and isinstance(module, torch.jit.ScriptModule):  # an exported artefact, as saved
        try:
            return torch.jit.freeze(module)
        except RuntimeError:  # already frozen
            return module
    if runtime == "torchscript":
        module = op_zoo.fuse_for_export(module)
        try:
            scripted = torch.jit.script(module)
        except Exception:  # some third-party modules only trace
            with torch.no_grad():
                scripted = torch.jit.trace(module, example)
        module = torch.jit.freeze(scripted.eval())
    elif runtime != "eager":
        raise ConfigError(f"unknown latency.runtime '{runtime}'; use eager, torchscript or onnxruntime")
    return module

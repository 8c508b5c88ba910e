"""Deployment runtimes a module is timed in, so the table, the budget and the report agree.

``deployable`` turns an ``nn.Module`` into the callable the device would run: eager
PyTorch, TorchScript (scripted or traced, fused, frozen), Inductor (``torch.compile`` of the
``torch.export`` graph), AOTInductor (a compiled package, reloaded), ONNX Runtime, OpenVINO
(optional) or TensorRT (optional, CUDA only). Compiled runtimes are compiled once per
(module, input shape, settings) and cached, and the compile time is logged: a profile
compiles every candidate once, and the latency check reuses the compiled teacher.
Optional runtimes are imported only when asked for, with a one-line error naming the extra.
"""
from __future__ import annotations

import copy
import io
import logging
import tempfile
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import op_zoo
from lana.errors import ConfigError, ExportError
from lana.export import aoti
from lana.export.pt2 import export_program

log = logging.getLogger("lana")

try:  # optional: only the onnxruntime runtime needs it
    import onnxruntime as _ort
except ImportError:  # pragma: no cover - depends on the environment
    _ort = None

RUNTIMES = ("eager", "torchscript", "inductor", "aoti", "onnxruntime", "openvino", "tensorrt")
# In-context clocks sit between blocks in Python; a whole-graph compiler leaves no such seam.
CLOCKABLE = ("eager", "torchscript")
COMPILED = ("inductor", "aoti", "onnxruntime", "openvino", "tensorrt")
_CACHE: dict[tuple, tuple[weakref.ref, Callable]] = {}


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
                          "run `pip install onnx onnxruntime` or pip install 'lana[onnx]' (onnxruntime-gpu for CUDA), "
                          "or pick eager / torchscript")


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The module as ONNX bytes (batch axis dynamic), re-parameterisable branches fused first.

    The legacy exporter is used for timing: it takes about a second per candidate where the
    dynamo exporter takes several, and both give the same operators for lana's op zoo.
    """
    _need_onnx()
    module = op_zoo.fuse_for_export(copy.deepcopy(module).eval().float().to(memory_format=torch.contiguous_format))
    buffer = io.BytesIO()
    sample = example.float().contiguous().cpu()
    module = module.cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy on purpose (see above); said once, here
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
        for output in self.session.get_outputs():  # every output: a backbone's feature maps are several
            binding.bind_output(output.name, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        return binding


class AotiCallable:
    """An AOTInductor package compiled into a private temporary folder, removed with the object."""

    def __init__(self, module: nn.Module, example: torch.Tensor) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="lana-aoti-")
        path = Path(self._folder.name) / "module.aoti.pt2"
        try:
            aoti.save(module, path, example)
            self.runner = aoti.load(path)
        except ExportError as exc:
            raise ConfigError(f"latency.runtime 'aoti': {exc}") from exc

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


class OpenVinoCallable:
    """An OpenVINO model compiled for its CPU plugin, called on a torch tensor."""

    def __init__(self, module: nn.Module, example: torch.Tensor, threads: int | None) -> None:
        try:
            import openvino
        except ImportError as exc:
            raise ConfigError("latency.runtime 'openvino' needs the openvino package: pip install 'lana[openvino]'") from exc
        if example.device.type != "cpu":
            raise ConfigError(f"latency.runtime 'openvino' runs on the CPU here, not {example.device}; set latency.device: cpu")
        model = openvino.convert_model(module.float(), example_input=example.float())
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.compiled = openvino.Core().compile_model(model, "CPU", config)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.float().contiguous().numpy())[0])


def _tensorrt(module: nn.Module, example: torch.Tensor) -> Callable:
    if example.device.type != "cuda":
        raise ConfigError("latency.runtime 'tensorrt' needs a CUDA device (latency.device: cuda); "
                          f"got {example.device}; on a CPU use inductor, onnxruntime or openvino")
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise ConfigError("latency.runtime 'tensorrt' needs torch-tensorrt: pip install 'lana[tensorrt]'") from exc
    return torch_tensorrt.compile(module, ir="dynamo", inputs=[example], enabled_precisions={example.dtype})


def _inductor(module: nn.Module, example: torch.Tensor) -> Callable:
    # Compiling the torch.export graph gives every candidate its own code object, so dynamo's
    # per-code recompile limit (8) never silently sends the 9th candidate of a class to eager.
    program = export_program(module, example)
    return torch.compile(program.module(), fullgraph=True, dynamic=False)


def _compiled(module: nn.Module, example: torch.Tensor, runtime: str, threads: int | None) -> Callable:
    if runtime == "onnxruntime":
        return OrtCallable(export_onnx(module, example), example.device, threads)
    if runtime == "aoti":
        return AotiCallable(module, example)
    if runtime == "openvino":
        return OpenVinoCallable(module, example, threads)
    if runtime == "tensorrt":
        return _tensorrt(module, example)
    return _inductor(module, example)


def _cache_key(module: nn.Module, example: torch.Tensor, runtime: str, channels_last: bool, threads: int | None) -> tuple:
    # _version counts in-place updates, so weights changed by fine-tuning never hit a stale entry.
    version = sum(t._version for t in module.state_dict().values())
    return (id(module), version, tuple(example.shape), example.dtype, str(example.device), runtime, channels_last, threads)


def compile_cached(module: nn.Module, example: torch.Tensor, runtime: str, channels_last: bool = False,
                   threads: int | None = None) -> Callable:
    """``module`` compiled for ``runtime`` at ``example``'s shape: once, then from the cache.

    Args:
        module: the eager module (not modified).
        example: an input with the shape, device and dtype to compile for.
        runtime: one of :data:`COMPILED`.
        channels_last: compile the module in channels-last memory format.
        threads: intra-op threads for runtimes with their own pool (ONNX Runtime, OpenVINO).

    Returns:
        The compiled callable (already called once, so the first timed call is not a compile).
    """
    key = _cache_key(module, example, runtime, channels_last, threads)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is module:
        return hit[1]
    start = time.perf_counter()
    prepared = op_zoo.fuse_for_export(copy.deepcopy(module).eval().to(device=example.device, dtype=example.dtype))
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    try:
        fn = _compiled(prepared, example, runtime, threads)
    except ExportError as exc:  # a graph capture failed: the same explanation, as a latency error
        raise ConfigError(f"latency.runtime {runtime!r} cannot compile {type(module).__name__}: {exc}") from exc
    with torch.no_grad():
        fn(example)  # inductor and TensorRT compile lazily, on the first call
    log.info("latency: compiled %s for %s at %s in %.1f s (cached for this shape)", type(module).__name__, runtime,
             tuple(example.shape), time.perf_counter() - start)
    _CACHE[key] = (weakref.ref(module, lambda _ref, key=key: _CACHE.pop(key, None)), fn)
    return fn


def deployable(module: nn.Module, example: torch.Tensor, runtime: str, channels_last: bool = False,
               threads: int | None = None) -> Callable:
    """The callable the device runs: a prepared copy of ``module`` in ``runtime``.

    Args:
        module: the module (not modified).
        example: an input with the device, dtype and memory format to deploy with.
        runtime: one of :data:`RUNTIMES`.
        channels_last: convert the weights to channels-last memory format.
        threads: intra-op threads for ONNX Runtime and OpenVINO (PyTorch's are set by the caller).

    Returns:
        A callable taking a tensor like ``example``.
    """
    if runtime in COMPILED:
        return compile_cached(module, example, runtime, channels_last, threads)
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown latency.runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
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
    return module

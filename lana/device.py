"""The compute device: one place that decides it, moves models and batches, and opens AMP.

Distillation, scoring, fine-tuning and evaluation run on the compute device (the
config's ``device``; ``auto`` = this rank's GPU when there is one, else the CPU;
``distill.device``, when set, wins for distillation alone). Latency is timed elsewhere:
on ``latency.device``, the deployment target, which may differ.

On CUDA a :class:`Placement` also turns on what makes training fast there: automatic mixed
precision (bf16 where the GPU supports it, else fp16 with loss scaling; ``amp: false``
turns it off), ``channels_last`` for networks with 2-D convolutions, pinned host memory
for lana's loaders and non-blocking copies. On the CPU it only moves things.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lana.config import LanaConfig
from lana.errors import DeviceError


def resolve_compute_device(name: str = "auto", local_rank: int = 0, key: str = "device") -> torch.device:
    """The torch device for ``auto``/``cpu``/``cuda``/``cuda:N`` (``auto`` and ``cuda``: this rank's GPU).

    Raises:
        DeviceError: an unknown name, or a GPU that is not there (one line naming ``key``).
    """
    name = str(name or "auto").strip()
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown {key} '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{key} '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{key} '{name}' asked for but CUDA is not available here; set {key}: auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"{key} '{name}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def distill_device_name(config: LanaConfig) -> tuple[str, str]:
    """``(name, key)`` of the device distillation trains on: ``distill.device`` if set, else ``device``."""
    if config.distill.device is not None:
        return config.distill.device, "distill.device"
    return config.device, "device"


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU for a module without any."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def move_to(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``module`` to ``device`` in the default memory format (in place): e.g. a student
    back to where the user's teacher was."""
    return module.to(torch.device(device), memory_format=torch.contiguous_format)


def _has_conv2d(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@dataclass
class Placement:
    """Where a stage computes, and how: device, mixed precision, memory format.

    Every stage asks this object instead of calling ``.to()`` itself (Hugging Face
    Accelerate's idea: the training loops stay free of device code).
    """

    device: torch.device = torch.device("cpu")
    amp: bool = True  # asked for; in force on CUDA only

    @classmethod
    def for_config(cls, config: LanaConfig, local_rank: int = 0) -> Placement:
        """The compute device of ``config`` (``device``), with its ``amp`` setting."""
        return cls(resolve_compute_device(config.device, local_rank), config.amp)

    @property
    def cuda(self) -> bool:
        """True on a GPU."""
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 where the GPU supports it, else fp16; None where AMP is off (or on the CPU)."""
        if not (self.cuda and self.amp):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @property
    def pin_memory(self) -> bool:
        """Pinned host memory for lana's loaders (CUDA only: it makes copies asynchronous)."""
        return self.cuda

    def model(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device (in place); on CUDA, channels_last where it has 2-D convolutions."""
        module.to(self.device)
        if self.cuda and _has_conv2d(module):
            module.to(memory_format=torch.channels_last)
        return module

    def offload(self, module: nn.Module) -> nn.Module:
        """Move ``module`` back to the CPU in the default memory format (in place), freeing the GPU."""
        if self.cuda:
            module.to("cpu", memory_format=torch.contiguous_format)
        return module

    def batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device without blocking; on CUDA, 4-D images as channels_last."""
        tensor = tensor.to(self.device, non_blocking=True)
        if self.cuda and tensor.ndim == 4 and tensor.is_floating_point():
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def autocast(self, fp16: bool = True):
        """The training forward's context: CUDA autocast in :attr:`amp_dtype`, else nothing.

        Args:
            fp16: whether fp16 may be used where bf16 is not supported (a loop without
                :meth:`grad_scaler` passes False and then runs in float32 there).
        """
        dtype = self.amp_dtype
        if dtype is None or (dtype == torch.float16 and not fp16):
            return nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, enabled for fp16 alone (bf16 and float32 need none)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def describe(self) -> str:
        """E.g. ``cuda:0 (amp bfloat16, channels_last)`` or ``cpu``, for the log."""
        dtype = self.amp_dtype
        return f"{self.device} (amp {str(dtype).removeprefix('torch.')}, channels_last)" if self.cuda and dtype else \
            f"{self.device}{' (channels_last)' if self.cuda else ''}"

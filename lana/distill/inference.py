"""Faster, exact CPU inference for swap-one scoring: the same sums, other kernels.

Scoring runs the teacher's suffix once for every candidate and image, so on a CPU what
eager PyTorch wastes there is most of the stage's time. Two wastes, measured on timm
``mobilenetv3_large_100`` at 32x32 (one thread, 720 images: 1.04 s a pass, 0.32 s with
both; ``benchmarks/score_rate.py --profile``):

- oneDNN's depthwise convolutions on NCHW tensors: a 5x5 depthwise convolution of
  720x960x1x1 took 213 ms, 0.6 ms channels_last. A channels_last batch makes every
  convolution after it run channels_last (PyTorch follows the input's memory format);
  parameters are left as they are.
- convolutions of a 1x1 feature map (small images in the late stages) whose kernel's
  centre tap alone meets the input: oneDNN reorders the weights on every call (960->1280
  1x1 convolution of 720 images: 33 ms NCHW, 138 ms channels_last), where the same product
  as a matrix multiply takes 14 ms. Such a convolution is computed as ``linear`` (groups 1)
  or a per-channel scale (depthwise): the same products and sums, the zero padding left out.

Both change float rounding only (about 1e-7 relative; tested against the plain forward).
On a GPU nothing changes here (:class:`lana.device.Placement` already puts models
channels_last there, and cuDNN has no such slow paths).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def channels_last_trains_safely(module: nn.Module) -> bool:
    """Whether ``module`` can *train* on channels_last batches on a CPU.

    Not where it has a 1x1 convolution with a stride above 1 and fewer input channels per group
    than oneDNN's kernel block (8 with AVX2, 16 with AVX-512): the weight gradient of that
    convolution on NHWC input writes past its workspace (oneDNN issue #6035). Measured with
    torch 2.14.1 on an AVX2 CPU (2026-12-06, ``python -m benchmarks.strided_pointwise``): with 2-7
    input channels, weight gradients off by 3-41 (entries of about 50) with two threads and a
    crash with one; 1 and 8 or more, stride 1, the forward pass and the input gradient are right.
    Such a module trains on contiguous batches instead.
    """
    block = 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels // m.groups < block for m in module.modules())


def fast_batch(x: torch.Tensor) -> torch.Tensor:
    """A CPU batch of images channels_last (other tensors and devices as they are)."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _centre_tap(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The kernel index that alone meets a 1x1 input (and gives a 1x1 output), if there is one.

    With zero padding ``p``, kernel ``k`` and dilation ``d``, a 1x1 input meets exactly the tap
    at offset ``p`` when ``(k - 1) * d == 2 * p`` and ``p`` is a multiple of ``d``.
    """
    if conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple):
        return None
    taps = []
    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation):
        if (k - 1) * d != 2 * p or p % d:
            return None
        taps.append(p // d)
    return taps[0], taps[1]


def _fast_forward(conv: nn.Conv2d):
    """``conv``'s forward, computed as a matrix product where its input is a 1x1 feature map."""
    tap = _centre_tap(conv)
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    plain = nn.Conv2d.forward.__get__(conv)
    if tap is None or not (conv.groups == 1 or depthwise):
        return None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (1, 1):
            return plain(x)
        weight = conv.weight[:, :, tap[0], tap[1]]
        if depthwise:
            y = x * weight.view(1, -1, 1, 1)
            return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)
        return F.linear(x.flatten(1), weight, conv.bias)[:, :, None, None]

    return forward


class fast_convs:
    """Context manager: the plain ``nn.Conv2d`` layers of ``modules`` take the 1x1 shortcut.

    Only convolutions whose class keeps ``nn.Conv2d.forward`` (not subclasses with their own,
    such as timm's ``Conv2dSame``) and that have no forward of their own set are changed;
    their instance ``forward`` is set on entry and removed on exit. On a GPU it does nothing.

    Args:
        modules: networks and candidate modules (shared submodules are changed once).
        device: where they compute.
    """

    def __init__(self, modules: Iterable[nn.Module], device: torch.device) -> None:
        self.modules, self.device, self.patched = list(modules), device, []

    def __enter__(self) -> fast_convs:
        if self.device.type != "cpu":
            return self
        seen: set[int] = set()
        for root in self.modules:
            for module in root.modules():
                if (id(module) in seen or not isinstance(module, nn.Conv2d) or type(module).forward is not nn.Conv2d.forward
                        or "forward" in module.__dict__):
                    continue
                seen.add(id(module))
                forward = _fast_forward(module)
                if forward is not None:
                    module.forward = forward
                    self.patched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.patched:
            module.__dict__.pop("forward", None)
        self.patched = []


class channels_last_weights:
    """Context manager: on a CPU, the 4-D parameters and buffers of ``modules`` channels_last,
    put back as they were on exit (the same values; only the strides change).

    For inference: oneDNN then runs every convolution channels_last, even on 1-channel images
    (whose batch alone cannot say its layout). Measured with torch 2.14.1, one thread,
    28x28 1-channel images (``python -m benchmarks.eval_rate``, with :class:`fast_convs`, as
    :class:`fast_inference` runs them): evaluation 1.9x faster for ResNet-18-D, 1.7x for
    MobileNetV2 and 4.9x for EfficientNet-B0 (docs/benchmarks.md). On a GPU it does nothing
    (:class:`lana.device.Placement` already puts models channels_last there), nor for a
    TorchScript module, whose tensors are not reassigned.
    """

    def __init__(self, modules: Iterable[nn.Module], device: torch.device | None = None) -> None:
        self.modules, self.device, self.changed = list(modules), device, []

    def __enter__(self) -> channels_last_weights:
        if self.device is not None and self.device.type != "cpu":
            return self
        seen: set[int] = set()
        for root in self.modules:
            if isinstance(root, torch.jit.ScriptModule):
                continue
            for tensor in (*root.parameters(), *root.buffers()):
                if id(tensor) in seen or tensor.dim() != 4 or tensor.device.type != "cpu":
                    continue
                seen.add(id(tensor))
                # ``to``, not ``contiguous``: a depthwise weight (C, 1, k, k) counts as channels_last
                # already, yet oneDNN reads its strides
                moved = tensor.data.to(memory_format=torch.channels_last)
                if moved.stride() != tensor.stride():
                    self.changed.append((tensor, tensor.stride()))
                    tensor.data = moved
        return self

    def __exit__(self, *exc) -> None:
        for tensor, stride in self.changed:
            tensor.data = torch.empty_strided(tensor.shape, stride, dtype=tensor.dtype).copy_(tensor.data)
        self.changed = []


class fast_inference:
    """Context manager for evaluation on a CPU: :class:`channels_last_weights` and
    :class:`fast_convs` on ``modules``, with a way back for a network that cannot take them.

    A forward that reads its feature maps' strides (a ``view`` after a convolution) fails on
    channels_last ones; ``run(fn)`` then puts the weights and convolutions back, says so once
    and calls ``fn`` again, plainly, as every later ``run`` does. So ``fn`` must compute one
    batch's figures and only return them (nothing added to totals before it returns).
    """

    def __init__(self, modules: Iterable[nn.Module], device: torch.device, enabled: bool = True) -> None:
        self.layout, self.convs = channels_last_weights(modules, device), fast_convs(modules, device)
        self.enabled, self.active = enabled, False

    def __enter__(self) -> fast_inference:
        if not self.enabled:  # the plain kernels (benchmarks/eval_rate.py compares the two)
            return self
        self.layout.__enter__()
        self.convs.__enter__()
        self.active = bool(self.layout.changed or self.convs.patched)
        return self

    def __exit__(self, *exc) -> None:
        self.convs.__exit__()
        self.layout.__exit__()
        self.active = False

    def run(self, fn, *args):
        """``fn(*args)``; after a RuntimeError with the fast layout on, ``fn(*args)`` again without it."""
        if not self.active:
            return fn(*args)
        try:
            return fn(*args)
        except RuntimeError as exc:
            self.__exit__()
            logging.getLogger("lana").info("evaluating on contiguous weights: the network failed on channels_last "
                                           "ones (%s)", str(exc).splitlines()[0][:200])
            return fn(*args)

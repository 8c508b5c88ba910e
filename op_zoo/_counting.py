"""Parameter and multiply-accumulate counts of candidate modules."""
from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared parameters counted once).

    Args:
        module: any module.

    Returns:
        ``sum(p.numel() for p in module.parameters())``.
    """
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one sample.

    Runs one forward pass on zeros (eval mode, no grad, training flags restored) with
    forward hooks on every ``nn.Conv2d`` and ``nn.Linear``. Bias additions, norms and
    activations are not counted.

    Args:
        module: the module to measure.
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; a batch dimension is ignored
            (the count is for one sample).

    Returns:
        The MAC count (0 for modules without convs or linear layers).
    """
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    total = [0]

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        total[0] += out[0].numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    param = next(module.parameters(), None)
    x = torch.zeros(1, *shape, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return int(total[0])

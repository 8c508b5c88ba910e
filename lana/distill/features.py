"""What distillation learns from: each block's input and output in the teacher, and the loss.

:class:`FeatureTap` captures the input and output of the blocks a group needs in one
teacher pass (stopping the pass after the last of them); :func:`normalised_mse` is the
loss every candidate minimises against its block's output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lana.errors import BlockDiscoveryError
from lana.teacher.blocks import get_submodule


class _StopForward(Exception):
    """Raised from a hook once every needed block has run: the rest of the teacher is skipped."""


class FeatureTap:
    """Forward hooks that keep each block's input and output of the latest teacher pass.

    The hooks are on the teacher only during a pass: candidates copied from a teacher block
    (keep-teacher, pruned, low-rank) are built between passes and must not copy them.
    """

    def __init__(self, teacher: nn.Module, blocks: list[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.needed: set[str] = set()
        self._blocks = {name: get_submodule(teacher, name) for name in blocks}

    def _hook(self, name: str):
        def hook(_module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output.detach()
            if self.needed and self.needed <= self.outputs.keys():
                raise _StopForward

        return hook

    @torch.no_grad()
    def features(self, teacher: nn.Module, images: torch.Tensor, needed: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(input, output) of the ``needed`` blocks; the teacher stops after the last of them."""
        self.inputs, self.outputs, self.needed = {}, {}, set(needed)
        handles = [module.register_forward_hook(self._hook(name)) for name, module in self._blocks.items()]
        try:
            teacher(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = self.needed - self.outputs.keys()
        if missing:
            raise BlockDiscoveryError(f"blocks {sorted(missing)} did not run in the teacher's forward pass; fix teacher.blocks")
        return {b: (self.inputs[b], self.outputs[b]) for b in needed}


def normalised_mse(
    prediction: torch.Tensor, target: torch.Tensor, var: torch.Tensor | None = None, count: int | None = None
) -> torch.Tensor:
    """The distillation loss: MSE divided by the target's variance (1.0 = 'no better than its mean').

    Args:
        prediction: the candidate's output.
        target: the teacher block's output.
        var: the target's variance; under torchrun, over the global batch (default: this one's).
        count: the target's element count over the global batch (default: this one's), so
            that summing the ranks' losses gives the global mean.

    Returns:
        The scalar loss (differentiable in ``prediction``).
    """
    var = target.var().clamp_min(1e-8) if var is None else var
    count = target.numel() if count is None else count
    return F.mse_loss(prediction, target, reduction="sum") / (count * var)


def target_scale(feats: dict[str, tuple[torch.Tensor, torch.Tensor]], blocks, dist) -> dict[str, tuple[torch.Tensor, int]]:
    """Per block: the teacher output's variance over the global batch and its element count.

    ``feats`` maps a block to its (input, output) on this rank; ``dist`` is the run's
    :class:`lana.distill.distributed.Dist` (with several ranks, the sums are all-reduced so
    every rank divides by the same variance).
    """
    if dist.world == 1:
        return {b: (feats[b][1].var().clamp_min(1e-8), feats[b][1].numel()) for b in blocks}
    ys = [feats[b][1] for b in blocks]
    packed = dist.all_reduce(
        torch.stack(
            [y.sum(dtype=torch.float64) for y in ys]
            + [torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device) for y in ys]
        )
    )
    sums, counts = packed.chunk(2)
    squares = dist.all_reduce(torch.stack([(y.double() - m).square().sum() for y, m in zip(ys, sums / counts)]))
    var = (squares / (counts - 1).clamp_min(1)).float().clamp_min(1e-8)
    return {b: (var[i], int(counts[i].item())) for i, b in enumerate(blocks)}

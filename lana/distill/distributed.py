"""Processes, devices and memory for distillation.

Under ``torchrun`` (``WORLD_SIZE`` > 1) distillation is data-parallel: every rank takes its
slice of each global batch, the candidates' gradients are summed across ranks, and batch
norm statistics are taken over the global batch (:func:`synced_batchnorm`), so the result
matches a one-process run up to floating-point rounding. Only rank 0 writes. Without
``torchrun`` everything here is a no-op around one process.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lana.data import BatchFn, batches_per_epoch, is_loader, to_pair
from lana.device import resolve_compute_device
from lana.distill.candidates import TEACHER_OP, Candidate, leaf_outputs
from lana.errors import ConfigError, LanaError
from lana.run.memory import free_memory, group_budget, memory_limit, memory_limits, mib, parse_bytes  # noqa: F401  (re-exported)
from op_zoo import BlockSpec

log = logging.getLogger("lana")
Key = tuple[str, str]
FLOAT = 4  # bytes per float32 element
BLOCK_MARGIN = 2  # the largest block's counted activations, twice over (plan_groups)

def resolve_train_device(name: str, local_rank: int = 0, key: str = "distill.device") -> torch.device:
    """The device distillation trains on: ``auto`` is this rank's GPU if there is one, else the CPU."""
    return resolve_compute_device(name, local_rank, key)


@dataclass
class Dist:
    """This process's place among the ranks, and the few collectives distillation needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes to the run folder."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (nothing to do for one process)."""
        if self.world > 1:
            tdist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if self.world == 1:
            return flag
        return bool(self.all_reduce(torch.tensor([float(flag)], device=self.device)).item())

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank."""
        if self.world == 1:
            return data or b""
        size = torch.tensor([len(data or b"")], dtype=torch.long, device=self.device)
        tdist.broadcast(size, 0)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.is_main and data:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        tdist.broadcast(buffer, 0)
        return buffer.cpu().numpy().tobytes()

    def broadcast_json(self, obj=None):
        """Rank 0's JSON-able ``obj`` on every rank (no pickling)."""
        return json.loads(self.broadcast_bytes(json.dumps(obj).encode() if self.is_main else None))

    def broadcast_tensors(self, obj=None):
        """Rank 0's tree of tensors on every rank (``torch.save`` / ``weights_only`` load)."""
        if self.world == 1:
            return obj
        data = None
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getvalue()
        return torch.load(io.BytesIO(self.broadcast_bytes(data)), map_location="cpu", weights_only=True)

    def close(self) -> None:
        """Leave the process group if this object started it."""
        if self.owns_group and tdist.is_initialized():
            # every rank past its last collective before any tears its connections down: a gloo
            # rank that left at once aborted ("terminate called without an active exception") in CI
            tdist.barrier()
            tdist.destroy_process_group()
            self.owns_group = False


def init_distributed(device_name: str = "auto", key: str = "distill.device") -> Dist:
    """Join ``torchrun``'s process group (``WORLD_SIZE`` > 1) or describe the single process.

    Args:
        device_name: the compute device (``auto``, ``cpu``, ``cuda``, ``cuda:N``;
            :func:`lana.device.distill_device_name` picks it from the config).
        key: the config key it came from, for error messages.

    Returns:
        Rank, world size and the device this rank trains on (NCCL on GPUs, gloo on CPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_train_device(device_name, local_rank, key)
    if world == 1:
        return Dist(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            tdist.init_process_group(backend, timeout=timedelta(minutes=60), device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as exc:
            raise LanaError(
                f"torch.distributed could not start ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "launch with `torchrun --nproc_per_node=N -m lana -- distill ...`"
            ) from None
        owns = True
    return Dist(tdist.get_rank(), tdist.get_world_size(), device, owns)


# -- batch norm over the global batch --------------------------------------------------


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm whose mean and variance are taken over every rank's slice of the batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, dist):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        packed = dist.all_reduce(torch.cat([x.sum(dims), count]))
        n = packed[-1]
        mean = packed[:-1] / n
        centred = x - mean.view(shape)
        var = dist.all_reduce(centred.square().sum(dims)) / n
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.dist, ctx.n, ctx.dims, ctx.shape = dist, n, dims, shape
        out = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        return out, mean, var * n / (n - 1).clamp_min(1)

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.n
        local_g, local_gx = grad_out.sum(dims), (grad_out * xhat).sum(dims)
        sums = ctx.dist.all_reduce(torch.cat([local_g, local_gx]))
        mean_g, mean_gx = (sums / n).chunk(2)
        scale = invstd if weight is None else invstd * weight
        grad_x = scale.view(shape) * (grad_out - mean_g.view(shape) - xhat * mean_gx.view(shape))
        # the affine parameters get this rank's share; the gradient all-reduce sums the shares
        grad_w = local_gx if weight is not None else None
        grad_b = local_g if weight is not None else None
        return grad_x, grad_w, grad_b, None, None


def _global_bn_forward(bn: nn.modules.batchnorm._BatchNorm, dist: Dist):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        out, mean, var = _GlobalBatchNorm.apply(x, bn.weight, bn.bias, bn.eps, dist)
        if bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.lerp_(mean.detach(), momentum)
                bn.running_var.lerp_(var.detach(), momentum)
        return out

    return forward


@contextmanager
def synced_batchnorm(modules: list[nn.Module], dist: Dist):
    """While inside, batch norm layers of ``modules`` normalise over the global batch.

    Torch's ``SyncBatchNorm`` runs on GPUs only; this works on every back-end (gloo too)
    and leaves the modules' classes and state-dict keys untouched.
    """
    patched = []
    if dist.world > 1:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.forward = _global_bn_forward(layer, dist)
                    patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward


def all_reduce_grads(params: list[nn.Parameter], dist: Dist, bucket_bytes: int = 32 * 2**20) -> None:
    """Sum the gradients of ``params`` over the ranks, in flat buckets (a few calls per step)."""
    if dist.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for index, grad in enumerate(grads):
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
        if size >= bucket_bytes or index == len(grads) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def check_world(batch: int, dist: Dist) -> None:
    """Every rank needs at least one image of each global batch."""
    if batch < dist.world:
        raise ConfigError(
            f"distill batch size {batch} is smaller than the {dist.world} ranks; raise distill.batch_size or use fewer processes"
        )


# -- memory: how candidates are grouped ------------------------------------------------


def plan_groups(teacher: nn.Module, specs: list[BlockSpec], candidates: dict[str, dict[str, Candidate]], batch: int,
                budget: int | None, input_shape: tuple[int, ...]) -> tuple[list[list[Key]], int]:
    """Split the candidates, in block order, into groups whose training fits ``budget`` bytes.

    The estimate per candidate, from its static costs (the modules are not held), is its
    parameters with gradient and AdamW moments (16 bytes each), held for the whole group,
    and twice its activations at ``batch``, held only while its block trains: a step runs
    one block's candidates forward and backward before the next block's
    (``lana.distill.core._Distiller._step``), so a group needs its parameters plus
    its largest block's activations, counted twice over (``BLOCK_MARGIN``: the activations
    are the leaf modules' outputs, and a block's functional intermediates, such as
    attention maps, are not among them). Each group also holds the teacher, its largest
    activations and the blocks' features. A candidate larger than the room left trains
    alone. Measured against the resident peak: ``python -m benchmarks.group_memory``
    (docs/scaling.md).

    Returns:
        The groups (lists of (block, op)) and the estimated peak bytes of the largest group.
    """
    keys = [(b, n) for b, cs in candidates.items() for n in cs if n != TEACHER_OP]
    if budget is None:
        return [keys] if keys else [], 0
    shapes = {s.name: s.in_shape for s in specs}
    features = sum(s.in_channels * math.prod(s.in_size) + s.out_channels * math.prod(s.out_size) for s in specs)
    fixed = FLOAT * (sum(p.numel() for p in teacher.parameters()) + batch * (3 * max(leaf_outputs(teacher, input_shape)) + features))
    room = budget - fixed
    if room <= 0:
        raise ConfigError(f"distill.max_memory {mib(budget)} is below the {mib(fixed)} the teacher and its features need "
                          f"at a batch of {batch} per device; raise --max-memory or lower distill.batch_size")
    groups: list[list[Key]] = [[]]
    held, blocks, peak = 0, {}, 0  # the group's parameter bytes, its activation bytes per block
    for block, name in keys:
        cand = candidates[block][name]
        activations = cand.activations if cand.activations is not None else sum(leaf_outputs(cand.module, shapes[block]))
        params, acts = FLOAT * 4 * cand.params, FLOAT * 2 * batch * activations  # from the static costs: no module need be held
        need = held + params + BLOCK_MARGIN * max([*blocks.values(), blocks.get(block, 0) + acts])
        if groups[-1] and need > room:
            groups.append([])
            held, blocks, need = 0, {}, params + BLOCK_MARGIN * acts
        if need > room:
            log.warning("distill: %s/%s needs about %s, more than the %s left; it trains alone", block, name, mib(need), mib(room))
        groups[-1].append((block, name))
        held += params
        blocks[block] = blocks.get(block, 0) + acts
        peak = max(peak, need)
    return [g for g in groups if g], fixed + peak


# -- data: seeded global batches, each rank's slice ------------------------------------


class GlobalBatches:
    """The global batch of every step, and this rank's slice of it.

    A Dataset: seeded permutations, the same order for every group and rank count, so a
    run resumes at any step with the same batches. A user's DataLoader: iterated as given,
    epoch after epoch (``len(loader)`` steps per epoch), each global batch split over the
    ranks; resuming at a step reads and drops the batches of its epoch before it, so the
    batches match an uninterrupted run only where the loader's order is seeded.
    """

    def __init__(self, data, batch: int, seed: int, dist: Dist, workers: int, batch_fn: BatchFn | None = None,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch, self.seed, self.dist, self.workers = data, batch, seed, dist, workers
        self.batch_fn, self.pin_memory = batch_fn, pin_memory
        self.per_epoch = batches_per_epoch(data, batch)
        self.sizes: dict[int, int] = {}  # a DataLoader's global batch size per step, as read
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> tuple[torch.Tensor, int]:
        """This rank's dataset indices at ``step`` and the global batch size (a Dataset only)."""
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.dataset), generator=gen)
        chunk = self._order[index * self.batch : (index + 1) * self.batch]
        return torch.tensor_split(chunk, self.dist.world)[self.dist.rank], len(chunk)

    def global_size(self, step: int) -> int:
        """Images in the global batch of ``step``."""
        if is_loader(self.dataset):
            return self.sizes.get(step, self.batch)
        return self.indices(step)[1]

    def images(self, steps: range):
        """This rank's images for each step of ``steps``, in order."""
        if is_loader(self.dataset):
            yield from self._loader_images(steps)
            return
        if isinstance(self.dataset, TensorDataset) and self.batch_fn is None:
            for step in steps:
                yield self.dataset.tensors[0][self.indices(step)[0]]
            return
        sampler = [self.indices(step)[0].tolist() for step in steps]
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.workers, pin_memory=self.pin_memory)
        yield from (to_pair(batch, self.batch_fn, "train")[0] for batch in loader)

    def _loader_images(self, steps: range):
        epoch, skip = divmod(steps.start, self.per_epoch)
        while epoch * self.per_epoch < steps.stop:
            for index, batch in enumerate(self.dataset):
                step = epoch * self.per_epoch + index
                if index >= self.per_epoch or step >= steps.stop:
                    break
                if index < skip:  # resuming: the batches of this epoch already done
                    continue
                images = to_pair(batch, self.batch_fn, "train")[0]
                self.sizes[step] = len(images)
                yield torch.tensor_split(images, self.dist.world)[self.dist.rank]
            epoch, skip = epoch + 1, 0


@contextmanager
def graceful_stop(what: str = "distill"):
    """Turn SIGINT/SIGTERM into a request to stop after the current step (a second Ctrl-C aborts)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("%s: signal %d received; stopping after this step (Ctrl-C again to abort without saving)", what, signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

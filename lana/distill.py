"""Layer-wise feature-map distillation of every candidate of every block at once.

One teacher forward per batch: forward hooks capture each block's input and output, and
every candidate of that block regresses the output from the input, with the MSE divided by
the variance of the teacher's output (so blocks of any scale weigh alike). The teacher
runs once per batch however many candidates there are. Progress is checkpointed so a
killed run resumes where it stopped.
"""
from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lana.blocks import get_submodule
from lana.candidates import Candidate, weights_file
from lana.config import LanaConfig
from lana.data import DataSplits, make_loader
from lana.rundir import RunFolder, load_tensors, save_tensors
from op_zoo import BlockSpec

log = logging.getLogger("lana")
STATE_FILE = "distill_state.pt"


class FeatureTap:
    """Forward hooks that keep each block's input and output of the latest teacher pass."""

    def __init__(self, teacher: nn.Module, blocks: list[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [get_submodule(teacher, name).register_forward_hook(self._hook(name)) for name in blocks]

    def _hook(self, name: str):
        def hook(_module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output.detach()

        return hook

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def normalised_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE divided by the target's variance: 1.0 means 'no better than its mean'."""
    return F.mse_loss(prediction, target) / target.var().clamp_min(1e-8)


def total_steps(config: LanaConfig, n_train: int) -> int:
    """Optimisation steps distillation will take."""
    batch = config.distill.batch_size or config.data.batch_size
    steps = math.ceil(config.distill.epochs * n_train / batch)
    return max(1, min(steps, config.distill.max_steps or steps))


def distill_candidates(
    teacher: nn.Module,
    specs: list[BlockSpec],
    candidates: dict[str, dict[str, Candidate]],
    splits: DataSplits,
    config: LanaConfig,
    run: RunFolder,
    checkpoint_every: int = 50,
) -> dict[tuple[str, str], dict]:
    """Train every trainable candidate to mimic its teacher block; save their weights.

    Args:
        teacher: the teacher network (kept in eval mode, never updated).
        specs: the replaceable blocks.
        candidates: candidates by block and op name (trained in place).
        splits: the dataset splits (``train`` is used).
        config: the run config (``distill`` section).
        run: the run folder (weights and resumable state land here).
        checkpoint_every: steps between resumable checkpoints.

    Returns:
        Per (block, op): ``distill_loss`` (mean normalised MSE over the last quarter of
        steps) and ``status`` (``ok``, ``fixed`` for untrained ops, or ``dropped: ...``).
    """
    cfg = config.distill
    teacher.eval()
    trainable = [c for block in candidates.values() for c in block.values() if c.trainable]
    params = [p for c in trainable for p in c.module.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
    steps = total_steps(config, len(splits.train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))) if optimiser else None

    keys = [(c.block, c.name) for block in candidates.values() for c in block.values()]
    stats = {k: {"loss_sum": 0.0, "loss_n": 0, "status": "ok"} for k in keys}
    start = 0
    state_path = run.file(STATE_FILE)
    if state_path.is_file():
        state = load_tensors(state_path)
        start = int(state["step"])
        for block, cands in candidates.items():
            for name, cand in cands.items():
                if cand.trainable and name in state["weights"].get(block, {}):
                    cand.module.load_state_dict(state["weights"][block][name])
        if optimiser is not None and state.get("optimiser"):
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
        for key, value in state["stats"].items():
            stats[tuple(key.split("\t"))] = value
        log.info("distill: resuming at step %d of %d", start, steps)

    def save_state(step: int) -> None:
        save_tensors(
            state_path,
            {
                "step": step,
                "weights": {b: {n: c.module.state_dict() for n, c in cs.items() if c.trainable} for b, cs in candidates.items()},
                "optimiser": optimiser.state_dict() if optimiser else None,
                "scheduler": scheduler.state_dict() if scheduler else None,
                "stats": {"\t".join(k): v for k, v in stats.items()},
            },
        )

    tap = FeatureTap(teacher, [s.name for s in specs])
    batch = cfg.batch_size or config.data.batch_size
    late = int(steps * 0.75)  # the reported loss averages the last quarter of training
    for cands in candidates.values():
        for cand in cands.values():
            cand.module.train(cand.trainable)
    step = start
    started = time.time()
    bar = tqdm(total=steps, initial=start, desc="distill", unit="step", dynamic_ncols=True)
    try:
        epoch = 0
        while step < steps:
            loader = make_loader(splits.train, batch, shuffle=True, seed=config.seed + epoch)
            skip = start - epoch * len(loader) if step == start else 0
            for i, (images, _) in enumerate(loader):
                if step >= steps:
                    break
                if i < skip:
                    continue
                with torch.no_grad():
                    teacher(images)
                if optimiser is not None:
                    optimiser.zero_grad(set_to_none=True)
                for block, cands in candidates.items():
                    x, y = tap.inputs[block], tap.outputs[block]
                    losses = []
                    for name, cand in cands.items():
                        record = stats[(block, name)]
                        if name == "teacher" or record["status"].startswith("dropped"):
                            continue
                        with torch.set_grad_enabled(cand.trainable):
                            loss = normalised_mse(cand.module(x), y)
                        if not torch.isfinite(loss):
                            record["status"] = f"dropped: loss {loss.item()} at step {step}"
                            log.warning("distill: %s/%s dropped (non-finite loss at step %d)", block, name, step)
                            continue
                        if step >= late:
                            record["loss_sum"] += float(loss.detach())
                            record["loss_n"] += 1
                        if cand.trainable:
                            losses.append(loss)
                    if losses:  # one backward per block frees its graphs before the next
                        torch.stack(losses).sum().backward()
                if optimiser is not None:
                    optimiser.step()
                    scheduler.step()
                step += 1
                bar.update(1)
                if step % checkpoint_every == 0 and step < steps:
                    save_state(step)
            epoch += 1
    except KeyboardInterrupt:
        save_state(step)
        log.info("distill: interrupted at step %d; state saved", step)
        raise
    finally:
        bar.close()
        tap.close()
    save_state(step)
    log.info("distill: %d steps over %d candidates in %.1fs", steps - start, len(trainable), time.time() - started)

    for block, cands in candidates.items():
        save_tensors(
            weights_file(run.weights_dir, block),
            {name: cand.module.state_dict() for name, cand in cands.items() if name != "teacher"},
        )
    for cands in candidates.values():
        for cand in cands.values():
            cand.module.eval()
    results = {}
    for key, record in stats.items():
        loss = record["loss_sum"] / record["loss_n"] if record["loss_n"] else (0.0 if key[1] == "teacher" else float("nan"))
        status = record["status"]
        if status == "ok" and not candidates[key[0]][key[1]].trainable:
            status = "fixed"
        results[key] = {"distill_loss": loss, "status": status}
    return results

"""Layer-wise feature-map distillation of every candidate of every block.

One teacher pass serves every candidate of a group: forward hooks capture each block's
input and output, and every candidate of that block regresses the output from the input,
with the MSE divided by the variance of the teacher's output (so blocks of any scale weigh
alike). Candidates train in groups that fit a memory limit (``distill.max_memory``, by
default what the device has free); every group sees the same seeded batches, so grouping
changes no result. Features of a block split over several groups are kept (on the training
device, if ``distill.feature_cache`` allows) rather than recomputed by the teacher.

Only the current group's candidate modules are held: each is built (seeded from its block and
op, :mod:`lana.distill.candidates`) when its group starts, and written to
``weights/<block>/<op>.pt`` and released when the group ends, so the process holds one
group, not the zoo.

Progress (weights, optimiser, scheduler, loss statistics) is checkpointed every
``distill.checkpoint_every`` steps; a run killed at any moment resumes from its last
checkpoint and ends with the same results. Ctrl-C or SIGTERM stops at the next step after
saving. Under ``torchrun`` each rank takes a slice of every batch (``lana.distributed``).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time

import torch
from torch import nn

from lana.config import LanaConfig
from lana.data import DataSplits, is_loader, num_images
from lana.device import Placement, distill_device_name
from lana.distill.candidates import TEACHER_OP, Candidate, candidate_file, save_candidate
from lana.distill.checkpoint import STATE_FILE, join_key, load_state, save_state, settings_hash, split_key
from lana.distill.distributed import (
    FLOAT,
    Dist,
    GlobalBatches,
    Key,
    all_reduce_grads,
    check_world,
    free_memory,
    graceful_stop,
    group_budget,
    init_distributed,
    memory_limits,
    mib,
    plan_groups,
    synced_batchnorm,
)
from lana.distill.features import FeatureTap, normalised_mse, target_scale
from lana.distill.halving import cut_dominated, cut_steps
from lana.distill.inference import channels_last_trains_safely, fast_batch
from lana.progress import bar as progress
from lana.run.folder import RunFolder
from lana.run.memory import release_memory
from op_zoo import BlockSpec

log = logging.getLogger("lana")
CPU_CHANNELS_LAST = True  # channels_last batches on a CPU; benchmarks/channels_last.py turns it off to compare
FAULT_ENV = "LANA_FAULT_KILL_AT_STEP"  # for tests: SIGKILL this process once that many steps are done


def total_steps(config: LanaConfig, n_train: int, per_epoch: int | None = None) -> int:
    """Optimisation steps distillation will take (per group): epochs × batches per epoch
    (``per_epoch``, e.g. ``len(loader)`` of a user's DataLoader; default ``n_train / batch``)."""
    batch = config.distill.batch_size or config.data.batch_size
    steps = math.ceil(config.distill.epochs * (per_epoch if per_epoch is not None else n_train / batch))
    return max(1, min(steps, config.distill.max_steps or steps))


class _Distiller:
    """One distillation run: the groups, their training, checkpoints and resumption."""

    def __init__(self, teacher, specs, candidates, splits, config: LanaConfig, run: RunFolder, dist: Dist, profile: dict | None):
        self.teacher, self.specs, self.candidates, self.config, self.run, self.dist = teacher, specs, candidates, config, run, dist
        self.cfg = config.distill
        self.device = dist.device
        self.place = Placement(dist.device, config.amp)
        self.batch = self.cfg.batch_size or config.data.batch_size
        if is_loader(splits.train) and splits.train.batch_size and splits.train.batch_size != self.batch:
            log.info("distill: the train DataLoader's batch size %d is used, not %d", splits.train.batch_size, self.batch)
            self.batch = splits.train.batch_size
        check_world(self.batch, dist)
        self.local_batch = math.ceil(self.batch / dist.world)
        n_train = num_images(splits.train)
        self.steps = total_steps(config, n_train, len(splits.train) if is_loader(splits.train) else None)
        self.late = int(self.steps * 0.75)  # the reported loss averages the last quarter of training
        self.batches = GlobalBatches(splits.train, self.batch, config.seed, dist, splits.num_workers, splits.batch_fn,
                                     self.place.pin_memory)
        self.input_shape = splits.input_shape
        self.keys = [(b, n) for b, cs in candidates.items() for n in cs]
        self.stats = {k: {"loss_sum": 0.0, "loss_n": 0, "status": "ok", "steps": 0, "win_sum": 0.0, "win_n": 0} for k in self.keys}
        self.cuts = set(cut_steps(self.steps, self.cfg.halving_warmup)) if self.cfg.halving else set()
        self.settings = settings_hash(config, self.steps, n_train, self.keys)
        self.profile = profile if profile is not None else {}
        self.profile.update({k: 0.0 for k in ("teacher_s", "candidates_s", "data_s")}, teacher_passes=0, cached_steps=0, steps=0, images=0)
        self.state_path = run.file(STATE_FILE)
        # per candidate, once checked: whether it trains on channels_last batches (False: it fails on them,
        # or oneDNN would train it wrongly)
        self.channels_last: dict[Key, bool] = {}
        self.teacher_plain = False

    # -- state ---------------------------------------------------------------------------
    def _load_state(self) -> dict | None:
        return load_state(self.run, self.state_path, self.settings, self.dist)

    def _save_state(self, groups: list[list[Key]], index: int, step: int, members: list[Key], optimiser, scheduler) -> None:
        if self.dist.is_main:
            weights = {join_key(k): self._module(k).state_dict() for k in members if self._cand(k).trainable}
            save_state(self.state_path, self.settings, groups, index, step, weights, optimiser, scheduler, self.stats)

    def _cand(self, key: Key) -> Candidate:
        return self.candidates[key[0]][key[1]]

    def _module(self, key: Key) -> nn.Module:
        return self._cand(key).module

    # -- the run -------------------------------------------------------------------------
    def run_all(self) -> dict[Key, dict]:
        state = self._load_state()
        if state is not None:
            groups = [[split_key(k) for k in g] for g in state["groups"]]
            first, start = int(state["group"]), int(state["step"])
            self.stats.update({split_key(k): {**self.stats[split_key(k)], **v} for k, v in state["stats"].items()})
            torch.set_rng_state(state["rng"])
            if self.dist.is_main:  # finished groups: their weights are on disk, loaded when a stage builds them
                for key in (k for g in groups[:first] for k in g):
                    self._cand(key).weights = candidate_file(self.run.weights_dir, *key)
            log.info("distill: resuming group %d of %d at step %d of %d", first + 1, len(groups), start, self.steps)
        else:
            groups, first, start = self._plan(), 0, 0
        self.cache_blocks = self._cache_plan(groups, first, start)
        self.cache: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.place.model(self.teacher).eval()
        tap = FeatureTap(self.teacher, [s.name for s in self.specs])
        bar = progress(total=len(groups) * self.steps, initial=first * self.steps + start, desc="distill", unit="step",
                       **({} if self.dist.is_main else {"disable": True}))  # TQDM_DISABLE still applies
        fault = int(os.environ.get(FAULT_ENV, "0") or 0)
        started = time.time()
        try:
            with graceful_stop() as stop:
                for index in range(first, len(groups)):
                    self._train_group(
                        groups, index, start if index == first else 0, state if index == first else None, tap, bar, stop, fault
                    )
                    state = None
                stopped = self.dist.any(stop["stop"])  # asked to stop during the very last step
        finally:
            bar.close()
            self.place.offload(self.teacher)
        self.profile["wall_s"] = time.time() - started
        self.profile["groups"] = len(groups)
        if self.dist.is_main:
            self._save_state(groups, len(groups), 0, [], None, None)
        log.info(
            "distill: %d groups of %d steps over %d candidates in %.1fs", len(groups), self.steps, len(self.keys), self.profile["wall_s"]
        )
        if stopped:
            raise KeyboardInterrupt
        return self._results()

    def _plan(self) -> list[list[Key]]:
        groups = None
        if self.dist.is_main:
            limit = memory_limits(self.cfg)[0]
            budget = group_budget(limit, self.device)  # what is already held comes off the limit
            planned, self.group_peak = plan_groups(self.teacher, self.specs, self.candidates, self.local_batch, budget, self.input_shape)
            self.budget = budget
            groups = [[join_key(k) for k in g] for g in planned]
            if len(groups) > 1:
                log.info("distill: %d groups fit %s (about %s each at most)", len(groups), mib(budget), mib(self.group_peak))
        return [[split_key(k) for k in g] for g in self.dist.broadcast_json(groups)]

    def _cache_plan(self, groups: list[list[Key]], first: int, start: int) -> set[str]:
        """Blocks shared by several groups, if their features for every step fit the cache limit."""
        owners: dict[str, set[int]] = {}
        for index, group in enumerate(groups[first:], first):
            for block, _ in group:
                owners.setdefault(block, set()).add(index)
        shared = {b for b, o in owners.items() if len(o) > 1}
        if not shared:
            return set()
        per_sample = sum(
            s.in_channels * math.prod(s.in_size) + s.out_channels * math.prod(s.out_size) for s in self.specs if s.name in shared
        )
        need = FLOAT * per_sample * self.local_batch * (self.steps - start)
        limit = memory_limits(self.cfg)[1]
        if limit == "auto" and self.device.type == "cuda":  # kept on the GPU, in what the groups leave free
            budget = getattr(self, "budget", None) or free_memory(self.device)
            allowed = max(0, budget - getattr(self, "group_peak", 0))
        elif limit == "auto":
            allowed = free_memory(self.device) // 2
        else:
            allowed = limit or 0
        allowed = self.dist.broadcast_json(allowed)
        log.info("distill: features of %s %s (%d MiB)", sorted(shared), "cached" if need <= allowed else "recomputed", need >> 20)
        return shared if need <= allowed else set()

    def _train_group(self, groups, index, start, state, tap, bar, stop, fault) -> None:
        members = groups[index]
        later = {b for g in groups[index + 1 :] for b, _ in g}
        blocks = list(dict.fromkeys(b for b, _ in members))
        for key in members:
            self.place.model(self._module(key)).train(self._cand(key).trainable)
        trainable = [k for k in members if self._cand(k).trainable]
        params = [p for k in trainable for p in self._module(k).parameters()]
        optimiser = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay) if params else None
        steps = self.steps
        scheduler = (
            torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
            if optimiser
            else None
        )
        if state is not None:
            for key, weights in state["weights"].items():
                self._module(split_key(key)).load_state_dict(weights)
            if optimiser is not None and state["optimiser"]:
                optimiser.load_state_dict(state["optimiser"])
                scheduler.load_state_dict(state["scheduler"])
        cached = all(s in self.cache and all(b in self.cache[s] for b in blocks) for s in range(start, steps))
        images = None if cached else self.batches.images(range(start, steps))
        with synced_batchnorm([self._module(k) for k in trainable], self.dist):
            for step in range(start, steps):
                if self.dist.any(stop["stop"]):
                    self._save_state(groups, index, step, members, optimiser, scheduler)
                    log.info("distill: stopped at group %d step %d; state saved", index + 1, step)
                    raise KeyboardInterrupt
                feats = self._features(step, blocks, later, images, tap)
                tick = time.perf_counter()
                step_losses = self._step(members, blocks, feats, step, optimiser, scheduler)
                self._sync()
                self.profile["candidates_s"] += time.perf_counter() - tick
                self.profile["steps"] += 1
                for key, value in step_losses.items():
                    record = self.stats[key]
                    record["steps"] += self._cand(key).trainable
                    record["win_sum"] += value
                    record["win_n"] += 1
                    if step >= self.late:
                        record["loss_sum"] += value
                        record["loss_n"] += 1
                if step + 1 in self.cuts:
                    self._cut(members, step + 1)
                bar.update(1)
                if (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < steps:
                    self._save_state(groups, index, step + 1, members, optimiser, scheduler)
                if fault and index * steps + step + 1 == fault:
                    os.kill(os.getpid(), signal.SIGKILL)
        for step in list(self.cache):  # features no later group needs
            self.cache[step] = {b: v for b, v in self.cache[step].items() if b in later}
        for key in members:
            self.place.offload(self._module(key))
        for param in params:  # no gradient is written with the weights, nor kept
            param.grad = None
        if self.dist.is_main:  # the group's weights first, then the state that says it is done
            for key in members:
                save_candidate(self.run.weights_dir, self._cand(key))
            self._save_state(groups, index + 1, 0, [], None, None)
        # the group's modules, gradients and optimiser moments go: the next group is built afresh
        for key in members:
            self._cand(key).release()
        del optimiser, scheduler, params
        release_memory(self.device)

    def _cut(self, members: list[Key], done: int) -> None:
        """Successive halving: stop the trainable candidates another of their block dominates."""
        stopped, live = cut_dominated(self.stats, members, done, lambda k: self._cand(k).trainable, lambda k: self._cand(k).macs)
        log.info("distill: step %d, %d dominated candidates stop; %d train on", done, stopped, live)

    def _sync(self) -> None:
        if self.device.type == "cuda" and self.profile.get("synchronise"):
            torch.cuda.synchronize(self.device)

    def _features(self, step, blocks, later, images, tap) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        tick = time.perf_counter()
        batch = next(images) if images is not None else None
        self.profile["data_s"] += time.perf_counter() - tick
        self.profile["images"] += self.batches.global_size(step)
        entry = self.cache.get(step, {})
        if all(b in entry for b in blocks):
            self.profile["cached_steps"] += 1
            return entry
        tick = time.perf_counter()
        feats = self._teacher_features(tap, self.place.batch(batch), blocks)
        self._sync()
        self.profile["teacher_s"] += time.perf_counter() - tick
        self.profile["teacher_passes"] += 1
        keep = {b: v for b, v in feats.items() if b in self.cache_blocks and b in later}
        if keep:
            self.cache.setdefault(step, {}).update(keep)
        return feats

    def _teacher_features(self, tap, x: torch.Tensor, blocks) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The teacher's block inputs and outputs, from a channels_last batch on a CPU unless
        the teacher failed on one (then from contiguous batches from there on)."""
        fast = x if self.teacher_plain or not CPU_CHANNELS_LAST else fast_batch(x)
        if fast is not x:
            try:
                return tap.features(self.teacher, fast, blocks)
            except RuntimeError as exc:
                self.teacher_plain = True
                log.info("distill: the teacher failed on a channels_last batch (%s); contiguous batches from here", exc)
        return tap.features(self.teacher, x, blocks)

    def _step(self, members, blocks, feats, step, optimiser, scheduler) -> dict[Key, float]:
        """One optimisation step of a group; returns the global loss of each live candidate."""
        if optimiser is not None:
            optimiser.zero_grad(set_to_none=True)
        scales = target_scale(feats, blocks, self.dist)
        losses: dict[Key, float] = {}
        for block in blocks:
            (x, y), (var, count) = feats[block], scales[block]
            live = [k for k in members if k[0] == block and not self.stats[k]["status"].startswith(("dropped", "stopped"))]
            local = []
            # on a CPU, channels_last batches train convolutions 1.3-2x faster (docs/benchmarks.md)
            cpu = CPU_CHANNELS_LAST and x.device.type == "cpu" and x.dim() == 4
            fast, plain = (fast_batch(x), x.contiguous()) if cpu else (x, x)
            for key in live:
                with torch.set_grad_enabled(self._cand(key).trainable), self.place.autocast(fp16=False):
                    local.append(normalised_mse(self._forward(key, fast, plain), y, var, count))
            if not local:
                continue
            values = self.dist.all_reduce(torch.stack([v.detach() for v in local])).tolist()
            backward = []
            for key, loss, value in zip(live, local, values):
                if not math.isfinite(value):
                    self.stats[key]["status"] = f"dropped: loss {value} at step {step}"
                    log.warning("distill: %s/%s dropped (non-finite loss at step %d)", *key, step)
                    continue
                losses[key] = value
                if self._cand(key).trainable:
                    backward.append(loss)
            if backward:  # one backward per block frees its graphs before the next
                torch.stack(backward).sum().backward()
        if optimiser is not None:
            all_reduce_grads([p for group in optimiser.param_groups for p in group["params"]], self.dist)
            optimiser.step()
            scheduler.step()
        return losses

    def _forward(self, key: Key, fast: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        """The candidate on the channels_last batch ``fast``, or on the contiguous ``plain`` where
        they are the same tensor or where it failed on ``fast`` once (a ``view`` of a channels_last tensor)."""
        module = self._module(key)
        if fast is not plain and key not in self.channels_last:
            self.channels_last[key] = channels_last_trains_safely(module)
            if not self.channels_last[key]:
                log.info("distill: %s/%s trains on contiguous batches (a strided 1x1 convolution with few input "
                         "channels: oneDNN issue #6035)", *key)
        if fast is plain or not self.channels_last[key]:
            return module(plain)
        try:
            return module(fast)
        except RuntimeError as exc:
            self.channels_last[key] = False
            log.info("distill: %s/%s failed on a channels_last batch (%s); it trains on contiguous ones", *key, exc)
            return module(plain)

    def _results(self) -> dict[Key, dict]:
        results = {}
        for key, record in self.stats.items():
            cand = self._cand(key)
            # the keep-teacher op is not run (it is its block): its loss is zero by definition
            loss = record["loss_sum"] / record["loss_n"] if record["loss_n"] else (0.0 if key[1] == TEACHER_OP else float("nan"))
            status = record["status"]
            if status == "ok" and not cand.trainable:
                status = "fixed"
            results[key] = {"distill_loss": loss, "status": status, "steps": int(record.get("steps", 0))}
        return results


def distill_candidates(
    teacher: nn.Module,
    specs: list[BlockSpec],
    candidates: dict[str, dict[str, Candidate]],
    splits: DataSplits,
    config: LanaConfig,
    run: RunFolder,
    dist: Dist | None = None,
    profile: dict | None = None,
) -> dict[Key, dict]:
    """Train every trainable candidate to mimic its teacher block; save their weights.

    Args:
        teacher: the teacher network (kept in eval mode, never updated).
        specs: the replaceable blocks.
        candidates: candidates by block and op name; each group's modules are built when it
            starts and released when it ends, its weights written to
            ``weights/<block>/<op>.pt`` and named by ``Candidate.weights`` (so a later
            ``cand.module`` is the distilled one).
        splits: the dataset splits (``train`` is used).
        config: the run config (``distill`` section: steps, optimiser, memory, checkpoints).
        run: the run folder (weights and resumable state land here; rank 0 alone writes).
        dist: rank, world size and device (default: this process alone, ``distill.device``
            or else the config's ``device``).
        profile: if given, filled with seconds in teacher/candidates/data, steps, images,
            teacher passes, cached steps and groups (``{"synchronise": True}`` makes the
            GPU split exact at some cost).

    Returns:
        Per (block, op): ``distill_loss`` (mean normalised MSE over the last quarter of
        steps) and ``status`` (``ok``, ``fixed`` for untrained ops, or ``dropped: ...``).
    """
    dist = dist or init_distributed(*distill_device_name(config))
    return _Distiller(teacher, specs, candidates, splits, config, run, dist, profile).run_all()

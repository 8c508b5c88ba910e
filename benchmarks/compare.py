"""lana against the alternatives at equal measured latency, several seeds (``benchmarks/quality.py``).

For one teacher (converged and cached: ``benchmarks.teachers``): run lana's distill stage
once per seed, then at each budget (a share of the teacher's latency) find each method's network with the same
search (:func:`benchmarks.search.search_band`: its knob searched on the measured,
interleaved share of the teacher, same band, same number of measurements), and give every
network the same fine-tune by distillation from the teacher, once per seed:

- ``lana``: the solver's selection, knob = the table budget;
- ``random`` / ``random-best``: a random selection predicted inside the band (knob = the
  table budget), and the best of N such draws by validation top-1 before fine-tuning (where
  that is random's own draw, random's fine-tuned network and row: the training is the same);
- ``tp-taylor`` / ``tp-magnitude``: Torch-Pruning, global iterative group-Taylor and uniform
  one-shot L2 magnitude, knob = the pruning ratio (a vision transformer: whole heads and MLP
  hidden units, ranked per layer in one shot by either importance; ``benchmarks.baselines``);
- ``width`` and ``member:NAME``: the teacher's family, and its real smaller members (for the
  ViT: shallower ones), at a width multiplier, trained from scratch with the teacher's recipe
  before the fine-tune.

Seeds change every random choice of every method: lana's distillation (its initialisation
and data order: one run folder per seed, ``RUN/seed<N>``, so lana's and random's tables
and lana's selection differ per seed), the random draws, the batches that rank
Torch-Pruning's Taylor groups, the from-scratch initialisation and the fine-tune's data
order. The teacher is shared. Swap-one scores use ``score.val_images`` images of the
validation split (lana's seeded draw); every choice here (random-best, the best other method, the
headline) uses the rest of it, so no choice is made on the images that scored the
candidates. Test top-1 is evaluated once per network and only reported. At every budget
one extra row gives the best baseline (by validation) lana's total compute.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks.baselines import prune_magnitude, prune_taylor, random_in_band, width_scaled
from benchmarks.budget_cells import LONG_METHODS, equal_compute, long_finetune, run_budget
from benchmarks.report import HEADLINE_ROUNDS, cells, close_to_teacher
from benchmarks.search import BAND, Found, OutOfBand, median_shares, search_band
from benchmarks.table_choice import choice_split, rank_in_window
from lana.config import LanaConfig
from lana.data import DataSplits, load_data, take_tensors
from lana.distill.candidates import assemble_student
from lana.distill.train import TeacherLogits, distil_into
from lana.distill.validation import evaluate
from lana.latency.measure import measure_networks
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, atomic_write_bytes, setup_logging, write_json
from lana.selection import LATENCY, build_problem
from lana.stages.distill import distill_stage
from lana.stages.solve import load_run

log = logging.getLogger("lana")
METHODS = ("lana", "torch-pruning", "width", "random")  # families the command line can choose
ALTERNATIVES = 2  # of a table method's selections at one knob, besides its first, offered to the band search


def _finetune(ctx: Context, model: nn.Module, targets: TeacherLogits | None, seed: int, epochs: float | None = None,
              lr: float | None = None, desc: str = "finetune", splits: DataSplits | None = None) -> float:
    """The shared fine-tune: distillation from the teacher (``finetune`` settings) on ``splits``
    (default the run's, ``data.train_limit`` applied). Returns seconds."""
    tick = time.time()
    distil_into(model, ctx.teacher, splits or ctx.splits, ctx.config.finetune, ctx.config.data.batch_size, seed, desc,
                epochs, lr, targets)
    return time.time() - tick


class Comparison:
    """One teacher's searches, fine-tunes and rows; see the module docstring."""

    def __init__(self, contexts: dict[int, Context], n_random: int, max_measurements: int, band=BAND,
                 solver: str = "auto") -> None:
        self.contexts, self.seeds = contexts, list(contexts)
        self.ctx = ctx = contexts[self.seeds[0]]  # teacher, data and blocks: the same in every seed's run
        self.n_random, self.max_measurements, self.band, self.solver = n_random, max_measurements, band, solver
        config = ctx.config
        self.val = choice_split(ctx)
        self.test = take_tensors(ctx.splits.test, config.data.test_limit)
        self.inputs = {seed: load_run(c.run.path) for seed, c in contexts.items()}
        self.num_classes = int(config.teacher.kwargs.get("num_classes", ctx.splits.num_classes))
        self.timing: dict[str, float] = {}
        tick = time.time()
        self.targets = TeacherLogits.if_it_fits(ctx.teacher, ctx.splits, config.data.batch_size)
        self.timing["teacher_logits_s"] = time.time() - tick
        self.rows: list[dict[str, Any]] = []
        self.models: list[nn.Module] = []
        self.found: dict[tuple[str, float, int], Found] = {}  # (method, budget, seed) → the network searched
        self._full: tuple[DataSplits, TeacherLogits | None] | None = None

    def full_train(self) -> tuple[DataSplits, TeacherLogits | None]:
        """The whole train split (``data.train_limit`` lifted) and the teacher's logits over it, made once."""
        if self._full is None:
            ctx = self.ctx
            splits = load_data(ctx.config.data.model_copy(update={"train_limit": None}))
            splits.batch_fn, splits.deterministic = ctx.splits.batch_fn, ctx.splits.deterministic
            tick = time.time()
            self._full = splits, TeacherLogits.if_it_fits(ctx.teacher, splits, ctx.config.data.batch_size)
            self.timing["full_teacher_logits_s"] = time.time() - tick
        return self._full

    def taylor_batches(self, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Four training batches drawn with ``seed``: the gradients that rank Taylor's channel groups."""
        bs = self.ctx.config.data.batch_size
        x, y = take_tensors(self.ctx.splits.train)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:4 * bs]
        return list(zip(x[idx].split(bs), y[idx].split(bs)))

    # -- searches ---------------------------------------------------------------------------
    def search(self, method: str, share: float, seed: int | None, build: Callable, fast: float,
               slow: float) -> Found | None:
        """``build``'s knob searched into the band; None (and a row saying why) when it cannot be."""
        try:
            found = search_band(build, fast, slow, share, self.ctx.teacher, self.ctx.input_shape, self.ctx.config.latency,
                                self.band, self.max_measurements)
        except OutOfBand as exc:
            log.warning("%s at %.2f× (seed %s): %s", method, share, seed, exc)
            self.rows.append({"method": method, "budget": share, "seed": seed, "note": str(exc)})
            return None
        return found

    def _table(self, share: float, seed: int, draw: Callable[[Any, float], dict]) -> tuple[Callable, float, float]:
        """The knob of a table method on ``seed``'s run: the table budget (ms), from the table's fastest total to the teacher's."""
        ctx, inputs = self.contexts[seed], self.inputs[seed]
        problem, _ = build_problem(inputs, f"{inputs.teacher_ms:.6f}ms")
        fast = float(problem.min_totals()[problem.cost_names.index(LATENCY)]) * (1 + 1e-6)

        def network(choice: dict[str, str], rank: int = 0):
            # the same selection from another table budget is the same network: the search does not time it again
            key = tuple(sorted(choice.items()))
            return assemble_student(ctx.teacher, ctx.specs, choice, ctx.run.weights_dir), {"choice": choice, "key": key, "rank": rank}

        def build(table_ms: float):
            drawn = draw(problem, table_ms)  # one selection, or several in the method's order of preference
            first, *others = drawn if isinstance(drawn, list) else [drawn]
            model, extra = network(first)
            # the next two by the method's order: a closed bracket's alternatives get the search's last
            # measurements, and more would take every one left from the probes (benchmarks.search)
            extra["alternatives"] = [(tuple(sorted(c.items())), lambda c=c, r=r: network(c, r))
                                     for r, c in enumerate(others[:ALTERNATIVES], 1)]
            return model, extra
        return build, fast, float(inputs.teacher_ms)

    def lana(self, share: float, seed: int, alternatives: bool = True) -> Found | None:
        """lana's selection from ``seed``'s own distillation, its table budget searched into the band
        (``alternatives``: the other top-k selections are offered to the search too)."""
        inputs, ctx = self.inputs[seed], self.contexts[seed]
        picked: dict = {}  # a selection seen at another table budget: not assembled and measured again

        def draw(problem, table_ms):  # the kept selection first, the other top-k after it: the search's alternatives
            order = rank_in_window(ctx, inputs, table_ms, self.band[0], self.solver, picked)
            return order if alternatives else order[0]
        found = self.search("lana", share, seed, *self._table(share, seed, draw))
        if found:
            self.found[("lana", share, seed)] = found
        return found

    def random_draws(self, share: float, seed: int) -> list[Found]:
        """``n_random`` random selections from ``seed``'s table, each searched into the band with its own draws."""
        rng = np.random.default_rng([seed, int(share * 1000)])
        lo = self.band[0]
        found = []
        for i in range(self.n_random):
            build, fast, slow = self._table(share, seed, lambda p, t: random_in_band(p, rng, lo * t, t))
            got = self.search(f"random#{i}", share, seed, build, fast, slow)
            if got is None:
                self.rows.pop()  # the draws' misses are summed up in one row below
            else:
                found.append(got)
        return found

    def pruned(self, method: str, share: float, seed: int) -> Found | None:
        """Torch-Pruning at the searched ratio (Taylor: ranked on ``seed``'s batches; magnitude: no randomness)."""
        teacher, shape = self.ctx.teacher, self.ctx.input_shape
        if method == "tp-taylor":
            batches = self.taylor_batches(seed)
            build = lambda r: prune_taylor(teacher, batches, r, self.num_classes)  # noqa: E731
        else:
            build = lambda r: prune_magnitude(teacher, shape, r, self.num_classes)  # noqa: E731
        found = self.search(method, share, seed, build, 0.9, 0.0)
        if found:
            self.found[(method, share, seed)] = found
        return found

    def scaled(self, method: str, model: str, kwargs: dict, share: float, widest: float) -> Found | None:
        """A family member at the searched width; ``extra["fresh"]`` builds it again with new weights (per seed)."""
        def build(w: float):
            return width_scaled(model, kwargs, w), {"fresh": lambda: width_scaled(model, kwargs, w), "model": model}
        found = self.search(method, share, None, build, 0.1, widest)
        for seed in self.seeds if found else []:
            self.found[(method, share, seed)] = found
        return found

    # -- training and rows ------------------------------------------------------------------
    def train_and_add(self, method: str, share: float, found: Found, seed: int, search_s: float, base_s: float = 0.0,
                      epochs: float | None = None, setting: str = "", full: bool = False, **extra: Any) -> None:
        """Fine-tune ``found``'s network with ``seed`` and add its row.

        A new network (width, member) is built again with fresh weights for each seed and
        first trained from scratch with the teacher's recipe (with distillation); the
        others start from a copy of what the search found. ``full``: the fine-tune runs on
        the whole train split (:meth:`full_train`) instead of the run's.
        """
        torch.manual_seed(seed)
        fresh = found.extra.get("fresh")
        model = fresh() if fresh else copy.deepcopy(found.model)
        seconds = base_s
        if fresh:
            recipe = self.ctx.config.teacher_training
            seconds += _finetune(self.ctx, model, self.targets, seed, recipe.epochs, recipe.lr, desc=f"{method} (from scratch)")
        splits, targets = self.full_train() if full else (None, self.targets)
        ft = _finetune(self.ctx, model, targets, seed, epochs, desc=f"{method} {share:g} seed {seed}", splits=splits)
        self.add(model, method=method, budget=share, seed=seed, share=found.share, search_s=search_s, train_s=seconds + ft,
                 finetune_s=ft, measurements=found.measurements, knob=found.knob, setting=setting or _setting(found), **extra)

    def add(self, model: nn.Module, **row: Any) -> None:
        row["val_top1"] = evaluate(model, *self.val)[1]
        row["top1"] = evaluate(model, *self.test)[1]  # once per network, reported only
        self.rows.append(row)
        self.models.append(model)
        log.info("%s", {k: v for k, v in row.items() if k != "setting"})


def _setting(found: Found) -> str:
    choice = found.extra.get("choice")
    if not choice:
        return f"knob {found.knob:.4g}"
    counts: dict[str, int] = {}
    for op in choice.values():
        counts[op] = counts.get(op, 0) + 1
    rank = found.extra.get("rank", 0)  # an alternative the band search took: the pipeline's choice jumped over the band
    return (f"top-k #{rank + 1}: " if rank else "") + ", ".join(f"{op}×{n}" if n > 1 else op for op, n in counts.items())


def compare_teacher(config: LanaConfig, run_dir: str | Path, shares: list[float], seeds: list[int], n_random: int = 3,
                    methods: tuple[str, ...] = METHODS, max_measurements: int = 8, max_equal_epochs: float = 30.0,
                    train_teacher: Callable[[LanaConfig, RunFolder], float] | None = None,
                    band: tuple[float, float] = BAND, long: dict | None = None, distill: bool = True,
                    final: bool = True) -> pd.DataFrame:
    """Every method at every budget and seed for one teacher; one row per network (teacher included).

    Args:
        config: the run config (teacher, data, ops, distill, latency, finetune settings).
        run_dir: the teacher's folder: one lana run folder per seed (``seed<N>``), one file per
            finished budget (``budget_<share>.pt``); what is there is reused (a stopped run resumes).
        shares: budgets as shares of the teacher's measured latency.
        seeds: seeds (at least 2 for the win/tie rule); each varies every random choice of every method.
        n_random: random selections drawn per seed for ``random-best``.
        methods: which families of :data:`METHODS` to run.
        max_measurements: measurements each search may make.
        max_equal_epochs: cap on the fine-tune epochs of the equal-compute row.
        train_teacher: prepares the teacher's checkpoint when it is missing; returns its training seconds.
        band: the window every search must end in, as fractions of the budget.
        long: ``{"shares": [...], "steps": N, "methods": [...]}``: at each of these budgets,
            each method's network (per seed, searched as above) fine-tuned for N steps on the whole
            train split; rows ``"<method> (long fine-tune)"`` with ``protocol`` ``"long"``
            (:func:`benchmarks.budget_cells.long_finetune`). None or no shares: none.
        distill: run each seed's distill stage (resuming it); False: the seeds' runs are finished
            (``benchmarks.schedule``'s units: another process distilled them) and are only read.
        final: add the teacher's row, re-time every network and write ``quality.csv`` and
            ``quality_timing.json``; False (one unit of the work): only this call's budgets' rows.

    Returns:
        Columns teacher, method, budget, seed, share, val_top1, top1, search_s, train_s,
        final_share (every network re-timed interleaved with the teacher at the end),
        headline_share and headline_rounds (the headline's students: the median share of
        HEADLINE_ROUNDS pairwise timings with the teacher; NaN for the others), note, and
        details (knob, measurements, setting, finetune_s, protocol, finetune_steps).
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    if train_teacher is not None:
        timing["train_teacher_s"] = train_teacher(config, run)
    contexts, distill_s, distill_cpu = {}, {}, {}
    for seed in seeds:  # lana's distillation per seed: its initialisation and data order are random choices too
        contexts[seed], distill_s[seed], distill_cpu[seed] = distill_seed(config, run.path, seed, run_stage=distill)
    timing["distill_score_latency_s"] = sum(distill_s.values()) / len(distill_s)
    timing["distill_score_latency_s_per_seed"] = {str(seed): seconds for seed, seconds in distill_s.items()}
    timing["distill_score_latency_cpu_s_per_seed"] = {str(seed): seconds for seed, seconds in distill_cpu.items()}
    setup_logging(run)  # the comparison's own log, RUN/<teacher>/logs/lana.log, after the seeds' runs
    cmp = Comparison(contexts, n_random, max_measurements, band)
    timing.update(cmp.timing)
    ctx, model_name = cmp.ctx, config.teacher.model
    if final:
        cmp.add(ctx.teacher, method="teacher", budget=1.0, seed=None, share=1.0, search_s=0.0,
                train_s=timing.get("train_teacher_s", 0.0))
    for share in shares:
        def comparison(share: float = share) -> None:
            run_budget(cmp, share, methods, n_random, distill_s)
            equal_compute(cmp, share, max_equal_epochs, distill_s)
        timing[f"budget_{share:g}_s"] = _resumable(cmp, run.file(f"budget_{share:g}.pt"), f"budget {share:.2f}×", comparison)
    long = long or {}
    for share in long.get("shares", []):
        def longer(share: float = share) -> None:
            long_finetune(cmp, share, int(long["steps"]), long.get("methods", LONG_METHODS))
        settings = {"steps": int(long["steps"]), "methods": list(long.get("methods", LONG_METHODS))}
        timing[f"long_{share:g}_s"] = _resumable(cmp, run.file(f"long_{share:g}.pt"), f"long fine-tune {share:.2f}×", longer,
                                                 settings)
    timing.update(cmp.timing)
    if not final:
        frame = pd.DataFrame(cmp.rows)
        frame.insert(0, "teacher", model_name)
        return frame

    # Every network timed again, interleaved with the teacher: drift since its search shows here.
    tick = time.time()
    final = measure_networks(cmp.models, ctx.input_shape, config.latency,
                             time_cap_s=max(10.0, 2 * config.latency.time_cap_s * len(cmp.models)))
    timing["final_timing_s"] = time.time() - tick
    networks = [r for r in cmp.rows if "val_top1" in r]
    for row, t in zip(networks, final):
        row["final_share"] = t["median_ms"] / final[0]["median_ms"]
    # The headline's students (lana's cells within 0.5 validation points of the teacher) timed once
    # more as every search times a network, pairwise with the teacher, in HEADLINE_ROUNDS rounds: one
    # round-robin of about 50 networks read 3-8 % above pairwise and a single measurement of either
    # kind scattered 5-10 % on the 2-core VM (docs/benchmarks.md, the final run of 2026-12-06)
    tick = time.time()
    frame = pd.DataFrame(cmp.rows).assign(teacher=model_name)
    close = close_to_teacher(cells(frame), frame.loc[frame["method"] == "teacher", "val_top1"].iloc[0])
    wanted = set(zip(close["budget"], close["method"]))
    picked = [i for i, r in enumerate(networks) if (r["budget"], r["method"]) in wanted]
    medians = median_shares([cmp.models[i] for i in picked], cmp.models[0], ctx.input_shape, config.latency, HEADLINE_ROUNDS)
    for i, share in zip(picked, medians):
        networks[i].update(headline_share=share, headline_rounds=HEADLINE_ROUNDS)
    timing["headline_timing_s"] = time.time() - tick
    frame = pd.DataFrame(cmp.rows)
    frame.insert(0, "teacher", model_name)
    frame.to_csv(run.file("quality.csv"), index=False)
    write_json(run.file("quality_timing.json"), timing)
    return frame


def distill_seed(config: LanaConfig, run_dir: Path, seed: int, run_stage: bool = True) -> tuple[Context, float, float]:
    """lana's distill stage for ``seed`` in ``run_dir/seed<N>`` (resumed, or reused when done; only
    read when ``run_stage`` is False): its context, and its distillation + scoring + profiling
    seconds, wall and CPU, summed over the attempts a stopped run took."""
    seeded = config.model_copy(update={"seed": seed})
    seed_run = RunFolder(Path(run_dir) / f"seed{seed}")
    if run_stage:
        seed_run.path.mkdir(parents=True, exist_ok=True)
        distill_stage(seeded, seed_run)
    parts = json.loads((seed_run.path / "distill_timing.json").read_text())
    wall = sum(parts.get(k, 0.0) for k in ("distill", "score", "latency"))
    cpu = sum(parts.get(k, 0.0) for k in ("distill_cpu", "score_cpu", "latency_cpu"))
    return prepare(seeded, seed_run), wall, cpu


def _resumable(cmp: Comparison, saved: Path, what: str, work: Callable[[], Any], settings: dict | None = None) -> float:
    """``work`` (which adds rows and networks to ``cmp``), or its rows and networks from ``saved``
    where a run that stopped later finished it with the same ``settings``; saved atomically once
    done. Returns the seconds the work took (when it was done, in this run or the earlier one)."""
    done = torch.load(saved, weights_only=False) if saved.is_file() else None  # our own file: whole modules
    if done is not None and done.get("settings") != settings:
        log.info("%s: %s was made with %s, not %s: done again", what, saved, done.get("settings"), settings)
        done = None
    if done is not None:
        cmp.rows += done["rows"]
        cmp.models += done["models"]
        log.info("%s: %d rows reused from %s", what, len(done["rows"]), saved)
        return float(done.get("seconds", float("nan")))
    first_row, first_model, tick = len(cmp.rows), len(cmp.models), time.time()
    work()
    seconds = time.time() - tick
    buffer = io.BytesIO()
    torch.save({"rows": cmp.rows[first_row:], "models": cmp.models[first_model:], "seconds": seconds,
                "settings": settings}, buffer)
    atomic_write_bytes(saved, buffer.getvalue())
    return seconds

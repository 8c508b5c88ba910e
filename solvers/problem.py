"""The neutral selection problem and its answer.

A *selection problem* has blocks, each with candidate rows; every row has a score (higher is
better) and any number of cost columns. Exactly one row is chosen per block so that the summed
score is largest while each limited cost total (plus a fixed offset) stays within its bounds.

Floating point: a total is summed in block order starting from ``0.0`` and the offset is added
last (:meth:`SelectionProblem.totals`). Every back-end, the brute force and the exact dynamic
program judge feasibility by that one sum, with a tolerance of ``1e-9`` relative to the limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from lana.errors import TableError

REL_TOL = 1e-9
STANDARD_COSTS = ("latency_ms", "params", "macs")


def standard_cost_columns(columns: Iterable[Any]) -> list[str]:
    """The cost columns carried by default: latency_ms, params, macs and latency_ms:<tag>."""
    return [str(c) for c in columns if c in STANDARD_COSTS or str(c).startswith("latency_ms:")]


def limit_tolerance(value: float) -> float:
    """Slack granted to a limit: 1e-9 relative (absolute below 1)."""
    return REL_TOL * max(1.0, abs(value))


@dataclass(frozen=True, eq=False)
class SelectionProblem:
    """Blocks x candidates, one score and several cost columns per candidate, and limits.

    Rows are grouped by block: the rows of block ``b`` are ``block_start[b]:block_start[b+1]``
    (a *local* row index). ``source_rows`` maps local rows to positions in the caller's table.
    """

    blocks: tuple[str, ...]
    block_start: np.ndarray
    candidates: np.ndarray
    score: np.ndarray
    cost_names: tuple[str, ...]
    costs: np.ndarray  # shape (number of costs, number of rows)
    upper: dict[str, float] = field(default_factory=dict)
    lower: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, float] = field(default_factory=dict)
    source_rows: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False)  # shared by problems with the same rows

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_frame(
        cls,
        df: Any,
        score: str = "score",
        upper: dict[str, float] | None = None,
        lower: dict[str, float] | None = None,
        offsets: dict[str, float] | None = None,
        block: str = "block",
        candidate: str = "candidate",
        costs: Iterable[str] | None = None,
    ) -> "SelectionProblem":
        """Build a problem from a table with one row per (block, candidate).

        Args:
            df: a pandas DataFrame.
            score: column to maximise.
            upper / lower: cost column -> limit on its total (offset included).
            offsets: cost column -> fixed amount added to its total (e.g. stem latency).
            block / candidate: the naming columns; blocks keep first-appearance order.
            costs: cost columns to carry; default: the limited and offset ones plus
                ``latency_ms``, ``params``, ``macs`` and ``latency_ms:<tag>`` where present.
        Returns:
            The problem. Rows with a non-finite score or cost cannot be chosen and are dropped.
        Raises:
            TableError: missing or non-numeric columns, duplicate rows, or a block left empty.
        """
        if len(df) == 0:
            raise TableError("table has no rows; expected one row per (block, candidate)")
        upper, lower, offsets = dict(upper or {}), dict(lower or {}), dict(offsets or {})
        limited = list(dict.fromkeys([*upper, *lower, *offsets]))
        costs = list(dict.fromkeys([*limited, *(standard_cost_columns(df.columns) if costs is None else costs)]))
        needed = [block, candidate, score, *costs]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise TableError(
                f"table lacks column(s) {', '.join(map(repr, missing))}; found {', '.join(map(str, df.columns))}; "
                f"add them or name other columns"
            )
        numbers = {}
        for col in [score, *costs]:
            try:
                numbers[col] = np.asarray(df[col], dtype=float)
            except (TypeError, ValueError):
                raise TableError(f"column '{col}' must be numeric, found {df[col].dtype}; fix the table") from None
        names = np.asarray(df[block].astype(str))
        cands = np.asarray(df[candidate].astype(str))
        pairs = names.astype(object) + "\x00" + cands.astype(object)
        _, first, counts = np.unique(pairs, return_index=True, return_counts=True)
        if (counts > 1).any():
            at = first[np.argmax(counts > 1)]
            raise TableError(
                f"candidate '{cands[at]}' appears {counts.max()} times in block '{names[at]}'; "
                f"expected one row per (block, candidate); drop the duplicates"
            )
        unique_names, first_pos, inverse = np.unique(names, return_index=True, return_inverse=True)
        appearance = np.argsort(first_pos, kind="stable")
        blocks = tuple(str(b) for b in unique_names[appearance])
        block_id = np.argsort(appearance)[inverse]  # block index in first-appearance order
        cost_matrix = np.vstack([numbers[c] for c in costs]) if costs else np.zeros((0, len(df)))
        ok = np.isfinite(numbers[score]) & np.isfinite(cost_matrix).all(axis=0)
        empty = sorted(set(range(len(blocks))) - set(block_id[ok].tolist()))
        if empty:
            raise TableError(
                f"block '{blocks[empty[0]]}' has no candidate with a finite '{score}' and costs; "
                f"expected at least one (keep-teacher); fix or remeasure that block"
            )
        keep = np.flatnonzero(ok)
        keep = keep[np.argsort(block_id[keep], kind="stable")]
        start = np.searchsorted(block_id[keep], np.arange(len(blocks) + 1))
        problem = cls(
            blocks=blocks,
            block_start=start,
            candidates=cands[keep],
            score=numbers[score][keep],
            cost_names=tuple(costs),
            costs=cost_matrix[:, keep],
            upper={k: float(v) for k, v in upper.items()},
            lower={k: float(v) for k, v in lower.items()},
            offsets={k: float(v) for k, v in offsets.items()},
            source_rows=keep,
        )
        problem.check_limits()
        return problem

    @classmethod
    def from_arrays(
        cls,
        sizes: Iterable[int],
        score: np.ndarray,
        costs: dict[str, np.ndarray],
        upper: dict[str, float] | None = None,
        lower: dict[str, float] | None = None,
        offsets: dict[str, float] | None = None,
    ) -> "SelectionProblem":
        """Build a problem from flat arrays, blocks consecutive (``sizes[b]`` rows each).

        Blocks are named ``b0, b1, ...`` and candidates ``c0, c1, ...`` within a block.
        """
        sizes = np.asarray(list(sizes), dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(sizes)])
        local = np.arange(start[-1]) - np.repeat(start[:-1], sizes)
        problem = cls(
            blocks=tuple(f"b{i}" for i in range(len(sizes))),
            block_start=start,
            candidates=np.char.add("c", local.astype(str)).astype(object),
            score=np.asarray(score, dtype=float),
            cost_names=tuple(costs),
            costs=np.vstack([np.asarray(v, dtype=float) for v in costs.values()]) if costs else np.zeros((0, start[-1])),
            upper=dict(upper or {}),
            lower=dict(lower or {}),
            offsets=dict(offsets or {}),
            source_rows=np.arange(start[-1]),
        )
        problem.check_limits()
        return problem

    def check_limits(self) -> None:
        """Raise TableError when a limit or offset names a missing cost or is not a finite number."""
        for kind, limits in (("upper limit", self.upper), ("lower limit", self.lower), ("offset", self.offsets)):
            for name, value in limits.items():
                if name not in self.cost_names:
                    option = {"latency_ms": " (--budget)", "params": " (--max-params)", "macs": " (--max-macs)"}.get(name, "")
                    raise TableError(f"{kind} on '{name}'{option} but the table has no such cost column; "
                                     f"its cost columns: {', '.join(self.cost_names) or 'none'}")
                if not math.isfinite(value):
                    raise TableError(f"{kind} on '{name}' must be a finite number, got {value}")

    # -- shape -------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def sizes(self) -> np.ndarray:
        """Candidates per block."""
        return np.diff(self.block_start)

    @property
    def limited(self) -> tuple[str, ...]:
        """Cost columns with an upper or lower limit, upper ones first."""
        return tuple(dict.fromkeys([*self.upper, *self.lower]))

    def cost(self, name: str) -> np.ndarray:
        """The per-row values of one cost column."""
        return self.costs[self.cost_names.index(name)]

    def block_of_rows(self) -> np.ndarray:
        """Block index of every local row."""
        return np.repeat(np.arange(self.n_blocks), self.sizes)

    def search_space(self) -> float:
        """log10 of the number of possible selections."""
        return float(np.log10(self.sizes).sum())

    # -- evaluation (the one canonical sum) ----------------------------------------------
    def totals(self, index: np.ndarray) -> np.ndarray:
        """Totals of every cost column for one chosen local row per block, offsets included."""
        return self.sum_blocks(self.costs[:, np.asarray(index, dtype=np.int64)])

    def sum_blocks(self, per_block: np.ndarray) -> np.ndarray:
        """Canonical totals of a (costs x blocks) matrix: summed in block order from 0.0, offset last."""
        acc = np.zeros(len(self.cost_names))
        for b in range(per_block.shape[1]):
            acc = acc + per_block[:, b]
        return acc + np.array([self.offsets.get(c, 0.0) for c in self.cost_names])

    def objective(self, index: np.ndarray) -> float:
        """Summed score of one chosen local row per block (in block order from 0.0)."""
        acc = 0.0
        for row in index:
            acc = acc + float(self.score[row])
        return acc

    def upper_cap(self, name: str) -> float:
        """The largest total of ``name`` accepted (limit plus tolerance)."""
        value = self.upper[name]
        return value + limit_tolerance(value)

    def lower_cap(self, name: str) -> float:
        """The smallest total of ``name`` accepted (limit minus tolerance)."""
        value = self.lower[name]
        return value - limit_tolerance(value)

    def violated(self, totals: np.ndarray) -> list[str]:
        """Names of the limits that ``totals`` break."""
        out = []
        for i, name in enumerate(self.cost_names):
            if name in self.upper and not totals[i] <= self.upper_cap(name):
                out.append(name)
            elif name in self.lower and not totals[i] >= self.lower_cap(name):
                out.append(name)
        return out

    def min_totals(self) -> np.ndarray:
        """Least reachable total of every cost column on its own (offsets included)."""
        return self.sum_blocks(np.minimum.reduceat(self.costs, self.block_start[:-1], axis=1))

    def max_totals(self) -> np.ndarray:
        """Largest reachable total of every cost column on its own (offsets included)."""
        return self.sum_blocks(np.maximum.reduceat(self.costs, self.block_start[:-1], axis=1))

    # -- derived problems ----------------------------------------------------------------
    def restrict(self, keep: np.ndarray) -> tuple["SelectionProblem", np.ndarray] | None:
        """The problem on the rows where ``keep`` is true, and their local rows in this one.

        Returns None when a block would have no row left.
        """
        rows = np.flatnonzero(keep)
        counts = np.bincount(self.block_of_rows()[rows], minlength=self.n_blocks)
        if (counts == 0).any():
            return None
        start = np.concatenate([[0], np.cumsum(counts)])
        sub = replace(
            self,
            block_start=start,
            candidates=self.candidates[rows],
            score=self.score[rows],
            costs=self.costs[:, rows],
            source_rows=None if self.source_rows is None else self.source_rows[rows],
            cache={},
        )
        return sub, rows

    def with_limits(self, upper: dict[str, float] | None = None, lower: dict[str, float] | None = None,
                    score: np.ndarray | None = None) -> "SelectionProblem":
        """The same rows with other limits (and optionally another score); shares the cache."""
        sub = replace(
            self,
            upper=dict(self.upper if upper is None else upper),
            lower=dict(self.lower if lower is None else lower),
            score=self.score if score is None else score,
            cache=self.cache if score is None else {},
        )
        sub.check_limits()
        return sub


@dataclass
class Selection:
    """One chosen candidate per block and what it adds up to.

    ``gap`` is ``bound - objective`` in score units (0 when proven optimal; None when no bound
    is known); ``bound`` is a proven upper bound on the best objective.
    """

    choice: dict[str, str]
    rows: list[int]
    objective: float
    totals: dict[str, float]
    optimal: bool
    gap: float | None
    bound: float | None
    solver: str
    seconds: float
    index: tuple[int, ...] = field(default=(), repr=False)  # local rows in the solved problem

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the local index)."""
        return {
            "choice": dict(self.choice),
            "objective": self.objective,
            "totals": dict(self.totals),
            "solver": self.solver,
            "seconds": self.seconds,
            "optimal": self.optimal,
            "gap": self.gap,
            "bound": self.bound,
            "rows": list(self.rows),
        }


def make_selection(problem: SelectionProblem, index: np.ndarray, *, optimal: bool, bound: float | None,
                   solver: str, seconds: float) -> Selection:
    """Selection for local rows ``index`` of ``problem``, totals and objective by the canonical sum."""
    index = np.asarray(index, dtype=np.int64)
    objective = problem.objective(index)
    if optimal:
        bound = objective
    gap = None if bound is None else max(0.0, float(bound) - objective)
    rows = index if problem.source_rows is None else problem.source_rows[index]
    return Selection(
        choice={b: str(problem.candidates[r]) for b, r in zip(problem.blocks, index)},
        rows=[int(r) for r in rows],
        objective=objective,
        totals={c: float(t) for c, t in zip(problem.cost_names, problem.totals(index))},
        optimal=optimal,
        gap=gap,
        bound=None if bound is None else float(bound),
        solver=solver,
        seconds=seconds,
        index=tuple(int(i) for i in index),
    )

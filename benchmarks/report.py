"""The quality benchmark's figures from its rows: cells over seeds, wins/ties, headline, CSV, table, plot, docs/quality.md.

Rules (issue 14): a method *wins* a cell (teacher × budget) against another only when its
mean test top-1 over seeds beats the other's by more than the larger of the two spreads
(max − min over seeds); otherwise the cell is a tie. Every choice — the best baseline, the
headline speed-up, which budget is within 0.5 points of the teacher — is made on
validation top-1; test top-1 is only reported.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.schedule import scheduled_wall, work_seconds

CSV_COLUMNS = ["teacher", "method", "budget", "seed", "share", "val_top1", "top1", "search_s", "train_s", "final_share", "headline_share",
               "note", "protocol"]
HEADLINE_ROUNDS = 5  # benchmarks.compare times the headline's students in this many rounds
LONG = " (long fine-tune)"  # the suffix of the long fine-tune rows (``benchmarks.budget_cells.long_finetune``)


def split_protocols(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison's rows (teachers included) and the long fine-tune's rows (teachers included)."""
    long = frame["protocol"].eq("long") if "protocol" in frame else pd.Series(False, index=frame.index)
    teachers = frame["method"] == "teacher"
    return frame[~long], frame[long | teachers]

# What the report says of the transformer's alternatives when the run has it
TRANSFORMER_NOTE = (
    "The vision transformer (`vit`: timm's VisionTransformer in DeiT-Tiny's shape, small patches, its own AdamW recipe) "
    "is held to the same rules. lana gets the token ops (`{ops}`): fewer heads, a smaller, low-rank or removed MLP, "
    "attention replaced by pooling or a linear map or removed, the block skipped. Torch-Pruning removes whole heads and "
    "MLP hidden units at the searched ratio, ranked per layer in one shot as in its timm ViT example (the token width "
    "kept; `tp-taylor` ranks by Taylor importance, `tp-magnitude` by L2 norm). `width` is the same ViT with a narrower "
    "token width (same heads, MLP ratio kept), the `member:depth N` rows shallower ones, all trained from scratch as "
    "the CNN width networks are. Its own settings: {changes}."
)


def transformer_note(tree: dict) -> str:
    """:data:`TRANSFORMER_NOTE` with the ViT's own lana settings (its ``teacher_trees`` entry) filled in."""
    changes = "; ".join(f"`{section}`: " + ", ".join(f"{k}={v}" for k, v in values.items())
                        for section, values in tree.items() if section != "ops")
    return TRANSFORMER_NOTE.format(ops=", ".join(tree.get("ops", {}).get("include", [])), changes=changes or "none")


def docs_csv(frame: pd.DataFrame, path: Path) -> None:
    """One row per network with the issue's columns (+ the final re-measured share and a note)."""
    out = frame.reindex(columns=CSV_COLUMNS)
    out.to_csv(path, index=False, float_format="%.4f")


def cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds per teacher, budget and method; unreachable cells keep their note."""
    out = []
    students = frame[frame["method"] != "teacher"]
    for (teacher, budget, method), g in students.groupby(["teacher", "budget", "method"], sort=False):
        ok = g.dropna(subset=["top1"])
        if ok.empty:
            out.append({"teacher": teacher, "budget": budget, "method": method, "seeds": 0, "note": g["note"].dropna().iloc[0]})
            continue
        out.append({"teacher": teacher, "budget": budget, "method": method, "seeds": len(ok),
                    "share": ok["share"].mean(), "final_share": ok.get("final_share", ok["share"]).mean(),
                    # NaN unless every seed's network was re-timed for the headline (benchmarks.compare)
                    "headline_share": ok["headline_share"].mean(skipna=False) if "headline_share" in ok else float("nan"),
                    "headline_rounds": ok["headline_rounds"].max() if "headline_rounds" in ok else float("nan"),
                    "val_top1": ok["val_top1"].mean(), "top1": ok["top1"].mean(),
                    "spread": ok["top1"].max() - ok["top1"].min(), "top1_min": ok["top1"].min(), "top1_max": ok["top1"].max(),
                    "search_s": ok["search_s"].mean(), "train_s": ok["train_s"].mean(),
                    "setting": ok["setting"].iloc[0] if "setting" in ok else "", "note": ""})
    return pd.DataFrame(out)


def judge(a: pd.Series, b: pd.Series) -> str:
    """``win`` / ``loss`` / ``tie`` of cell ``a`` against cell ``b`` (means beyond the larger spread)."""
    margin = max(a["spread"], b["spread"])
    if a["top1"] - b["top1"] > margin:
        return "win"
    if b["top1"] - a["top1"] > margin:
        return "loss"
    return "tie"


def verdict(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """lana against every other method in every cell, and one line per teacher and budget plus the headline.

    The long fine-tune rows (``protocol`` ``"long"``) are judged only against each other
    (:func:`long_verdict`); the headline counts every lana row, saying which fine-tune it had.
    """
    short, _ = split_protocols(frame)
    judged, lines = _judge_cells(cells(short), "lana")
    table = cells(frame)
    for teacher, g in frame.groupby("teacher", sort=False):
        lines.append(headline(g, table[table["teacher"] == teacher]))
    return pd.DataFrame(judged), lines


def long_verdict(frame: pd.DataFrame) -> list[str]:
    """lana's long fine-tune rows against the other methods' long fine-tune rows, cell by cell."""
    _, long = split_protocols(frame)
    if not (long["method"] != "teacher").any():
        return []
    return _judge_cells(cells(long), "lana" + LONG)[1]


def _judge_cells(table: pd.DataFrame, ours_name: str) -> tuple[list[dict], list[str]]:
    """``ours_name`` against every other method per teacher and budget (the judged pairs), and one
    line per teacher and budget against the best other by validation."""
    judged, lines = [], []
    for (teacher, budget), g in table.groupby(["teacher", "budget"], sort=False):
        reached = g[g["seeds"] > 0]
        lana = reached[reached["method"] == ours_name]
        if lana.empty:
            lines.append(f"{teacher} at {budget:g}×: {ours_name} cannot reach this budget")
            continue
        ours = lana.iloc[0]
        for _, other in reached[reached["method"] != ours_name].iterrows():
            judged.append({"teacher": teacher, "budget": budget, "other": other["method"], "result": judge(ours, other),
                           "lana": ours["top1"], "them": other["top1"], "margin": max(ours["spread"], other["spread"])})
        others = reached[reached["method"] != ours_name]
        if others.empty:
            lines.append(f"{teacher} at {budget:g}×: {ours_name} {ours['top1']:.2f} % (no other method reached the band)")
            continue
        best = others.loc[others["val_top1"].idxmax()]  # the best other, chosen on validation
        lines.append(f"{teacher} at {budget:g}×: {ours_name} {ours['top1']:.2f} ± {ours['spread'] / 2:.2f} % "
                     f"{ {'win': 'wins against', 'loss': 'LOSES to', 'tie': 'ties with'}[judge(ours, best)] } "
                     f"the best other by validation, {best['method']} {best['top1']:.2f} ± {best['spread'] / 2:.2f} %")
    return judged, lines


def close_to_teacher(table: pd.DataFrame, teacher_val: float) -> pd.DataFrame:
    """lana's cells (either fine-tune) whose mean *validation* top-1 is within 0.5 points of the teacher's."""
    lana = table[table["method"].isin(["lana", "lana" + LONG]) & (table["seeds"] > 0)]
    return lana[lana["val_top1"] >= teacher_val - 0.5]


def headline(group: pd.DataFrame, table: pd.DataFrame) -> str:
    """The fastest lana budget whose mean *validation* top-1 is within 0.5 points of the teacher's
    (the comparison's fine-tune or the long one: the line says which), by its headline share
    (each network pairwise with the teacher, the median of rounds) where the run has one."""
    teacher = group[group["method"] == "teacher"].iloc[0]
    close = close_to_teacher(table, teacher["val_top1"])
    name = teacher["teacher"]
    if close.empty:
        return f"{name}: no lana budget within 0.5 points of the teacher on validation"
    paired = "headline_share" in close and close["headline_share"].notna().all()
    column = "headline_share" if paired else "final_share"
    best = close.loc[close[column].idxmin()]
    how = ", long fine-tune" if best["method"] != "lana" else ""
    timed = (f"; pairwise with the teacher, median of {int(best['headline_rounds'])} rounds; one round-robin of every "
             f"network: {1 / best['final_share']:.2f}×" if paired else "")
    return (f"{name}: fastest lana student within 0.5 validation points of the teacher: {1 / best[column]:.2f}× "
            f"(budget {best['budget']:g}×{how}; validation {best['val_top1']:.2f} vs {teacher['val_top1']:.2f} %, "
            f"test {best['top1']:.2f} vs {teacher['top1']:.2f} %{timed})")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """Every cell: measured share (search / final), top-1 over seeds, seconds."""
    out = ["| teacher | budget | method | seeds | share (search / final) | val top-1 | test top-1 (mean ± half-spread) "
           "| search s | training s | setting |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, c in cells(frame).iterrows():
        if c["seeds"] == 0:
            out.append(f"| {c['teacher']} | {c['budget']:g}× | {c['method']} | 0 | — | — | — | — | — | {c['note']} |")
            continue
        out.append(f"| {c['teacher']} | {c['budget']:g}× | {c['method']} | {c['seeds']} | {c['share']:.3f} / {c['final_share']:.3f} | "
                   f"{c['val_top1']:.2f} % | {c['top1']:.2f} ± {c['spread'] / 2:.2f} % | {c['search_s']:.0f} | {c['train_s']:.0f} | "
                   f"{c['setting']} |")
    return out


EQUAL = " (lana's compute)"  # the suffix of the equal-compute rows (``benchmarks.budget_cells.equal_compute``)


def losses_explained(frame: pd.DataFrame, judged: pd.DataFrame) -> list[str]:
    """One line per cell lana loses, from the run's own rows: against an equal-compute row, what
    the same method got at lana's fine-tune and how many epochs the row had; otherwise both
    networks' settings and lana's validation top-1 before the choice."""
    if judged.empty or not (judged["result"] == "loss").any():
        return []
    table = cells(split_protocols(frame)[0]).set_index(["teacher", "budget", "method"])
    out = ["", "Where lana loses, from this run's rows:", ""]
    for _, j in judged[judged["result"] == "loss"].iterrows():
        ours = table.loc[(j["teacher"], j["budget"], "lana")]
        them = table.loc[(j["teacher"], j["budget"], j["other"])]
        line = (f"- {j['teacher']} at {j['budget']:g}×, {j['other']} {them['top1']:.2f} % against lana {ours['top1']:.2f} % "
                f"(margin {j['margin']:.2f}): ")
        base = j["other"].removesuffix(EQUAL)
        if base != j["other"] and str(them["setting"]).startswith("its own rows"):
            line += f"{base} had lana's compute already ({them['setting']}), so that row is {base}'s own."
        elif base != j["other"] and (j["teacher"], j["budget"], base) in table.index:
            same = table.loc[(j["teacher"], j["budget"], base)]
            verdict_same = judge(ours, same)
            line += (f"that row is {base} fine-tuned for {them['setting']} instead of the shared fine-tune; with the "
                     f"shared fine-tune {base} got {same['top1']:.2f} % and lana "
                     f"{ {'win': 'wins', 'tie': 'ties', 'loss': 'loses'}[verdict_same] } against it. lana's own network "
                     "was not given the longer fine-tune.")
        else:
            line += f"lana's selection {ours['setting'] or '—'}; {j['other']}'s setting {them['setting'] or '—'}."
        out.append(line)
    return out


def tally(judged: pd.DataFrame) -> list[str]:
    """Wins / ties / losses of lana per other method, over every cell both reached."""
    if judged.empty:
        return ["No cell where lana and another method both reached the band."]
    out = ["| against | wins | ties | losses |", "| --- | --- | --- | --- |"]
    for other, g in judged.groupby("other", sort=False):
        counts = g["result"].value_counts()
        out.append(f"| {other} | {counts.get('win', 0)} | {counts.get('tie', 0)} | {counts.get('loss', 0)} |")
    return out


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Test top-1 against measured share, one panel per teacher, error bars over seeds (min–max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = cells(frame)
    table = table[table["seeds"] > 0]
    teachers = list(dict.fromkeys(frame["teacher"]))
    # one colour and marker per method in every panel (lana first: blue, a thick solid line)
    methods = list(dict.fromkeys(["lana", *table["method"]]))
    palette = plt.get_cmap("tab20").colors  # its dark shades first, then the light ones
    shades = [*palette[0::2], *palette[1::2]]
    colour = {m: shades[i % 20] for i, m in enumerate(methods)}
    marker = {m: "os^vDxP*h<>"[i % 11] for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(teachers), figsize=(6 * len(teachers), 4.5), squeeze=False)
    for ax, name in zip(axes[0], teachers):
        t = frame[(frame["teacher"] == name) & (frame["method"] == "teacher")].iloc[0]
        ax.axhline(t["top1"], color="k", lw=0.8, ls=":", label=f"teacher {t['top1']:.2f} %")
        ax.axhline(t["top1"] - 0.5, color="k", lw=0.5, ls="--", alpha=0.4)
        for method, g in table[table["teacher"] == name].groupby("method", sort=False):
            g = g.sort_values("final_share")
            err = [g["top1"] - g["top1_min"], g["top1_max"] - g["top1"]]
            ax.errorbar(g["final_share"], g["top1"], yerr=err, marker=marker[method], color=colour[method], capsize=3,
                        ls="-" if method == "lana" else "--", lw=2 if method == "lana" else 1, label=method)
        for budget in sorted(table.loc[table["teacher"] == name, "budget"].unique()):
            ax.axvspan(0.97 * budget, budget, color="k", alpha=0.08)
        ax.set_title(name)
        ax.set_xlabel("measured latency, share of the teacher's (final re-measurement)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- docs/quality.md ---------------------------------------------------------------------
def long_section(frame: pd.DataFrame) -> list[str]:
    """The long fine-tune's section of the doc (nothing when the run has no long fine-tune rows)."""
    lines = long_verdict(frame)
    if not lines:
        return []
    long = frame[frame["protocol"].eq("long") & frame["method"].ne("teacher")]
    if "finetune_steps" not in long:
        long = long.assign(finetune_steps=float("nan"))
    per_teacher = []  # each teacher's budgets and steps, from its own rows (a mode can set them per teacher)
    for teacher, rows in long.groupby("teacher", sort=False):
        steps = sorted({int(s) for s in rows["finetune_steps"].dropna()})
        per_teacher.append(f"{teacher} at {', '.join(f'{b:g}×' for b in sorted(rows['budget'].unique()))}, "
                           f"{' and '.join(f'{s:,}'.replace(',', ' ') for s in steps) or 'no'} steps")
    methods = sorted({m.removesuffix(LONG) for m in long["method"]})
    return [
        "## Long fine-tune",
        "",
        f"The networks that start from the teacher's weights ({', '.join(methods)}) are searched into the band as "
        "above, then fine-tuned by the same distillation for longer, on all the training images, instead of the "
        f"comparison's short fine-tune: what a user would do with the network they keep ({'; '.join(per_teacher)}). "
        "They are judged only against each other (same rule); the headline above counts them and says so. Their "
        "`training s` is the long fine-tune alone.",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]


def quality_markdown(frame: pd.DataFrame, meta: dict, preset: dict) -> str:
    """``docs/quality.md`` from the run's rows, its meta (command, machine, timing, commits) and its mode's ``preset``."""
    from benchmarks.search import BAND

    mode, timing = meta["mode"], meta["timing"]
    judged, lines = verdict(frame)
    band = preset.get("band", BAND)
    vit_tree = preset.get("teacher_trees", {}).get("vit", {})
    out = [
        "# Quality against the alternatives",
        "",
        f"Made by `{meta['command']}` ({mode} mode) on {meta['machine']}, {meta['date']}: "
        f"{sum(work_seconds(t) for t in timing.values()) / 60:.0f} min of benchmark work in all (each teacher's under "
        f"Teachers; on 2 workers, `--jobs 2`, these units take {scheduled_wall(timing, 2):.0f} min in the scheduler's "
        f"order at their measured minutes), this invocation {meta['seconds'] / 60:.1f} min wall (a resumed run reuses "
        "what its earlier attempts finished). Written by `benchmarks/quality.py`; do not edit by hand "
        "(`--report-only` rewrites it from the run folder). Rows: [quality.csv](quality.csv).",
        "",
        f"Protocol: Fashion-MNIST at {preset['image_size']}×{preset['image_size']}; every method's knob (lana's and "
        "random's table budget, Torch-Pruning's ratio, the width multiplier) is searched on the share of the teacher's "
        "latency measured interleaved with it (`benchmarks/search.py`: interpolation inside a bracket, a network just "
        "outside the band measured once more and judged by the mean, a bracket closed on two networks either side of the "
        "band probed around), into the same band (budget × "
        f"[{band[0]:.2f}, {band[1]:.2f}]) with at "
        f"most {preset['max_measurements']} measurements; a method that does not get inside says why. After the run every "
        "network is timed again in one round-robin with the teacher (the `final` share), and the headline's students "
        "(lana's cells within 0.5 validation points of the teacher) once more as the searches time them, pairwise with "
        f"the teacher in {HEADLINE_ROUNDS} rounds: the headline reads their median. At a table budget T "
        "lana's network is the one its pipeline would keep: of the solver's `solve.top_k` best selections predicted within "
        "[0.97 T, T] (random draws inside the same window), the one whose outputs are closest to the teacher's on the "
        "choice images; where that selection and its neighbours' jump over the band, the search measures the other "
        "top-k selections of the bracket's two table budgets too (rows marked `top-k #N`). Every network gets the "
        f"same {preset['tree']['finetune']['epochs']}-epoch fine-tune by distillation, once per seed ({preset['seeds']}); "
        "width and family members are first trained from scratch by distillation for the `teacher_training` epochs. "
        "Teachers: converged once on the whole train split with the recipe below and cached by its hash "
        "(`benchmarks/teachers.py`). Seeds vary every random choice of every method: lana's distillation (its own run "
        "per seed, so its table and selection), the random draws, Torch-Pruning's Taylor batches, from-scratch "
        "initialisation and the fine-tune's data order. `training s` includes lana's (and random's) whole distillation "
        "+ scoring + profiling. Swap-one scores use the first "
        f"{preset['tree']['score']['val_images']} validation images; every choice (random-best, best other method, "
        "headline) is made on validation top-1 of the other "
        f"{preset['tree']['data']['val_size'] - preset['tree']['score']['val_images']}; test top-1 (10 000 images) is "
        "evaluated once per network. A win needs the mean to beat the other's by more than the larger of the two spreads "
        "(max − min over seeds); otherwise it is a tie. At every budget the best other method by validation also gets "
        "lana's total compute as a longer fine-tune (\"(lana's compute)\" rows; where its own training and search "
        "took as long already, as random-best's include lana's distillation, its rows are repeated under that name)."
        + (" " + transformer_note(vit_tree) if vit_tree and "key" in frame and (frame["key"] == "vit").any() else ""),
        "",
        "Settings: " + "; ".join(f"`{section}`: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "include")
                                 for section, values in preset["tree"].items() if isinstance(values, dict) and section != "ops") + ".",
        "",
        "![accuracy against measured share](quality.png)",
        "",
        "## Verdict (measured)",
        "",
        *[f"- {line}" for line in lines],
        "",
        *long_section(frame),
        "## lana against each method (cells both reached)",
        "",
        *tally(judged),
        *losses_explained(frame, judged),
        "",
        "## Teachers",
        "",
        f"Recipe (`benchmarks/teachers.py`): {json.dumps(meta['recipe']) if meta.get('recipe') else 'not recorded'}."
        + (f" Per teacher: {json.dumps(meta['teacher_recipes'])}." if meta.get("teacher_recipes") else ""),
        "",
        "| teacher | recipe hash | choice val top-1 | test top-1 | teacher training (cached) / distill+score+latency per seed "
        "/ teacher logits (s) | benchmark work (min) | commits |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, row in frame[frame["method"] == "teacher"].iterrows():
        t = timing.get(row["key"], {})
        out.append(f"| {row['teacher']} | {row.get('recipe_hash', '—')} | {row['val_top1']:.2f} % | {row['top1']:.2f} % | "
                   f"{t.get('train_teacher_s', 0):.0f} / {t.get('distill_score_latency_s', 0):.0f} / "
                   f"{t.get('teacher_logits_s', 0):.0f} | {work_seconds(t) / 60:.0f} | "
                   f"{', '.join(meta.get('commits', {}).get(row['key'], [])) or '—'} |")
    out += ["", "`benchmark work`: one teacher's distillation, scoring and profiling (every seed), its budgets, long "
            "fine-tunes and final re-timing, each counted once however many attempts the run took (work lost to a stop "
            "is not counted). `commits`: the checkouts whose attempts made the rows."]
    out += ["", "## Every method at every budget", "", *markdown_table(frame)]
    misses = frame[(frame["method"] != "teacher") & frame["top1"].isna()] if "note" in frame else frame.iloc[:0]
    out += ["", "## What was tried", "",
            "Searches that did not end inside the band (no network, no figures):", ""]
    out += [f"- {r['teacher']} {r['method']} at {r['budget']:g}×: {r['note']}" for _, r in misses.iterrows()] or ["- none"]
    return "\n".join(out) + "\n"

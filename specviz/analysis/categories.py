"""Spec-Bench's table: each method's speedup, τ and α per task.

Spec-Bench's 480 questions carry 13 `category` values: five tasks of 80 questions (translation, summarization,
qa, math_reasoning, rag) and MT-bench's eight sub-categories of 10 (writing, roleplay, reasoning, math, coding,
extraction, stem, humanities), which Spec-Bench reports as one task, "multi-turn conversation". So does this
table. Medians over the task's rows (prompts x repeats), as the bench's summary takes them.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
MT_BENCH_TASK = "mt_bench"


def task_of(category: str) -> str:
    """The task a prompt's category belongs to (MT-bench's sub-categories are one task)."""
    category = str(category or "")
    return MT_BENCH_TASK if category in MT_BENCH else (category or "uncategorized")


def first_per_task(
    prompts: list[dict], n: int, fits: Callable[[dict], bool], group: Callable[[str], str] = task_of, skip: int = 0
) -> tuple[list[dict], int]:
    """The first n prompts of each task (or of each `group` of their category: `str` for the categories
    themselves), in file order, that `fits` (the context holds prompt + new tokens), and how many were passed over
    for not fitting. `skip`: the first `skip` that fit are passed over too, so a tuning set (questions 11-20) stays
    apart from a goal set (questions 1-10)."""
    if n < 1:
        raise ValueError(f"--per-category must be at least 1; got {n}")
    if skip < 0:
        raise ValueError(f"--skip-per-category must be 0 or more; got {skip}")
    taken: dict[str, int] = {}
    chosen, too_long = [], 0
    for prompt in prompts:
        task = group(prompt.get("category", ""))
        if taken.get(task, 0) >= skip + n:
            continue
        if not fits(prompt):
            too_long += 1
            continue
        taken[task] = taken.get(task, 0) + 1
        if taken[task] > skip:
            chosen.append(prompt)
    return chosen, too_long


def task_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """One row per (task, method): prompts, median speedup, τ, α and the share of outputs equal to autoregressive;
    None when the rows hold fewer than two tasks (a table by task would say nothing)."""
    if df.empty or "category" not in df:
        return None
    rows = df[df["category"].astype(str) != "batch"].assign(task=lambda d: d["category"].map(task_of))
    if rows["task"].nunique() < 2:
        return None
    agg = {
        "prompts": ("prompt_id", "nunique"),
        "speedup": ("speedup", "median"),
        "tau": ("tau", "median"),
        "alpha": ("alpha", "median"),
    }
    if "equal_to_autoregressive" in rows:
        agg["share_equal"] = ("equal_to_autoregressive", "mean")
    return rows.groupby(["task", "method"], sort=False).agg(**agg)


def task_markdown(table: pd.DataFrame) -> str:
    """Tasks down, methods across, each cell "speedup (τ, α)": the table people look for."""
    frame = table.reset_index()
    methods = list(dict.fromkeys(frame["method"]))
    lines = ["| task | prompts | " + " | ".join(f"`{m}`" for m in methods) + " |", "|---|---|" + "---|" * len(methods)]

    def fmt(v: float, spec: str) -> str:
        return "–" if v != v else format(v, spec)

    for task, part in frame.groupby("task", sort=False):
        by = {r.method: r for r in part.itertuples(index=False)}
        cells = [
            f"{fmt(by[m].speedup, '.2f')}x (τ {fmt(by[m].tau, '.2f')}, α {fmt(by[m].alpha, '.2f')})" if m in by else ""
            for m in methods
        ]
        lines.append(f"| {task} | {int(part['prompts'].max())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

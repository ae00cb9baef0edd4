"""The table by task: MT-bench's sub-categories are one task (as Spec-Bench reports them), the first N prompts of
each task that fit are kept, and each cell is a median."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from specviz.analysis.categories import MT_BENCH_TASK, first_per_task, task_markdown, task_of, task_table
from specviz.bench.prompts import load_prompts

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "spec_bench_fixture.jsonl"
SPEC_BENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "spec_bench_question.jsonl"


def test_mt_bench_sub_categories_are_one_task():
    assert task_of("writing") == task_of("coding") == MT_BENCH_TASK
    assert task_of("rag") == "rag" and task_of("") == "uncategorized"


def test_first_per_task_keeps_file_order_and_counts_what_does_not_fit():
    prompts = load_prompts(FIXTURE)
    chosen, too_long = first_per_task(prompts, 1, lambda p: "Cats" not in p["prompt"] and "meeting" not in p["prompt"])
    assert [task_of(p["category"]) for p in chosen] == [MT_BENCH_TASK, "rag", "translation"]
    assert too_long == 2  # both summarization prompts were passed over, so the task is missing
    with pytest.raises(ValueError, match="at least 1"):
        first_per_task(prompts, 0, lambda p: True)


def test_skip_takes_the_next_prompts_of_each_task():
    """A tuning set apart from the goal set: questions 2.. of each task, none of the first."""
    prompts = load_prompts(FIXTURE)
    first, _ = first_per_task(prompts, 1, lambda p: True)
    after, _ = first_per_task(prompts, 1, lambda p: True, skip=1)
    assert [p["id"] for p in after] == ["1002", "1005", "1007"]  # the second of mt_bench, summarization, rag
    assert not {p["id"] for p in first} & {p["id"] for p in after}
    both, _ = first_per_task(prompts, 2, lambda p: True)
    assert [p["id"] for p in both if p not in first] == [p["id"] for p in after]
    with pytest.raises(ValueError, match="0 or more"):
        first_per_task(prompts, 1, lambda p: True, skip=-1)


@pytest.mark.skipif(not SPEC_BENCH.is_file(), reason="Spec-Bench's question file is not beside this checkout")
def test_the_real_question_file_has_six_tasks():
    chosen, _ = first_per_task(load_prompts(SPEC_BENCH), 10, lambda p: True)
    counts = pd.Series([task_of(p["category"]) for p in chosen]).value_counts().to_dict()
    assert counts == {
        MT_BENCH_TASK: 10,
        "translation": 10,
        "summarization": 10,
        "qa": 10,
        "math_reasoning": 10,
        "rag": 10,
    }


def test_the_table_takes_medians_per_task_and_method():
    rows = pd.DataFrame(
        [
            {
                "method": m,
                "prompt_id": str(i),
                "category": c,
                "speedup": s,
                "tau": 2.0,
                "alpha": 0.5,
                "equal_to_autoregressive": True,
            }
            for i, (c, m, s) in enumerate(
                [
                    ("writing", "a", 1.0),
                    ("coding", "a", 3.0),
                    ("rag", "a", 2.0),
                    ("rag", "a", 4.0),
                    ("writing", "b", 1.5),
                    ("rag", "b", 1.1),
                ]
            )
        ]
    )
    table = task_table(rows)
    assert table.loc[(MT_BENCH_TASK, "a"), "speedup"] == 2.0 and table.loc[("rag", "a"), "speedup"] == 3.0
    assert table.loc[(MT_BENCH_TASK, "a"), "prompts"] == 2
    text = task_markdown(table)
    assert "| mt_bench | 2 | 2.00x (τ 2.00, α 0.50) | 1.50x" in text
    assert task_table(rows[rows.category == "rag"]) is None  # one task: no table

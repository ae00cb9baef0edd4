"""The bench CLI contract: prompt formats, columns, baseline always run, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_tiny_pair

from specviz.bench import cli as bench
from specviz.bench import prompts as prompt_files

SPEC_BENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "spec_bench_question.jsonl"


@pytest.fixture(scope="module")
def saved_pair(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    make_tiny_pair("llama", tiny_tokenizer, save_dir=root)
    (root / "target" / "vocab_ranking.json").write_text(json.dumps({"ranked_ids": list(range(len(tiny_tokenizer)))}))
    return root


def write_prompts(path: Path) -> Path:
    path.write_text(
        "\n".join(
            json.dumps(p)
            for p in [
                {"id": "a", "category": "code", "prompt": "def f(x):"},
                {"question_id": 7, "category": "writing", "turns": ["Write a poem.", "Again."]},
            ]
        )
        + "\n"
    )
    return path


def test_bench_writes_the_contract_columns(saved_pair, tmp_path, capsys):
    out = tmp_path / "r.csv"
    code = bench.main(
        [
            "--methods",
            "draft_model,draft_model:gamma=2:vocab_trim=50",
            "--prompts",
            str(write_prompts(tmp_path / "p.jsonl")),
            "--max-new-tokens",
            "8",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
            "--quiet",
            "--overhead",
            "--markdown",
            str(tmp_path / "r.md"),
            "--json",
            str(tmp_path / "bench-summary.json"),
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "bench-summary.json").read_text())
    assert (
        record["command"].startswith("python -m specviz.bench ") and record["prompts"] == 2 and record["repeats"] == 2
    )
    assert record["rows"]["autoregressive"]["speedup"] == 1.0 and record["rows"]["draft_model"]["share_equal"] == 1.0
    from specviz.views.headlines import cell, load_summary

    assert cell("draft_model", load_summary(tmp_path)).startswith("`draft_model` ")  # what the Learn tab shows
    df = pd.read_csv(out)
    md = (tmp_path / "r.md").read_text().splitlines()
    assert md[0].startswith("| method | speedup | tau |") and md[1].startswith("|---|")
    assert [line.split(" | ")[0] for line in md[2:5]] == [
        "| autoregressive",
        "| draft_model",
        "| draft_model:gamma=2:vocab_trim=50",
    ]
    for col in (
        "method",
        "prompt_id",
        "category",
        "new_tokens",
        "seconds",
        "tokens_per_s",
        "speedup",
        "alpha",
        "tau",
        "equal_to_autoregressive",
        "param_gamma",
        "recording_overhead",
    ):
        assert col in df.columns, col
    assert set(df.method) == {"autoregressive", "draft_model", "draft_model:gamma=2:vocab_trim=50"}  # baseline added
    assert set(df.prompt_id.astype(str)) == {"a", "7"}
    assert df.equal_to_autoregressive.all()
    assert (df[df.method == "autoregressive"].speedup == 1.0).all()
    assert (df[df.method == "autoregressive"].speedup_after_prefill == 1.0).all()
    assert df.prefill_share.between(0, 1, inclusive="neither").all() and (df.speedup_after_prefill > 0).all()
    from specviz.bench.matrix import target_prefill_s
    from specviz.engine.trace import Event, Trace

    events = [
        Event("prefill", source="target", t0=0.0, t1=0.1),  # healing's forward, then generate() as one span
        Event("prefill", source="transformers.generate", t0=0.1, t1=1.0, info={"opaque": True}),
    ]
    opaque = Trace(method="hf_prompt_lookup", params={}, rows=[], events=events)
    assert target_prefill_s(opaque) is None  # transformers' rows: their prefill is not shown apart
    printed = capsys.readouterr().out
    assert "share_equal" in printed and "reproduce: python -m specviz.bench" in printed


def test_spec_bench_questions_load():
    if not SPEC_BENCH.exists():
        pytest.skip("Spec-Bench question file not present beside the checkout")
    prompts = prompt_files.load_prompts(SPEC_BENCH)
    assert len(prompts) == 480
    assert {p["category"] for p in prompts} >= {
        "writing",
        "translation",
        "summarization",
        "qa",
        "math_reasoning",
        "rag",
    }


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "nope"], "unknown method"),
        (["--methods", "draft_model:gamma=99"], "gamma must be <="),
        (["--methods", "draft_model:gamma"], "must be name=value"),
        (["--repeats", "0"], "must be positive"),
        (["--out", "x.txt"], "--out must end"),
        (["--prompts", "/nonexistent.jsonl"], "prompt file not found"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(args, message, capsys):
    assert bench.main(args + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_bench_runs_batch_methods(saved_pair, tmp_path, capsys):
    out = tmp_path / "b.csv"
    code = bench.main(
        [
            "--methods",
            "batch_autoregressive,eqspec:gamma=2,exspec",
            "--batch-size",
            "2",
            "--prompts",
            str(write_prompts(tmp_path / "p.jsonl")),
            "--max-new-tokens",
            "6",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
            "--quiet",
        ]
    )
    assert code == 0
    df = pd.read_csv(out)
    batch = df[df.category == "batch"]
    assert set(batch.method) == {"batch_autoregressive", "eqspec:gamma=2", "exspec"}
    assert (batch.batch_size == 2).all() and batch.equal_to_autoregressive.all()
    assert ((batch.realign_share >= 0) & (batch.realign_share < 1)).all()
    assert "realign_share" in capsys.readouterr().out


def test_pool_factor_streams_pool_x_batch_requests_of_mixed_lengths(tmp_path):
    """EXSPEC's regime: a request stream of pool_factor x batch_size distinct prompts (EXSPEC's pool holds all)."""
    from specviz.bench.cli import main

    root = Path(__file__).resolve().parents[2]
    stream = [json.loads(line) for line in (root / "assets" / "prompts" / "stream.jsonl").read_text().splitlines()]
    assert len(stream) >= 64 and len({s["prompt"] for s in stream}) == len(stream)
    assert len({len(s["prompt"]) // 100 for s in stream}) >= 4, "lengths must be genuinely mixed"
    out = tmp_path / "pool.csv"
    assert (
        main(
            [
                "--prompts",
                str(root / "assets" / "prompts" / "stream.jsonl"),
                "--pool-factor",
                "2",
                "--methods",
                "eqspec:batch_size=2,exspec:batch_size=2",
                "--max-new-tokens",
                "4",
                "--repeats",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    df = pd.read_csv(out)
    assert list(df["rows"]) == [4, 4] and set(df["pool_factor"]) == {2}
    assert df["share_equal_rows"].eq(1.0).all() and df["real_divergences"].eq(0).all()
    assert (
        main(
            [
                "--prompts",
                str(root / "assets" / "prompts" / "stream.jsonl"),
                "--pool-factor",
                "9",
                "--methods",
                "exspec",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_per_category_writes_the_table_by_task(saved_pair, tmp_path, capsys):
    """A Spec-Bench-format file, the first prompt of each task: rows for prompt_lookup and its transformers peer
    beside autoregressive, equal outputs, and the table by task in the markdown, JSON and HTML outputs."""
    fixture = Path(__file__).resolve().parents[1] / "data" / "spec_bench_fixture.jsonl"
    out = tmp_path / "r.csv"
    code = bench.main(
        [
            "--methods",
            "prompt_lookup,hf_prompt_lookup",
            "--prompts",
            str(fixture),
            "--per-category",
            "1",
            "--max-new-tokens",
            "8",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
            "--markdown",
            str(tmp_path / "r.md"),
            "--json",
            str(tmp_path / "s.json"),
            "--html",
            str(tmp_path / "r.html"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "--per-category 1: 4 prompts in 4 tasks; 0 passed over" in printed
    rows = pd.read_csv(out)
    assert set(rows.method) == {"autoregressive", "prompt_lookup", "hf_prompt_lookup"}
    assert rows.equal_to_autoregressive.all()
    assert sorted(rows.category.unique()) == ["rag", "summarization", "translation", "writing"]
    table = (tmp_path / "r.md").read_text()
    assert "| task | prompts | `autoregressive` | `prompt_lookup` | `hf_prompt_lookup` |" in table
    assert "| mt_bench | 1 |" in table
    record = json.loads((tmp_path / "s.json").read_text())
    assert {r["task"] for r in record["by_task"]} == {"mt_bench", "summarization", "rag", "translation"}
    assert "By task (Spec-Bench" in (tmp_path / "r.html").read_text()


def test_per_category_passes_over_prompts_longer_than_the_context(saved_pair, tmp_path, capsys):
    long = tmp_path / "long.jsonl"
    long.write_text(
        json.dumps({"question_id": 1, "category": "rag", "turns": ["word " * 600]})
        + "\n"
        + json.dumps({"question_id": 2, "category": "qa", "turns": ["def f(x):"]})
        + "\n"
    )
    code = bench.main(
        [
            "--methods",
            "prompt_lookup",
            "--prompts",
            str(long),
            "--per-category",
            "1",
            "--max-new-tokens",
            "8",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "r.csv"),
            "--quiet",
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
        ]
    )
    assert code == 0
    assert (
        "1 prompts in 1 tasks; 1 passed over as longer than the context (512 tokens) minus 8 new tokens"
        in capsys.readouterr().out
    )


def test_tasks_keeps_only_the_named_tasks(saved_pair, tmp_path, capsys):
    fixture = Path(__file__).resolve().parents[1] / "data" / "spec_bench_fixture.jsonl"
    out = tmp_path / "r.csv"
    code = bench.main(
        [
            "--methods",
            "prompt_lookup",
            "--prompts",
            str(fixture),
            "--per-category",
            "2",
            "--tasks",
            "rag,mt_bench",
            "--max-new-tokens",
            "4",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
        ]
    )
    assert code == 0
    assert sorted(pd.read_csv(out).category.unique()) == ["coding", "rag", "writing"]
    assert bench.main(["--tasks", "rag", "--out", str(out)]) == 2
    assert "--tasks and --skip-per-category go with --per-category" in capsys.readouterr().err
    assert bench.main(["--skip-per-category", "1", "--out", str(out)]) == 2
    assert "go with --per-category" in capsys.readouterr().err

"""`--acceptance-out`: the bench's rows become the records a deployment gives `specviz.observe`, under the same
definitions, in vLLM-style per-request JSONL and Prometheus text."""

from __future__ import annotations

import pandas as pd
import pytest
from test_bench import saved_pair, write_prompts  # noqa: F401 (the fixture)

from specviz.bench import cli as bench
from specviz.observe.reader import ReadStats, iter_path


def test_acceptance_out_reads_back_as_the_rows_counted(saved_pair, tmp_path, capsys):  # noqa: F811
    out, records = tmp_path / "r.csv", tmp_path / "acc.jsonl"
    code = bench.main(
        ["--methods", "draft_model:gamma=3", "--prompts", str(write_prompts(tmp_path / "p.jsonl"))]
        + ["--max-new-tokens", "12", "--repeats", "1", "--out", str(out), "--quiet"]
        + ["--target", str(saved_pair / "target"), "--draft", str(saved_pair / "draft")]
        + ["--acceptance-out", str(records)]
    )
    assert code == 0 and "acceptance records:" in capsys.readouterr().out
    rows = pd.read_csv(out)
    drafting = rows[rows["method"] == "draft_model:gamma=3"].reset_index(drop=True)
    stats = ReadStats(name="jsonl")
    read = list(iter_path(records, stats))
    assert stats.rejected == 0 and len(read) == len(drafting) == 2
    for record, (_, row) in zip(read, drafting.iterrows()):
        assert record.engine == "vllm"  # written in vLLM's per-request shape, read by the vLLM reader
        assert (record.steps, record.drafted, record.accepted) == (
            row["acc_steps"],
            row["acc_drafted"],
            row["acc_accepted"],
        )
        assert record.acceptance_rate == pytest.approx(row["alpha"])
        assert record.per_position is not None and len(record.per_position) <= 3
    prom = list(iter_path(records.with_suffix(".prom")))
    assert sum(r.accepted for r in prom) == drafting["acc_accepted"].sum()
    assert sum(r.drafted for r in prom) == drafting["acc_drafted"].sum()

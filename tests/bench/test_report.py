"""`bench --html` writes one self-contained report with the expected figures, tables and command; a figure a
method does not define (a token tree's Leviathan figures) is an empty cell or a dash, never NaN or a chain
formula's number."""

from __future__ import annotations

import json
import re

import pandas as pd
from conftest import make_tiny_pair

from specviz.bench import cli as bench


def test_bench_html_report(tiny_tokenizer, tmp_path, capsys):
    make_tiny_pair("llama", tiny_tokenizer, save_dir=tmp_path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(p)
            for p in [
                {"id": "a", "category": "code", "prompt": "def f(x):"},
                {"question_id": 2, "category": "writing", "turns": ["Write <b>bold</b> text."]},
            ]
        )
        + "\n"
    )
    report = tmp_path / "report.html"
    code = bench.main(
        [
            "--methods",
            "draft_model,draft_model:gamma=2,tree:nodes=6:depth=3",
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "6",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "r.csv"),
            "--html",
            str(report),
            "--target",
            str(tmp_path / "target"),
            "--draft",
            str(tmp_path / "draft"),
            "--quiet",
        ]
    )
    assert code == 0
    page = report.read_text()
    assert page.count("plotly.js v") <= 2 and "Plotly.newPlot" in page  # the bundle is inlined, figures drawn
    assert page.count('<script type="text/javascript">/**') <= 1  # plotly.js embedded once
    assert not re.search(r"<(script|link)[^>]*(src|href)=[\"']?https?:", page)  # works offline: nothing fetched
    for title in (
        "Speedup over autoregressive",
        "Mean tokens per verification round",
        "Throughput (measured)",
        "Output equals autoregressive",
        "Median speedup by task",
    ):
        assert title in page, title
    assert "python -m specviz.bench --methods draft_model,draft_model:gamma=2" in page
    assert "draft_model:gamma=2" in page and "<table" in page
    assert "<b>bold</b>" not in page  # prompt text never reaches the page unescaped
    printed = capsys.readouterr().out
    assert str(report) in printed
    summary = page[page.index("<h2>Summary") : page.index("<h2>Figures")]
    assert "NaN" not in summary and "—" in summary  # autoregressive's c, the tree's efficiency
    assert "NaN" not in printed.split("reproduce:")[0]
    rows = pd.read_csv(tmp_path / "r.csv")
    tree = rows[rows.method == "tree:nodes=6:depth=3"]
    assert len(tree) == 2 and tree.equal_to_autoregressive.all()
    for chain_only in ("alpha_iid", "theoretical_speedup", "efficiency"):
        assert tree[chain_only].isna().all() and rows[rows.method == "draft_model"][chain_only].notna().all()
    assert tree.modeled_speedup.notna().all() and (tree.forwards_per_round <= 3).all()  # levels, at most depth
    assert (tree.forwards_per_round < tree.mean_drafts_per_round).any()  # nodes are not forwards

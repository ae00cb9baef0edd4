"""`bench --html` writes one self-contained report with the expected figures, tables and command."""

from __future__ import annotations

import json
import re

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
            "draft_model,draft_model:gamma=2",
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
    assert str(report) in capsys.readouterr().out

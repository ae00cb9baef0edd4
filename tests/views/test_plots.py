"""Figures read traces only: lanes and tokens where they belong, escaped hover text, labels measured vs modeled."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import damp_layers_after, near_copy, peaky_llama

from specviz.api import run, run_batch
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.trace import Trace
from specviz.models.pair import ModelPair
from specviz.views import plots


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    target = peaky_llama(vocab, layers=4, seed=3, hidden=32, init=0.2)
    damp_layers_after(target, 2, 0.1)
    adapter = KangarooAdapter.for_target(target.config, 2).eval()
    return ModelPair(
        target=target,
        tokenizer=tiny_tokenizer,
        draft=near_copy(target, 0.1, seed=5),
        target_name="t",
        draft_name="d",
        device=torch.device("cpu"),
        dtype=torch.float32,
        extras={"kangaroo_adapter": adapter},
    )


def test_token_timeline_places_every_token(pair):
    trace = run("draft_model", pair, "def f(x):", max_new_tokens=30, gamma=4)
    fig = plots.token_timeline(trace)
    markers = sum(len(t.x) for t in fig.data if t.type == "scatter" and t.y and t.y[0] == "tokens")
    assert markers == len(trace.output_ids)
    names = {t.name for t in fig.data}
    assert {"draft: draft", "verify: target", "accepted draft"} <= names
    assert "MEASURED" in fig.layout.title.text


def test_hover_text_is_escaped():
    trace = Trace(
        method="autoregressive",
        params={},
        rows=[],
        events=[],
        target_name="t",
        draft_name=None,
        device="cpu",
        dtype="float32",
        wall_time=0.1,
        started_at=0.0,
    )
    from specviz.engine.trace import Event, RowResult

    trace.rows = [RowResult(prompt="p", prompt_ids=[1], output_ids=[5], text="<script>", finish_reason="length")]
    trace.events = [
        Event(
            "emit",
            step=0,
            position=0,
            token_id=5,
            text="<script>alert(1)</script>",
            p=0.5,
            source="target",
            t0=0.0,
            t1=0.001,
        )
    ]
    hover = " ".join(" ".join(t.hovertext) for t in plots.token_timeline(trace).data if t.hovertext is not None)
    assert "<script>" not in hover and "&lt;script&gt;" in hover


def test_histograms_and_tables(pair):
    trace = run("draft_model", pair, "def f(x):", max_new_tokens=30, gamma=4)
    base = run("autoregressive", pair, "def f(x):", max_new_tokens=30)
    hist = plots.acceptance_histogram(trace)
    assert sum(hist.data[0].y) == len({e.step for e in trace.events if e.kind == "verify"})
    pos = plots.position_acceptance(trace)
    assert list(pos.data[0].x) == [1, 2, 3, 4]
    table = plots.stats_table(trace, base)
    assert "speedup vs autoregressive (measured)" in set(table.metric)
    assert table.set_index("metric").loc["output equals autoregressive", "value"] == "yes"
    assert "no verification rounds" in plots.acceptance_histogram(base).layout.annotations[0].text


def test_kangaroo_exits_and_batch_lanes(pair):
    trace = run("kangaroo", pair, "def f(x):", max_new_tokens=30, eta=0.9, exit_layer=2)
    fig = plots.token_timeline(trace)
    assert any(t.name == "early exit" for t in fig.data)
    batch = run_batch("eqspec", pair, ["def f(x):", "import os", "x"], max_new_tokens=12, batch_size=3, gamma=3)
    bfig = plots.batch_timeline(batch)
    assert {"row 0", "row 1", "row 2"} <= {y for t in bfig.data for y in (t.y or [])}
    assert any(t.name == "realign" for t in bfig.data)


def test_mirror_figure_labels_modeled_and_refuses_others(pair):
    trace = run("mirror", pair, "def f(x):", max_new_tokens=24, exit_layer=2, gamma=3)
    fig = plots.mirror_timelines(trace)
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("MODELED") for t in titles) and any(t.startswith("MEASURED") for t in titles)
    with pytest.raises(ValueError, match="Mirror-SD trace"):
        plots.mirror_timelines(run("autoregressive", pair, "x", max_new_tokens=3))


def test_compare_and_throughput_figures():
    frame = pd.DataFrame(
        {
            "method": ["autoregressive", "draft_model"] * 2,
            "prompt_id": [1, 1, 2, 2],
            "speedup": [1.0, 1.6, 1.0, 1.4],
            "tau": [1, 3, 1, 2.5],
            "tokens_per_s": [200, 320, 210, 290],
            "equal_to_autoregressive": [True, True, True, False],
        }
    )
    figs = plots.compare_figures(frame)
    assert set(figs) == {"speedup", "tau", "tokens_per_s", "equal"}
    assert list(figs["equal"].data[0].y) == [1.0, 0.5]
    assert "no results" in plots.compare_figures(pd.DataFrame())["speedup"].layout.annotations[0].text
    batch = pd.DataFrame(
        {
            "method": ["eqspec:batch_size=1", "eqspec:batch_size=4"],
            "batch_size": [1, 4],
            "tokens_per_s": [100.0, 250.0],
            "realign_share": [0.0, 0.2],
        }
    )
    tfig = plots.throughput_figure(batch)
    assert list(tfig.data[0].x) == [1, 4] and tfig.data[0].name == "eqspec"


def test_dashes_fill_what_a_method_does_not_define():
    table = pd.DataFrame({"method": ["autoregressive", "tree"], "efficiency": [None, float("nan")], "tau": [1.0, 2.5]})
    shown = plots.dashes(table)
    assert list(shown.efficiency) == [plots.NOT_SHOWN] * 2 and list(shown.tau) == [1.0, 2.5]

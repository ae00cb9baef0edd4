"""Plotly figures of acceptance records (a deployment's and a traced run's alike): the per-position curve, the
acceptance-length histogram, the mean acceptance length over a series, and the which-k model (MODELED).

Values a record only implies (`AcceptanceRecord.derived`) are drawn dashed and labelled "derived".
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from specviz.analysis.observed import histogram_of
from specviz.analysis.which_k import Plan
from specviz.engine.acceptance import AcceptanceRecord

TEMPLATE = "plotly_white"
COLORS = ("#3b6fd8", "#e0662f", "#2e9d5b", "#8e5bd0", "#c8374a", "#8a8f98")


def record_label(record: AcceptanceRecord) -> str:
    """A short name for a record: its engine, then the labels that tell records of one engine apart."""
    parts = [record.engine] + [f"{key}={value}" for key, value in sorted(record.labels.items()) if value]
    return html.escape(" ".join(parts)[:80])


def empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, template=TEMPLATE, height=260, xaxis_visible=False, yaxis_visible=False)
    return fig


def per_position_figure(records: list[AcceptanceRecord]) -> go.Figure:
    """Per-position rate i = steps whose i-th draft was accepted / steps, one line per record."""
    curves = [r for r in records if r.per_position]
    if not curves:
        return empty("per-position acceptance", "no record gives or implies per-position rates")
    fig = go.Figure()
    for index, record in enumerate(curves):
        derived = "per_position" in record.derived
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(record.per_position) + 1)),
                y=record.per_position,
                mode="lines+markers",
                name=record_label(record) + (" (derived)" if derived else ""),
                line=dict(color=COLORS[index % len(COLORS)], dash="dash" if derived else "solid"),
                hovertemplate="position %{x}: %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        title="per-position acceptance: steps whose i-th draft was accepted / steps",
        xaxis_title="draft position i",
        yaxis_title="rate",
        yaxis_range=[0, 1.02],
        template=TEMPLATE,
        height=340,
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def length_histogram_figure(record: AcceptanceRecord) -> go.Figure:
    """Steps by acceptance length (accepted drafts + 1: the bonus or correction token)."""
    histogram, derived = histogram_of(record)
    if not histogram:
        return empty("acceptance length", "this record has no histogram, per-step counts or per-position values")
    lengths = sorted(histogram)
    fig = go.Figure(
        go.Bar(
            x=[j + 1 for j in lengths],
            y=[histogram[j] for j in lengths],
            marker_color=COLORS[0],
            hovertemplate="%{y} steps emitted %{x} token(s)<extra></extra>",
        )
    )
    fig.update_layout(
        title="acceptance length: tokens per step, bonus included" + (" (derived)" if derived else ""),
        xaxis_title="tokens emitted by a step",
        yaxis_title="steps",
        xaxis_dtick=1,
        template=TEMPLATE,
        height=300,
    )
    return fig


def series_figure(records: list[AcceptanceRecord]) -> go.Figure:
    """Mean acceptance length of each record in file order (a log's intervals, a JSONL of requests)."""
    points = [(i, r) for i, r in enumerate(records, start=1) if r.mean_acceptance_length is not None]
    if len(points) < 2:
        return empty("mean acceptance length over time", "a series needs two records or more")
    fig = go.Figure(
        go.Scatter(
            x=[i for i, _ in points],
            y=[r.mean_acceptance_length for _, r in points],
            mode="lines+markers",
            marker_color=COLORS[0],
            text=[html.escape(r.time or "") for _, r in points],
            hovertemplate="record %{x} %{text}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="mean acceptance length (1 + accepted / steps) over the series",
        xaxis_title="record, in file order",
        yaxis_title="tokens per step",
        template=TEMPLATE,
        height=300,
    )
    return fig


def which_k_figure(plan: Plan) -> go.Figure:
    """MODELED speedup for k = 1..K; the best k marked."""
    rows = plan.rows
    fig = go.Figure(
        go.Bar(
            x=[row.k for row in rows],
            y=[row.speedup for row in rows],
            marker_color=[COLORS[1] if row.best else COLORS[0] for row in rows],
            text=[f"{row.speedup:.2f}x" + (" best" if row.best else "") for row in rows],
            textposition="outside",
            customdata=[[row.tokens_per_step, row.step_cost] for row in rows],
            hovertemplate="k = %{x}: %{customdata[0]:.2f} tokens per step, cost %{customdata[1]:.2f} steps"
            "<extra></extra>",
        )
    )
    fig.add_hline(y=1.0, line_dash="dot", line_color="#8a8f98")
    fig.update_layout(
        title="MODELED speedup by k (fixed-k chain drafting)" + (", rates fitted i.i.d." if plan.fitted_iid else ""),
        xaxis_title="k: speculative tokens per step",
        yaxis_title="modeled speedup",
        xaxis_dtick=1,
        template=TEMPLATE,
        height=320,
    )
    return fig

"""Plotly figures from traces and bench frames (nothing here runs a model).

Every figure says whether its times are MEASURED (from the trace's clock) or MODELED (re-timed under
stated costs). Figures stay cheap for long traces: one trace per lane or fate, never one per event.
"""

from __future__ import annotations

import html
from collections import Counter

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from specviz.analysis.exactness import OTHER
from specviz.analysis.metrics import compare, is_tree, position_counts, tokens_per_round
from specviz.engine.trace import TOKEN_KINDS, Trace
from specviz.speedup import HeterogeneousCosts, leviathan_speedup, modeled_timeline, tree_tau

FATE_COLORS = {
    "accept": "#2e9d5b",
    "correct": "#e0662f",
    "bonus": "#3b6fd8",
    "emit": "#8a8f98",
    "reject": "#c8374a",
    "draft": "#b9a5e6",
}
FATE_LABELS = {
    "accept": "accepted draft",
    "correct": "correction (target's token at a rejection)",
    "bonus": "bonus (all drafts accepted)",
    "emit": "autoregressive step",
}
LANE_COLORS = {
    "prefill": "#c9ced6",
    "draft": "#b9a5e6",
    "verify": "#f2c14e",
    "early_exit": "#d1495b",
    "branch": "#66c2a5",
    "realign": "#ef8a62",
    "schedule": "#67a9cf",
    "emit": "#8a8f98",
}
TEMPLATE = "plotly_white"


def esc(text: str) -> str:
    """Plotly hover labels render a subset of HTML: token text must not be able to inject any."""
    return html.escape(text, quote=True).replace("\n", "\\n")


def empty_figure(title: str, message: str = "no events in this trace") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, template=TEMPLATE, height=260, xaxis_visible=False, yaxis_visible=False)
    return fig


def lane_of(e) -> str:
    """The y lane a span event sits on: who did the work."""
    if e.kind == "draft":
        return "draft (branch)" if "branch" in e.info else f"draft: {e.source or 'drafter'}"
    if e.kind == "verify":
        part = e.info.get("part")
        return f"verify: {e.source}" if part else "verify: target"
    if e.kind == "branch":
        return "branches (drafter thread)"
    if e.kind == "emit":
        return "target step"
    return e.kind


def token_facts(e) -> list[str]:
    """What a reader asks of one output token (plain text): fate, position, round, depth, p, q, source, row.
    Shared by the plot hovers and the coloured tokens' titles."""
    facts = [FATE_LABELS.get(e.kind, e.kind), f"position {e.position}", f"round {e.step}"]
    if e.depth >= 0:
        facts.append(f"depth {e.depth}")
    if e.p is not None:
        facts.append(f"p={e.p:.3f}")
    if e.q is not None:
        facts.append(f"q={e.q:.3f}")
    if e.source:
        facts.append(f"source {e.source}")
    if e.info.get("sibling"):
        facts.append(f"tree branch: the drafter's choice #{int(e.info['sibling']) + 1} at its parent")
    if e.row:
        facts.append(f"row {e.row}")
    return facts


def token_hover(e) -> str:
    return f"<b>{esc(e.text)}</b><br>" + "<br>".join(esc(f) for f in token_facts(e))


def token_timeline(trace: Trace, row: int | None = None) -> go.Figure:
    """Spans per lane (drafting, verification, exits, branches, realignment) and every output token at
    the moment it was produced, coloured by fate. MEASURED wall-clock times."""
    title = f"Token timeline - {trace.method} (MEASURED, ms since run start)"
    events = [e for e in trace.events if row is None or e.row == row]
    if not events:
        return empty_figure(title)
    fig = go.Figure()
    spans: dict[str, list] = {}
    for e in events:
        if e.kind in ("prefill", "draft", "verify", "branch", "realign", "schedule", "emit") and e.t1 >= e.t0:
            spans.setdefault(lane_of(e), []).append(e)
    for lane, items in spans.items():
        kind = items[0].kind
        fig.add_trace(
            go.Bar(
                y=[lane] * len(items),
                x=[max((e.t1 - e.t0) * 1e3, 0.02) for e in items],
                base=[e.t0 * 1e3 for e in items],
                orientation="h",
                name=lane,
                marker_color=LANE_COLORS.get(kind, "#999"),
                opacity=0.75,
                hovertext=[
                    f"{esc(lane)}<br>round {e.step}<br>{(e.t1 - e.t0) * 1e3:.2f} ms"
                    + (f"<br>{esc(str(e.info))}" if e.kind in ("realign", "schedule", "branch") else "")
                    for e in items
                ],
                hoverinfo="text",
                showlegend=True,
            )
        )
    exits = [e for e in events if e.kind == "early_exit"]
    if exits:
        fig.add_trace(
            go.Scatter(
                x=[e.t0 * 1e3 for e in exits],
                y=["early exit"] * len(exits),
                mode="markers",
                name="early exit",
                marker=dict(symbol="x", size=9, color=LANE_COLORS["early_exit"]),
                hovertext=[
                    f"{esc(str(e.info.get('reason', '')))}<br>confidence {e.info.get('confidence', float('nan')):.3f}"
                    f"<br>round {e.step}"
                    for e in exits
                ],
                hoverinfo="text",
            )
        )
    for fate in ("accept", "correct", "bonus", "emit"):
        tokens = [e for e in events if e.kind == fate]
        if tokens:
            fig.add_trace(
                go.Scatter(
                    x=[e.t1 * 1e3 for e in tokens],
                    y=["tokens"] * len(tokens),
                    mode="markers",
                    name=FATE_LABELS[fate],
                    marker=dict(size=8, color=FATE_COLORS[fate], line=dict(width=0.5, color="white")),
                    hovertext=[token_hover(e) for e in tokens],
                    hoverinfo="text",
                )
            )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        barmode="overlay",
        height=360 + 18 * len(spans),
        xaxis_title="time (ms, measured)",
        yaxis_title="",
        legend=dict(orientation="h", y=-0.25),
        margin=dict(l=10, r=10, t=50, b=10),
    )
    return fig


def acceptance_histogram(trace: Trace) -> go.Figure:
    """Tokens emitted per verification round (accepted drafts + the correction or bonus token)."""
    title = f"Tokens per verification round - {trace.method}"
    lengths = tokens_per_round(trace)
    if not lengths:
        return empty_figure(title, "no verification rounds (autoregressive runs emit one token per step)")
    counts = Counter(lengths)
    xs = sorted(counts)
    mean = sum(lengths) / len(lengths)
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=[counts[x] for x in xs],
            marker_color=FATE_COLORS["accept"],
            hovertemplate="%{y} rounds emitted %{x} tokens<extra></extra>",
        )
    )
    fig.add_vline(x=mean, line_dash="dash", annotation_text=f"mean tau = {mean:.2f}")
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=300,
        bargap=0.15,
        xaxis_title="tokens per round (accepted drafts + 1 correction/bonus)",
        yaxis_title="rounds",
    )
    return fig


def position_acceptance(trace: Trace) -> go.Figure:
    """How often the draft at depth d is accepted (given it was drafted); a tree by depth, its siblings as one
    position (`metrics.position_counts` defines both)."""
    tree = is_tree(trace)
    title = f"Acceptance by {'depth in the tree' if tree else 'draft position'} - {trace.method}"
    counts = position_counts(trace)
    if not counts:
        return empty_figure(title, "no drafts in this trace")
    offered = "rounds whose tree reached this depth" if tree else "drafts"
    fig = go.Figure(
        go.Bar(
            x=[d + 1 for d in counts],
            y=[a / n for a, n in counts.values()],
            marker_color=FATE_COLORS["bonus"],
            customdata=[n for _, n in counts.values()],
            hovertemplate=f"depth %{{x}}: %{{y:.0%}} of %{{customdata}} {offered} accepted<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=300,
        xaxis_title=(
            "depth in the tree (1 = the root's children); share of rounds whose accepted path reached it"
            if tree
            else "draft position in the round (1 = first)"
        ),
        yaxis_title="acceptance rate",
        yaxis_range=[0, 1.05],
        yaxis_tickformat=".0%",
    )
    return fig


def batch_timeline(trace: Trace) -> go.Figure:
    """One lane per row: verification spans, realignments and tokens, so the ragged progress shows."""
    title = f"Per-row timeline - {trace.method} (MEASURED)" + (
        " - NAIVE MODE (broken on purpose)" if trace.meta.get("naive") else ""
    )
    if not trace.events:
        return empty_figure(title)
    fig = go.Figure()
    label = [f"row {i}" for i in range(len(trace.rows))]
    for kind in ("verify", "realign", "schedule"):
        items = [e for e in trace.events if e.kind == kind]
        if items:
            fig.add_trace(
                go.Bar(
                    y=[label[e.row] for e in items],
                    x=[max((e.t1 - e.t0) * 1e3, 0.02) for e in items],
                    base=[e.t0 * 1e3 for e in items],
                    orientation="h",
                    name=kind,
                    marker_color=LANE_COLORS[kind],
                    opacity=0.6 if kind == "verify" else 0.95,
                    hovertext=[
                        f"row {e.row} round {e.step}<br>{kind} {(e.t1 - e.t0) * 1e3:.2f} ms<br>{esc(str(e.info))}"
                        for e in items
                    ],
                    hoverinfo="text",
                )
            )
    for fate in ("accept", "correct", "bonus", "emit"):
        tokens = [e for e in trace.events if e.kind == fate]
        if tokens:
            fig.add_trace(
                go.Scatter(
                    x=[e.t1 * 1e3 for e in tokens],
                    y=[label[e.row] for e in tokens],
                    mode="markers",
                    name=FATE_LABELS[fate],
                    marker=dict(size=6, color=FATE_COLORS[fate]),
                    hovertext=[token_hover(e) for e in tokens],
                    hoverinfo="text",
                )
            )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        barmode="overlay",
        height=220 + 28 * len(trace.rows),
        xaxis_title="time (ms, measured)",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def mirror_timelines(trace: Trace, costs=None) -> go.Figure:
    """Mirror-SD: the measured lanes (target prefix/suffix, drafter thread) above a MODELED timeline of
    target and drafter on separate accelerators under `costs`."""
    if trace.method != "mirror":
        raise ValueError(f"mirror_timelines needs a Mirror-SD trace; this one is {trace.method!r}")
    costs = costs or HeterogeneousCosts()
    layers = int(trace.meta.get("target_layers") or trace.meta.get("mirror", {}).get("layers") or 12)
    modeled = modeled_timeline(trace, layers, trace.params["exit_layer"], costs)
    cost_text = ", ".join(f"{k} {v}" for k, v in costs.__dict__.items())
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.18,
        subplot_titles=(
            "MEASURED on this machine: target layers and the drafter thread (ms)",
            f"MODELED: target and drafter on separate accelerators (costs: {cost_text}); "
            f"modeled speedup over speculative decoding {modeled['modeled_speedup_over_sd'] or 0:.2f}x",
        ),
    )
    lanes: dict[str, list] = {}
    for e in trace.events:
        if e.kind in ("verify", "branch") or (e.kind == "draft" and "branch" not in e.info):
            lanes.setdefault(lane_of(e), []).append(e)
    for lane, items in lanes.items():
        fig.add_trace(
            go.Bar(
                y=[lane] * len(items),
                x=[max((e.t1 - e.t0) * 1e3, 0.02) for e in items],
                base=[e.t0 * 1e3 for e in items],
                orientation="h",
                name=f"measured: {lane}",
                marker_color=LANE_COLORS.get(items[0].kind, "#999"),
                opacity=0.8,
            ),
            row=1,
            col=1,
        )
    for part, color in (
        ("draft", LANE_COLORS["draft"]),
        ("prefix", "#f2c14e"),
        ("suffix", "#c99a1e"),
        ("branches", LANE_COLORS["branch"]),
    ):
        spans = [r[part] for r in modeled["rounds"] if r[part][1] > r[part][0]]
        if spans:
            lane = "drafter (accelerator B)" if part in ("draft", "branches") else "target (accelerator A)"
            fig.add_trace(
                go.Bar(
                    y=[lane] * len(spans),
                    x=[b - a for a, b in spans],
                    base=[a for a, _ in spans],
                    orientation="h",
                    name=f"modeled: {part}",
                    marker_color=color,
                    opacity=0.8,
                ),
                row=2,
                col=1,
            )
    fig.update_layout(
        template=TEMPLATE,
        barmode="overlay",
        height=620,
        legend=dict(orientation="h", y=-0.12),
        title=(
            "Mirror-SD timelines - measured vs modeled "
            f"(hit rate {trace.meta.get('mirror', {}).get('hit_rate', 0):.0%})"
        ),
    )
    fig.update_xaxes(title_text="ms (measured)", row=1, col=1)
    fig.update_xaxes(title_text="ms (MODELED)", row=2, col=1)
    return fig


def compare_figures(frame: pd.DataFrame) -> dict[str, go.Figure]:
    """Per-method charts of a bench-style frame: speedup, tau, tokens/s, share equal to autoregressive."""
    figs: dict[str, go.Figure] = {}
    if frame is None or frame.empty:
        return {key: empty_figure(key, "no results yet") for key in ("speedup", "tau", "tokens_per_s", "equal")}
    methods = list(dict.fromkeys(frame["method"]))
    specs = [
        ("speedup", "Speedup over autoregressive (measured, same prompts)", "x autoregressive"),
        ("tau", "Mean tokens per verification round (tau)", "tokens / round"),
        ("tokens_per_s", "Throughput (measured)", "tokens / s"),
    ]
    for key, title, axis in specs:
        if key not in frame or frame[key].dropna().empty:
            figs[key] = empty_figure(title, f"no {key} column")
            continue
        fig = go.Figure()
        for m in methods:
            values = frame.loc[frame["method"] == m, key].dropna()
            fig.add_trace(
                go.Box(
                    y=values,
                    name=str(m),
                    boxpoints="all",
                    jitter=0.3,
                    pointpos=0,
                    hovertemplate=f"{esc(str(m))}: %{{y:.3f}}<extra></extra>",
                )
            )
        if key == "speedup":
            fig.add_hline(y=1.0, line_dash="dot", annotation_text="autoregressive")
        fig.update_layout(title=title, template=TEMPLATE, height=340, yaxis_title=axis, showlegend=False)
        figs[key] = fig
    share = (
        frame.groupby("method", sort=False)["equal_to_autoregressive"].mean()
        if "equal_to_autoregressive" in frame
        else None
    )
    if share is not None:
        fig = go.Figure(
            go.Bar(
                x=[str(m) for m in share.index],
                y=share.values,
                marker_color=[FATE_COLORS["accept"] if v == 1 else FATE_COLORS["correct"] for v in share.values],
                hovertemplate="%{x}: %{y:.0%} of outputs equal<extra></extra>",
            )
        )
        fig.update_layout(
            title="Output equals autoregressive (share of prompts)",
            template=TEMPLATE,
            height=300,
            yaxis_range=[0, 1.05],
            yaxis_tickformat=".0%",
        )
        figs["equal"] = fig
    else:
        figs["equal"] = empty_figure("Output equals autoregressive", "no equality column")
    return figs


def throughput_figure(frame: pd.DataFrame) -> go.Figure:
    """Generated tokens/s against batch size, one line per method (with the realigning share in hover)."""
    title = "Throughput vs batch size (measured)"
    if frame is None or frame.empty or "batch_size" not in frame:
        return empty_figure(title, "no batch results")
    fig = go.Figure()
    base = frame["method"].astype(str).str.split(":").str[0]
    for m in dict.fromkeys(base):
        rows = frame[base == m].sort_values("batch_size")
        share = rows["realign_share"] if "realign_share" in rows else pd.Series([None] * len(rows))
        fig.add_trace(
            go.Scatter(
                x=rows["batch_size"],
                y=rows["tokens_per_s"],
                mode="lines+markers",
                name=m,
                customdata=share.fillna(0).values,
                hovertemplate=f"{esc(m)} batch %{{x}}: %{{y:.0f}} tok/s, realigning %{{customdata:.0%}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=340,
        xaxis_title="batch size",
        yaxis_title="generated tokens / s",
        xaxis_type="log",
        xaxis_tickvals=sorted(frame["batch_size"].dropna().unique()),
    )
    return fig


def equality_text(stats: dict) -> str:
    """'yes', or the first difference with the target's margin there and whether it is a proven tie."""
    if stats["equal_to_autoregressive"]:
        return "yes"
    d = stats.get("first_difference")
    if not d:
        return "NO"
    verdict = "a proven numerical tie" if d["tie"] else "NOT a tie: a bug"
    return (
        f"NO: first difference at token {d['position']}, top-2 margin {d['margin']:.3g} "
        f"vs logit difference {d['logit_difference']:.3g}: {verdict}"
    )


NOT_SHOWN = "—"  # a figure with no value for this run (a chain-only formula on a tree, a cost not measured)


def stats_table(trace: Trace, baseline: Trace) -> pd.DataFrame:
    """The run against the autoregressive run of the same prompt, as (metric, value) rows. Figures that only a
    chain defines (metrics.compare sets them to None for a tree) show as a dash, never as a chain formula's number."""
    s = compare(trace, baseline)

    def fmt(value, spec="{:.3f}") -> str:
        return NOT_SHOWN if value is None else spec.format(value)

    drafts = "nodes" if s["tree"] else "drafts"
    forwards = "levels" if s["tree"] else "forwards"
    rows = [
        ("tokens/s (measured)", fmt(s["tokens_per_s"], "{:.1f}")),
        (
            "autoregressive tokens/s (measured)",
            fmt(baseline.new_tokens / baseline.wall_time if baseline.wall_time else None, "{:.1f}"),
        ),
        ("speedup vs autoregressive (measured)", fmt(s["speedup"], "{:.2f}x")),
        (f"alpha: accepted / drafted {drafts} (measured)", fmt(s["alpha"])),
        ("alpha fitted from tau, i.i.d. chain model", fmt(s["alpha_iid"])),
        ("tau: tokens per round, bonus included", fmt(s["tau"], "{:.2f}")),
        (f"mean {drafts} per round", fmt(s["mean_drafts_per_round"], "{:.2f}")),
        (f"drafter forwards per round ({forwards})", fmt(s["forwards_per_round"], "{:.2f}")),
        ("c: drafter forward / target step (measured)", fmt(s["c"])),
        ("v: verify / target step (measured)", fmt(s["v"], "{:.2f}")),
        ("theoretical speedup (Leviathan's chain, from alpha, c)", fmt(s["theoretical_speedup"], "{:.2f}x")),
        (f"modeled speedup tau / ({forwards} x c + v)", fmt(s["modeled_speedup"], "{:.2f}x")),
        ("efficiency: measured / theoretical (chain)", fmt(s["efficiency"], "{:.2f}")),
        ("early exits", str(s["early_exits"])),
        ("wasted drafts", str(s["wasted_drafts"])),
        ("output equals autoregressive", equality_text(s)),
    ]
    return pd.DataFrame(rows, columns=["metric", "value"])


def dashes(frame: pd.DataFrame) -> pd.DataFrame:
    """A table for the page: a cell no figure fills (a token tree's efficiency, a lookup's c: NaN or None) shows
    as a dash, not as NaN."""
    return frame.astype(object).where(frame.notna(), NOT_SHOWN)


def token_counts(trace: Trace) -> dict[str, int]:
    return dict(Counter(e.kind for e in trace.events if e.kind in TOKEN_KINDS))


def expected_speedup(alpha: float, gamma: int, c: float, v: float) -> float:
    """Leviathan et al.: expected tokens per round (1 - a^(g+1)) / (1 - a) over the round's cost g c + v
    (v: verifying g + 1 tokens / one target step; v = 1 is the paper's formula)."""
    return leviathan_speedup(alpha, gamma, c, v)


def speedup_explorer(
    alpha: float, gamma: int, c: float, v: float, points: list[dict] | None = None, gamma_max: int = 16
) -> go.Figure:
    """The MODELED expected speedup against gamma for the chosen alpha, c and v, with this session's
    MEASURED runs as points (at their mean drafts per round), so the gap between model and measurement shows.
    The curve is a chain's: a token tree's run (point "tree") has no place on it (its nodes are not gamma, its
    cost is its levels) and is left off; `tau_explorer` shows it."""
    gammas = list(range(1, gamma_max + 1))
    curve = [expected_speedup(alpha, g, c, v) for g in gammas]
    best = max(gammas, key=lambda g: expected_speedup(alpha, g, c, v))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=gammas,
            y=curve,
            mode="lines",
            name=f"MODELED: alpha {alpha:.2f}, c {c:.2f}, v {v:.2f}",
            hovertemplate="gamma %{x}: %{y:.2f}x (modeled)<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[gamma],
            y=[expected_speedup(alpha, gamma, c, v)],
            mode="markers",
            name=f"gamma = {gamma}",
            marker=dict(size=12, symbol="diamond"),
            hovertemplate="chosen gamma %{x}: %{y:.2f}x (modeled)<extra></extra>",
        )
    )
    for p in points or []:
        if p.get("tree"):
            continue
        alpha_text = "—" if p.get("alpha") is None else f"{p['alpha']:.2f}"
        c_text = "— (no drafter forward)" if p.get("c") is None else f"{p['c']:.2f}"
        fig.add_trace(
            go.Scatter(
                x=[p["gamma"]],
                y=[p["speedup"]],
                mode="markers",
                name=f"MEASURED {esc(p['method'])}",
                marker=dict(size=10),
                hovertemplate=(
                    f"{esc(p['method'])}: %{{y:.2f}}x measured at %{{x:.2f}} drafts/round "
                    f"(alpha {alpha_text}, c {c_text})<extra></extra>"
                ),
            )
        )
    fig.add_hline(y=1, line_dash="dot", annotation_text="autoregressive")
    fig.update_layout(
        title=f"Expected speedup vs gamma (best modeled gamma: {best})",
        template=TEMPLATE,
        height=380,
        xaxis_title="gamma (drafts per round)",
        yaxis_title="speedup over autoregressive",
    )
    return fig


def tau_explorer(alpha: float, branch: int, depth: int, points: list[dict] | None = None, most: int = 32) -> go.Figure:
    """MODELED tokens per round against the tokens drafted per round, for a chain of gamma drafts and for the best
    token tree of that many nodes (`speedup.tree_tau`), with this session's MEASURED runs as points: what a tree
    buys in tau for the same drafted tokens (what it costs is the wider verification: docs/results.md)."""
    sizes = list(range(1, most + 1))
    chain = [tree_tau(alpha, n, 1, n) for n in sizes]
    tree = [tree_tau(alpha, n, branch, depth) for n in sizes]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=sizes,
            y=chain,
            mode="lines",
            name=f"MODELED chain: alpha {alpha:.2f}",
            hovertemplate="chain of %{x} drafts: tau %{y:.2f} (modeled)<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=sizes,
            y=tree,
            mode="lines",
            line=dict(dash="dash"),
            name=f"MODELED tree: branch {branch}, depth {depth}",
            hovertemplate="tree of %{x} nodes: tau %{y:.2f} (modeled)<extra></extra>",
        )
    )
    for p in points or []:
        if p.get("tau"):
            fig.add_trace(
                go.Scatter(
                    x=[p["gamma"]],
                    y=[p["tau"]],
                    mode="markers",
                    marker=dict(size=10),
                    name=f"MEASURED {esc(p['method'])}",
                    hovertemplate=f"{esc(p['method'])}: tau %{{y:.2f}} at %{{x:.1f}} drafted tokens a round "
                    "(measured)<extra></extra>",
                )
            )
    fig.update_layout(
        title="Expected tokens per round (tau): a chain against a token tree",
        template=TEMPLATE,
        height=380,
        xaxis_title="tokens drafted per round (chain: gamma; tree: nodes)",
        yaxis_title="tokens per round (tau)",
    )
    return fig


def explorer_point(trace: Trace) -> dict | None:
    """A measured run as an explorer point, from what the Playground stored in its trace ("tree": a token tree's
    run, whose gamma is its nodes per round: the tau explorer's x, not the chain speedup curve's)."""
    m = trace.meta.get("against_autoregressive") or {}
    if not m.get("speedup") or not m.get("mean_drafts_per_round"):
        return None
    return {
        "method": trace.method,
        "tree": is_tree(trace),
        "gamma": m["mean_drafts_per_round"],
        "speedup": m["speedup"],
        "alpha": m.get("alpha"),
        "c": m.get("c"),
        "tau": m.get("tau"),
    }


def exactness_figure(real: dict, broken: dict | None = None, cells: int = 12) -> go.Figure:
    """The target's exact law of the first tokens against the empirical shares drawn by the method, by plain
    autoregressive sampling and (if given) by the BROKEN-on-purpose rule; rare continuations binned as other."""
    shown = [c for c in real["cells"] if c["key"] != OTHER][:cells]
    keys = [c["key"] for c in shown] + [OTHER]
    law = real["law"]
    labels = [repr(c["text"])[1:-1][:24] for c in shown] + ["other"]

    def share(counts: dict, key: str) -> float:
        total = sum(counts.values()) or 1
        if key == OTHER:  # every continuation not shown as its own bar
            return (total - sum(counts.get(k, 0) for k in keys[:-1])) / total
        return counts.get(key, 0) / total

    exact = [law.get(k, 0.0) if k != OTHER else 1 - sum(law.get(k2, 0.0) for k2 in keys[:-1]) for k in keys]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=exact, name="target's exact p", marker_color="#495057"))
    fig.add_trace(
        go.Bar(
            x=labels,
            y=[share(real["counts"], k) for k in keys],
            name=f"{esc(real['method'])} (TV {real['tv_distance']:.3f}, chi-square p {real['chi2_p']:.3g})",
        )
    )
    if real.get("reference_counts"):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[share(real["reference_counts"], k) for k in keys],
                name=f"autoregressive sampling (TV {real['reference_tv_distance']:.3f}, "
                f"p {real['reference_chi2_p']:.3g})",
            )
        )
    if broken:
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[share(broken["counts"], k) for k in keys],
                marker_color="#d9485f",
                name=f"BROKEN on purpose (TV {broken['tv_distance']:.3f}, p {broken['chi2_p']:.3g})",
            )
        )
    fig.update_layout(
        barmode="group",
        template=TEMPLATE,
        height=420,
        yaxis_title="share of samples",
        title=f"First {real['tokens']} token(s): {real['n']} samples each against the target's exact law",
        legend=dict(orientation="h", y=-0.25),
        xaxis_tickangle=-30,
    )
    return fig


def exactness_table(real: dict, broken: dict | None = None) -> pd.DataFrame:
    def verdict(p: float) -> str:
        return "consistent with the target's law" if p > 0.01 else ("REJECTED: biased" if p < 0.001 else "borderline")

    rows = [
        {
            "sampler": real["method"],
            "N": real["n"],
            "TV distance": round(real["tv_distance"], 4),
            "chi-square p": float(f"{real['chi2_p']:.3g}"),
            "seconds": round(real["method_seconds"], 1),
            "verdict": verdict(real["chi2_p"]),
        }
    ]
    if real.get("reference_counts"):
        rows.append(
            {
                "sampler": "autoregressive (reference)",
                "N": real["n"],
                "TV distance": round(real["reference_tv_distance"], 4),
                "chi-square p": float(f"{real['reference_chi2_p']:.3g}"),
                "seconds": round(real["reference_seconds"], 1),
                "verdict": verdict(real["reference_chi2_p"]),
            }
        )
    if broken:
        rows.append(
            {
                "sampler": f"{broken['method']}: BROKEN on purpose",
                "N": broken["n"],
                "TV distance": round(broken["tv_distance"], 4),
                "chi-square p": float(f"{broken['chi2_p']:.3g}"),
                "seconds": round(broken["method_seconds"], 1),
                "verdict": verdict(broken["chi2_p"]),
            }
        )
    return pd.DataFrame(rows)

"""Traces as HTML for the app: coloured tokens with hover detail, and one verification round at a time.

gr.HTML does not sanitize, and a token can be `<img src=x onerror=...>`: every piece of text that
reaches the page (prompt, token text, titles, sources) goes through `html.escape` here, in one place.
"""
from __future__ import annotations

import html
from typing import Iterable

from .plots import FATE_LABELS, token_facts
from .trace import TOKEN_KINDS, Event, Trace

CSS = """
.sv-tokens { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; line-height: 1.7;
             font-size: 0.92rem; padding: .6rem; border: 1px solid #e3e5e8; border-radius: 6px; background: #fff; color: #222; }
.sv-prompt { color: #6b7280; }
.sv-tok { border-radius: 3px; padding: 0 1px; margin: 0 0.5px; color: #111; }
.sv-accept { background: #c7ebd5; } .sv-correct { background: #f8d2bf; } .sv-bonus { background: #cbd9f6; }
.sv-emit { background: #e6e7ea; } .sv-reject { background: #f3c6cc; text-decoration: line-through; }
.sv-legend span { margin-right: .8rem; font-size: .85rem; } .sv-note { color: #6b7280; font-size: .85rem; }
.sv-race { display: grid; grid-template-columns: 1fr 1fr; gap: .8rem; }
.sv-lane h4 { margin: .2rem 0; } .sv-clock { font-variant-numeric: tabular-nums; font-weight: 600; }
.sv-done { color: #15803d; font-weight: 600; } .sv-verdict { margin-top: .5rem; font-weight: 600; }
.sv-step table { border-collapse: collapse; margin-top: .4rem; } .sv-step td, .sv-step th { border: 1px solid #e3e5e8; padding: .2rem .5rem; }
"""


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def visible(text: str) -> str:
    """Escaped token text where whitespace-only tokens stay visible."""
    if text == "":
        return "&#8203;"
    return esc(text)


def token_title(e: Event) -> str:
    return esc(" | ".join(token_facts(e)))


def token_span(e: Event, text: str | None = None) -> str:
    return (f'<span class="sv-tok sv-{e.kind}" data-fate="{e.kind}" title="{token_title(e)}">'
            f"{visible(e.text if text is None else text)}</span>")


def legend_html() -> str:
    items = "".join(f'<span><span class="sv-tok sv-{k}">&nbsp;&nbsp;</span> {esc(FATE_LABELS[k])}</span>'
                    for k in ("accept", "correct", "bonus", "emit"))
    return f'<div class="sv-legend">{items}</div>'


def tokens_html(prompt: str, events: Iterable[Event], row: int = 0, decode=None, status: str = "") -> str:
    """The prompt, then every output token of `row` coloured by fate (hover: p, q, round, depth, source).
    `decode(id)` supplies text for events whose text is not filled yet (while streaming)."""
    spans = []
    for e in sorted((e for e in events if e.kind in TOKEN_KINDS and e.row == row), key=lambda e: e.position):
        text = e.text if e.text or decode is None else decode(e.token_id)
        spans.append(token_span(e, text))
    note = f'<div class="sv-note">{esc(status)}</div>' if status else ""
    return f'<div class="sv-tokens"><span class="sv-prompt">{esc(prompt)}</span>{"".join(spans)}</div>{note}'


def trace_html(trace: Trace, row: int = 0, status: str = "") -> str:
    prompt = trace.rows[row].prompt if trace.rows else ""
    return tokens_html(prompt, trace.events, row, status=status)


def rounds(trace: Trace, row: int = 0) -> list[int]:
    """Round numbers of a row that produced tokens (prefill excluded)."""
    return sorted({e.step for e in trace.events if e.row == row and e.kind in TOKEN_KINDS})


def step_html(trace: Trace, step: int, row: int = 0) -> str:
    """One round for teaching: what was drafted, the target's verdict on each draft, what was emitted."""
    events = [e for e in trace.events if e.row == row and e.step == step]
    if not events:
        return '<div class="sv-note">no such round</div>'
    before = [e for e in trace.events if e.row == row and e.kind in TOKEN_KINDS and e.step < step]
    context = "".join(token_span(e) for e in sorted(before, key=lambda e: e.position)[-24:])
    drafts = sorted((e for e in events if e.kind == "draft" and "branch" not in e.info), key=lambda e: e.depth)
    verdicts = {e.depth: e for e in events if e.kind in ("accept", "reject")}
    rows = []
    for d in drafts:
        v = verdicts.get(d.depth)
        verdict = "accepted" if v is not None and v.kind == "accept" else ("rejected" if v is not None else "not verified")
        detail = ""
        if v is not None:
            cause = v.info.get("cause", "")
            detail = f"p={v.p:.3f} q={v.q:.3f}" + (f" ({esc(cause)})" if cause else "") if v.p is not None and v.q is not None else ""
        rows.append(f"<tr><td>{d.depth + 1}</td><td>{token_span(d)}</td><td>{esc(d.source)}</td>"
                    f"<td>{'' if d.q is None else f'{d.q:.3f}'}</td><td>{verdict}</td><td>{detail}</td></tr>")
    emitted = [e for e in events if e.kind in ("correct", "bonus", "emit")]
    exits = [e for e in events if e.kind == "early_exit"]
    branches = [e for e in events if e.kind == "branch"]
    parts = [f"<h4>Round {step}</h4>", f'<div class="sv-tokens"><span class="sv-prompt">... </span>{context}</div>']
    if drafts:
        parts.append("<table><tr><th>depth</th><th>draft</th><th>source</th><th>q</th><th>target's verdict</th><th>p / q</th></tr>"
                     + "".join(rows) + "</table>")
    else:
        parts.append('<div class="sv-note">no drafts this round: the target produced the token itself</div>')
    for e in exits:
        parts.append(f'<div class="sv-note">early exit ({esc(str(e.info.get("reason", "")))}), confidence '
                     f'{e.info.get("confidence", float("nan")):.3f}</div>')
    for e in branches:
        parts.append(f'<div class="sv-note">branch from candidate {esc(e.text)}: {esc(str(e.info.get("fate", "")))}</div>')
    for e in emitted:
        parts.append(f"<p>Target emits {token_span(e)} ({esc(FATE_LABELS[e.kind])}"
                     + (f", p={e.p:.3f}" if e.p is not None else "") + ")</p>")
    return f'<div class="sv-step">{"".join(parts)}</div>'


def lane_html(label: str, trace: Trace, t: float, lane_id: str) -> str:
    """One side of a race at time `t` (seconds into its measured run): the tokens it had emitted by then."""
    shown = sorted((e for e in trace.events if e.kind in TOKEN_KINDS and e.row == 0 and e.t1 <= t), key=lambda e: e.position)
    done = t >= trace.wall_time
    clock = min(t, trace.wall_time)
    state = '<span class="sv-done">finished</span>' if done else "running"
    rate = f"{len(shown) / clock:.0f} tokens/s" if clock > 0 else ""
    return (f'<div class="sv-lane" id="{esc(lane_id)}" data-tokens="{len(shown)}" data-done="{str(done).lower()}">'
            f'<h4>{esc(label)}</h4><div><span class="sv-clock">{clock:.2f} s</span> - {len(shown)} tokens {rate} - {state}</div>'
            f'<div class="sv-tokens"><span class="sv-prompt">{esc(trace.rows[0].prompt)}</span>'
            f'{"".join(token_span(e) for e in shown)}</div></div>')


def race_html(method: Trace, baseline: Trace, t: float) -> str:
    """Autoregressive and a method side by side at the same moment of their MEASURED runs (each measured
    alone, played back together), with the running speedup and, at the end, whether the outputs agree."""
    n_m = sum(1 for e in method.events if e.kind in TOKEN_KINDS and e.row == 0 and e.t1 <= t)
    n_b = sum(1 for e in baseline.events if e.kind in TOKEN_KINDS and e.row == 0 and e.t1 <= t)
    clock_m, clock_b = min(t, method.wall_time), min(t, baseline.wall_time)
    running = (n_m / clock_m) / (n_b / clock_b) if clock_m > 0 and clock_b > 0 and n_b and n_m else None
    speed = f"running speedup {running:.2f}x" if running else "running speedup -"
    verdict = ""
    if t >= max(method.wall_time, baseline.wall_time):
        final = (baseline.wall_time / baseline.new_tokens) / (method.wall_time / method.new_tokens) \
            if method.new_tokens and baseline.new_tokens and method.wall_time else None
        greedy = not method.params.get("temperature")
        if method.output_ids == baseline.output_ids:
            same = "outputs EQUAL token for token"
        elif greedy:
            same = "outputs DIFFER (greedy must be equal: see the Playground's stats)"
        else:
            same = "sampling: two different draws from the same distribution (both shown)"
        verdict = (f'<div class="sv-verdict" id="race-verdict">finished: {esc(method.method)} '
                   f"{final:.2f}x the speed of autoregressive - {esc(same)}</div>" if final else "")
    note = ('<div class="sv-note">Each run was MEASURED alone (two runs at once would share the CPU cores and '
            'distort both); the two measured timelines play back together in real time.</div>')
    return (f'<div class="sv-race-wrap"><div id="race-speed">{esc(speed)}</div><div class="sv-race">'
            f'{lane_html("autoregressive", baseline, t, "race-ar")}{lane_html(method.method, method, t, "race-method")}'
            f"</div>{verdict}{note}</div>")

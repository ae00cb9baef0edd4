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

"""Traces as HTML for the app: coloured tokens with hover detail, and one verification round at a time.

gr.HTML does not sanitize, and a token can be `<img src=x onerror=...>`: every piece of text that
reaches the page (prompt, token text, titles, sources) goes through `html.escape` here, in one place.
"""

from __future__ import annotations

import html
from typing import Iterable

from specviz.engine.trace import TOKEN_KINDS, Event, Trace, is_healed_token
from specviz.views.plots import FATE_LABELS, token_facts

CSS = """
.sv-tokens { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; line-height: 1.7;
             font-size: 0.92rem; padding: .6rem; border: 1px solid #e3e5e8; border-radius: 6px; background: #fff;
             color: #222; }
.sv-prompt { color: #4b5563; }
.sv-tok { border-radius: 3px; padding: 0 1px; margin: 0 0.5px; color: #111; } .sv-tok.sv-draft { color: inherit; }
.sv-accept { background: #c7ebd5; } .sv-correct { background: #f8d2bf; } .sv-bonus { background: #cbd9f6; }
.sv-emit { background: #e6e7ea; } .sv-copied { text-decoration: underline dotted #15803d 2px; }
.sv-source { outline: 2px solid #c2410c; background: #ffedd5; border-radius: 2px; }
.sv-reject { background: #f3c6cc; text-decoration: line-through; }
.sv-legend span { margin-right: .8rem; font-size: .85rem; } .sv-note { color: #4b5563; font-size: .85rem; }
.dark .sv-note { color: #a1a1aa; } .dark .sv-done { color: #4ade80; }
[data-sv-scroll]:focus-visible { outline: 2px solid #c2410c; outline-offset: 2px; }
.sv-race { display: grid; grid-template-columns: 1fr 1fr; gap: .8rem; }
.sv-lane h4 { margin: .2rem 0; } .sv-clock { font-variant-numeric: tabular-nums; font-weight: 600; }
.sv-done { color: #15803d; font-weight: 600; } .sv-verdict { margin-top: .5rem; font-weight: 600; }
.sv-card { border: 1px solid #e3e5e8; border-radius: 6px; padding: .5rem .7rem; margin: .5rem 0; }
.sv-card.sv-v-accept { border-left: 4px solid #2f9e63; } .sv-card.sv-v-reject { border-left: 4px solid #d9485f; }
.sv-card.sv-v-untried { border-left: 4px dashed #9ca3af; }
.sv-dists { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.sv-dist h5 { margin: .2rem 0; font-size: .85rem; }
.sv-bar-row { display: grid; grid-template-columns: 7rem 1fr 4rem; gap: .4rem; align-items: center; font-size: .8rem; }
.sv-bar-label { font-family: ui-monospace, monospace; white-space: pre; overflow: hidden; text-overflow: ellipsis; }
.sv-bar { height: .8rem; background: #9fb3d9; border-radius: 2px; } .sv-bar-row.sv-hl .sv-bar { background: #e8590c; }
.sv-bar-row.sv-hl .sv-bar-label { font-weight: 700; } .sv-rule { margin-top: .4rem; font-size: .85rem; }
.sv-unit { position: relative; height: 1rem; background: #f1f3f5; border: 1px solid #ced4da; border-radius: 2px;
           margin: .3rem 0; }
.sv-unit .sv-accept-zone { position: absolute; left: 0; top: 0; bottom: 0; background: #c7ebd5; }
.sv-unit .sv-u { position: absolute; top: -3px; bottom: -3px; width: 3px; background: #111; }
.sv-sibling { box-shadow: inset 0 -3px 0 #7c3aed; }
.sv-tree ul { list-style: none; margin: 0; padding-left: 1.3rem; border-left: 1px dotted #9ca3af; }
.sv-tree > ul { padding-left: 0; border-left: 0; } .sv-tree li { margin: .15rem 0; }
.sv-node { font-family: ui-monospace, monospace; border: 1px solid #ced4da; border-radius: 3px; padding: 0 .3rem;
           background: #fff; color: #111; }
.sv-node.sv-n-accept { background: #c7ebd5; border-color: #2f9e63; font-weight: 700; }
.sv-node.sv-n-tried { background: #f3c6cc; } .sv-node-facts { color: #4b5563; font-size: .78rem; margin-left: .4rem; }
.dark .sv-node-facts { color: #a1a1aa; }
.sv-step table { border-collapse: collapse; margin-top: .4rem; }
.sv-step td, .sv-step th { border: 1px solid #e3e5e8; padding: .2rem .5rem; }
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


def token_span(e: Event, text: str | None = None, pos: int | None = None, copied_from: int | None = None) -> str:
    """One output token; `data-t` is when the run committed it (seconds from its start): the replay's clock.
    `pos`: its place in prompt + output; `copied_from`: the place its prompt-lookup draft was copied from (the page
    points at it on hover)."""
    extra, title = "", token_title(e)
    if pos is not None:
        extra += f' data-pos="{pos}"'
    if copied_from is not None:
        extra += f' data-copied-from="{copied_from}"'
        title += esc(f" | copied from token {copied_from} of the text")
    copied = " sv-copied" if copied_from is not None else ""
    if e.kind == "accept" and e.info.get("sibling"):  # a token tree's non-first branch: the drafter's 2nd+ choice
        copied += " sv-sibling"
        extra += f' data-sibling="{int(e.info["sibling"])}"'
    return (
        f'<span class="sv-tok sv-{e.kind}{copied}" data-fate="{e.kind}" data-t="{e.t1:.4f}"{extra} title="{title}">'
        f"{visible(e.text if text is None else text)}</span>"
    )


def copy_sources(events: Iterable[Event], row: int = 0) -> dict[tuple[int, int], int]:
    """(round, depth) -> the place in prompt + output that a prompt-lookup draft was copied from."""
    return {
        (e.step, e.depth): e.info["copied_from"]
        for e in events
        if e.kind == "draft" and e.row == row and e.source == "lookup" and "copied_from" in e.info
    }


def prompt_html(prompt: str, pieces: list[str] | None) -> str:
    """The prompt, token by token (`data-pos`) when `pieces` are its tokens' texts and join to it exactly."""
    if not pieces or "".join(pieces) != prompt:
        return f'<span class="sv-prompt">{esc(prompt)}</span>'
    spans = "".join(f'<span class="sv-ptok" data-pos="{i}">{esc(p)}</span>' for i, p in enumerate(pieces))
    return f'<span class="sv-prompt">{spans}</span>'


COPY_JS = """
  const mark = (e, on) => {
    const tok = e.target.closest && e.target.closest("[data-copied-from]");
    if (!tok) return;
    const box = tok.closest(".sv-tokens");
    const source = box && box.querySelector(`[data-pos="${tok.dataset.copiedFrom}"]`);
    if (source) source.classList.toggle("sv-source", on);
  };
  document.addEventListener("mouseover", (e) => mark(e, true));
  document.addEventListener("mouseout", (e) => mark(e, false));
"""


def legend_html() -> str:
    items = "".join(
        f'<span><span class="sv-tok sv-{k}">&nbsp;&nbsp;</span> {esc(FATE_LABELS[k])}</span>'
        for k in ("accept", "correct", "bonus", "emit")
    )
    return f'<div class="sv-legend">{items}</div>'


def tokens_html(
    prompt: str, events: Iterable[Event], row: int = 0, status: str = "", pieces: list[str] | None = None
) -> str:
    """The prompt, then every output token of `row` coloured by fate (hover: p, q, round, depth, source). With
    the prompt's token `pieces`, a token whose draft was copied by prompt lookup points at its source on hover."""
    events = list(events)
    copies = copy_sources(events, row)
    start = len(pieces) if pieces and "".join(pieces) == prompt else None
    spans = [
        token_span(
            e,
            pos=None if start is None else start + e.position,
            copied_from=copies.get((e.step, e.depth)) if e.kind == "accept" and start is not None else None,
        )
        for e in sorted((e for e in events if e.kind in TOKEN_KINDS and e.row == row), key=lambda e: e.position)
    ]
    note = f'<div class="sv-note">{esc(status)}</div>' if status else ""
    return f'<div class="sv-tokens">{prompt_html(prompt, pieces)}{"".join(spans)}</div>{note}'


def trace_html(trace: Trace, row: int = 0, status: str = "", pieces: list[str] | None = None) -> str:
    prompt = trace.rows[row].prompt if trace.rows else ""
    return tokens_html(prompt, trace.events, row, status=status, pieces=pieces)


def rounds(trace: Trace, row: int = 0) -> list[int]:
    """Round numbers of a row that produced tokens (prefill and token healing's first token, step -1, excluded)."""
    return sorted({e.step for e in trace.events if e.row == row and e.kind in TOKEN_KINDS and not is_healed_token(e)})


def replay_pace(seconds: float, max_seconds: float) -> float:
    """How much faster than measured a replay plays: 1 (real time) unless the run was longer than `max_seconds`."""
    return max(1.0, seconds / max_seconds) if max_seconds > 0 else 1.0


def replay_bar(label: str, end: float, pace: float) -> str:
    """The replay's controls and clock (REPLAY_JS drives them; without JS the finished state shows)."""
    faster = f" at {pace:.1f}x the measured pace" if pace > 1 else " at the pace it was measured"
    return (
        f'<div class="sv-replay-bar"><button type="button" class="sv-replay-again">replay</button>'
        f'<button type="button" class="sv-replay-all">show all</button> <span class="sv-replay-label">'
        f'{esc(label)}{faster}</span> <span class="sv-clock" data-end="{end:.4f}">{end:.2f} s</span></div>'
    )


def replay_html(
    trace: Trace,
    row: int = 0,
    status: str = "",
    max_seconds: float = 60.0,
    measured_at: float | None = None,
    pieces: list[str] | None = None,
) -> str:
    """A finished run, sent once: the browser reveals each token at the moment the run committed it.
    `data-measured-at` (epoch seconds) tells one measurement from another (scripts wait for a new one)."""
    pace = replay_pace(trace.wall_time, max_seconds)
    when = f' data-measured-at="{measured_at:.3f}"' if measured_at else ""
    return (
        f'<div class="sv-replay" data-end="{trace.wall_time:.4f}" data-pace="{pace:.3f}"{when}>'
        f"{replay_bar('replay of the measured run', trace.wall_time, pace)}"
        f"{trace_html(trace, row, status, pieces)}</div>"
    )


def lane_html(label: str, trace: Trace, lane_id: str) -> str:
    """One side of a race: every token of its measured run, each revealed by the replay at its own time."""
    shown = sorted((e for e in trace.events if e.kind in TOKEN_KINDS and e.row == 0), key=lambda e: e.position)
    end = trace.wall_time
    rate = f"{len(shown) / end:.0f} tokens/s" if end > 0 else ""
    return (
        f'<div class="sv-lane" id="{esc(lane_id)}" data-end="{end:.4f}" data-tokens="{len(shown)}" data-done="true">'
        f'<h4>{esc(label)}</h4><div><span class="sv-lane-clock">{end:.2f} s</span> - <span class="sv-lane-count">'
        f'{len(shown)}</span> tokens <span class="sv-lane-rate">{rate}</span> - <span class="sv-lane-state">'
        f'<span class="sv-done">finished</span></span></div>'
        f'<div class="sv-tokens"><span class="sv-prompt">{esc(trace.rows[0].prompt)}</span>'
        f"{''.join(token_span(e) for e in shown)}</div></div>"
    )


def race_html(
    method: Trace, baseline: Trace, max_seconds: float = 60.0, served: str = "", measured_at: float | None = None
) -> str:
    """Autoregressive and a method side by side, each MEASURED alone, sent once and replayed together by the
    browser (REPLAY_JS) with both clocks and the running speedup; at the end, whether the outputs agree."""
    end = max(method.wall_time, baseline.wall_time)
    pace = replay_pace(end, max_seconds)
    final = (
        (baseline.wall_time / baseline.new_tokens) / (method.wall_time / method.new_tokens)
        if method.new_tokens and baseline.new_tokens and method.wall_time
        else None
    )
    greedy = not method.params.get("temperature")
    if method.output_ids == baseline.output_ids:
        same = "outputs EQUAL token for token"
    elif greedy:
        same = "outputs DIFFER (greedy must be equal: see the Playground's stats)"
    else:
        same = "sampling: two different draws from the same distribution (both shown)"
    verdict = (
        f'<div class="sv-verdict sv-after" id="race-verdict">finished: {esc(method.method)} '
        f"{final:.2f}x the speed of autoregressive - {esc(same)}</div>"
        if final
        else ""
    )
    note = (
        '<div class="sv-note">Each run was MEASURED alone in the engine (two runs at once would share the CPU cores '
        "and distort both); the browser replays the two measured timelines together."
        + (f" {esc(served)}." if served else "")
        + "</div>"
    )
    speed = f"running speedup {final:.2f}x" if final else "running speedup -"
    when = f' data-measured-at="{measured_at:.3f}"' if measured_at else ""
    return (
        f'<div class="sv-replay sv-race-wrap" data-end="{end:.4f}" data-pace="{pace:.3f}"{when}>'
        f"{replay_bar('replay of both measured runs', end, pace)}"
        f'<div id="race-speed" data-sv-speedup="1">{esc(speed)}</div><div class="sv-race">'
        f"{lane_html('autoregressive', baseline, 'race-ar')}{lane_html(method.method, method, 'race-method')}"
        f"</div>{verdict}{note}</div>"
    )


# The replay, in the browser: a finished run's HTML (replay_html, race_html) holds every token with the time
# its run committed it (data-t); this reveals them at that pace, so a replay costs the server nothing.
# Gradio's pulsing border around a waiting output is switched off: in a browser on the server's own cores (a
# demo laptop, the timing script) its endless animation took CPU from the run being timed.
REPLAY_CSS = """
.sv-replay.sv-playing .sv-future { display: none; } .sv-replay.sv-playing .sv-after { visibility: hidden; }
.sv-replay-bar { display: flex; gap: .5rem; align-items: center; font-size: .85rem; margin-bottom: .3rem; }
.sv-replay-bar button { border: 1px solid #6b7280; border-radius: 4px; padding: 0 .5rem; background: #fff;
                        color: #111; }
.sv-queue { padding: .6rem; border: 1px dashed #6b7280; border-radius: 6px; color: #1f2937; }
.generating { animation: none !important; }
"""
REPLAY_JS = """
  const svPlay = (box) => {
    const end = parseFloat(box.dataset.end || "0"), pace = parseFloat(box.dataset.pace || "1");
    const toks = [...box.querySelectorAll(".sv-tok[data-t]")];
    const lanes = [...box.querySelectorAll(".sv-lane")];
    const clock = box.querySelector(".sv-clock"), speed = box.querySelector("[data-sv-speedup]");
    const start = performance.now();
    box.svRun = (box.svRun || 0) + 1;
    const run = box.svRun;
    box.classList.add("sv-playing");
    const frame = () => {
      if (box.svRun !== run || !box.isConnected) return;
      const t = Math.min(end, (performance.now() - start) / 1000 * pace);
      for (const el of toks) el.classList.toggle("sv-future", parseFloat(el.dataset.t) > t);
      if (clock) clock.textContent = t.toFixed(2) + " s";
      const rates = lanes.map((lane) => {
        const le = parseFloat(lane.dataset.end || "0"), lt = Math.min(t, le);
        const n = lane.querySelectorAll(".sv-tok:not(.sv-future)").length;
        lane.dataset.done = String(t >= le);
        const set = (sel, text) => { const el = lane.querySelector(sel); if (el) el.textContent = text; };
        set(".sv-lane-clock", lt.toFixed(2) + " s");
        set(".sv-lane-count", String(n));
        set(".sv-lane-rate", lt > 0 ? Math.round(n / lt) + " tokens/s" : "");
        const state = lane.querySelector(".sv-lane-state");
        if (state) state.innerHTML = t >= le ? '<span class="sv-done">finished</span>' : "running";
        return lt > 0 && n > 0 ? n / lt : 0;
      });
      if (speed && rates.length === 2 && t < end) {
        speed.textContent = rates[0] > 0 && rates[1] > 0 ? "running speedup " + (rates[1] / rates[0]).toFixed(2) + "x"
                                                         : "running speedup -";
      }
      if (t < end) { requestAnimationFrame(frame); return; }
      box.classList.remove("sv-playing");
      if (speed && speed.dataset.final) speed.textContent = speed.dataset.final;
    };
    if (speed && !speed.dataset.final) speed.dataset.final = speed.textContent;
    requestAnimationFrame(frame);
  };
  const svShowAll = (box) => {
    box.svRun = (box.svRun || 0) + 1;
    box.classList.remove("sv-playing");
    box.querySelectorAll(".sv-future").forEach((el) => el.classList.remove("sv-future"));
    const speed = box.querySelector("[data-sv-speedup]");
    if (speed && speed.dataset.final) speed.textContent = speed.dataset.final;
    box.querySelectorAll(".sv-lane").forEach((lane) => { lane.dataset.done = "true"; });
  };
  const svSeen = new WeakSet();
  const svScan = () => document.querySelectorAll(".sv-replay").forEach((box) => {
    if (!svSeen.has(box)) { svSeen.add(box); svPlay(box); }
  });
  new MutationObserver(svScan).observe(document.body, { childList: true, subtree: true });
  document.addEventListener("click", (e) => {
    const box = e.target.closest && e.target.closest(".sv-replay");
    if (!box) return;
    if (e.target.closest(".sv-replay-again")) svPlay(box);
    if (e.target.closest(".sv-replay-all")) svShowAll(box);
  });
  svScan();
"""


def bars_html(title: str, entries: list, decode, highlight: int | None, kind: str) -> str:
    """A top-k distribution as horizontal bars (token text escaped); the `highlight` id stands out."""
    if not entries:
        return (
            f'<div class="sv-dist" data-dist="{kind}"><h5>{esc(title)}</h5>'
            '<div class="sv-note">not recorded</div></div>'
        )
    rows = []
    for token_id, prob in entries:
        hl = " sv-hl" if token_id == highlight else ""
        label = decode(int(token_id)) if decode else f"#{token_id}"
        rows.append(
            f'<div class="sv-bar-row{hl}" data-token="{int(token_id)}">'
            f'<span class="sv-bar-label" title="id {int(token_id)}">'
            f'{visible(label)}</span><div class="sv-bar" style="width:{max(0.5, 100 * float(prob)):.1f}%"></div>'
            f"<span>{float(prob):.3f}</span></div>"
        )
    if highlight is not None and all(int(t) != highlight for t, _ in entries):  # the token itself, outside the top-k
        label = decode(int(highlight)) if decode else f"#{highlight}"
        rows.append(
            f'<div class="sv-bar-row sv-hl" data-token="{int(highlight)}"><span class="sv-bar-label">{visible(label)}'
            '</span><span class="sv-note">outside the top-k shown</span><span></span></div>'
        )
    return f'<div class="sv-dist" data-dist="{kind}"><h5>{esc(title)}</h5>{"".join(rows)}</div>'


UNTRIED = "not tried: the round ended at an earlier rejection"


def untried(event: Event) -> bool:
    """A draft after the round's first rejection (reject, info.cause "after_reject"): no rule judged it."""
    return event.kind == "reject" and event.info.get("cause") == "after_reject"


def untried_html(event: Event) -> str:
    """A draft the rule never reached. The target's p of it is shown only as what it is: the target's probability
    had the earlier drafts stood (its forward ran over the whole block), not a verdict."""
    stood = (
        f" Had the earlier drafts stood, the target would have given it p={event.p:.3g}." if event.p is not None else ""
    )
    return f'<div class="sv-rule" data-rule="untried"><b>{UNTRIED}</b>.{stood}</div>'


def rule_html(event: Event, decode) -> str:
    """The rule applied to one draft, with its numbers: greedy's argmax test or sampling's u vs min(1, p/q); a
    draft after the round's first rejection was never tried and says so."""
    if untried(event):
        return untried_html(event)
    info, verdict = event.info, ("accepted" if event.kind == "accept" else "rejected")
    if info.get("rule") == "argmax":
        top = (info.get("top_p") or [[None, None]])[0]
        best = decode(int(top[0])) if decode and top[0] is not None else f"#{top[0]}"
        return (
            f'<div class="sv-rule" data-rule="argmax">greedy rule: the target\'s argmax is <b>{visible(best)}</b>'
            f"{'' if top[1] is None else f' (p={float(top[1]):.3f})'}, the draft is <b>{visible(event.text)}</b> "
            f"(p={event.p:.3g}): {'equal' if event.kind == 'accept' else 'different'} -> <b>{verdict}</b></div>"
        )
    if "u" in info and "accept_prob" in info and event.source == "lookup":
        u, a = float(info["u"]), float(info["accept_prob"])
        return (
            '<div class="sv-rule" data-rule="copy">a copied draft is not sampled: '
            f"q = 1 at <b>{visible(event.text)}</b>"
            f" and 0 elsewhere, so it is accepted when u &lt; min(1, p/q) = p = <b>{a:.3f}</b>; drawn u = "
            f"<b>{u:.3f}</b> -> <b>{verdict}</b>. At a rejection the target draws from norm(max(0, p - q)): p "
            f"without the copied token, renormalised, so every token keeps probability p exactly."
            f'<div class="sv-unit" title="0 .. 1: green = accept zone, black = u"><div class="sv-accept-zone" '
            f'style="width:{100 * a:.1f}%"></div>'
            f'<div class="sv-u" style="left:calc({100 * u:.1f}% - 1px)"></div></div></div>'
        )
    if "u" in info and "accept_prob" in info:
        u, a = float(info["u"]), float(info["accept_prob"])
        return (
            f'<div class="sv-rule" data-rule="ratio">speculative sampling: accept when u &lt; min(1, p/q) = '
            f"min(1, {event.p:.3g} / {event.q:.3g}) = <b>{a:.3f}</b>; drawn u = <b>{u:.3f}</b> -> <b>{verdict}</b>"
            f'<div class="sv-unit" title="0 .. 1: green = accept zone, black = u"><div class="sv-accept-zone" '
            f'style="width:{100 * a:.1f}%"></div>'
            f'<div class="sv-u" style="left:calc({100 * u:.1f}% - 1px)"></div></div></div>'
        )
    return f'<div class="sv-rule">{verdict} (the rule\'s numbers were not recorded)</div>'


def explainer_html(trace: Trace, step: int, row: int = 0, decode=None) -> str:
    """One round as a lesson: every draft with the drafter's q and the target's p (top-k bars, the draft
    highlighted), the rule and its numbers, and at a rejection the distribution the correction came from."""
    events = [e for e in trace.events if e.row == row and e.step == step]
    if not events:
        return '<div class="sv-note">no such round</div>'
    before = [e for e in trace.events if e.row == row and e.kind in TOKEN_KINDS and e.step < step]
    context = "".join(token_span(e) for e in sorted(before, key=lambda e: e.position)[-24:])
    if any("node" in e.info for e in events if e.kind == "draft"):
        return tree_round_html(trace, step, events, context, decode)
    drafts = sorted((e for e in events if e.kind == "draft" and "branch" not in e.info), key=lambda e: e.depth)
    verdicts = {e.depth: e for e in events if e.kind in ("accept", "reject")}
    emitted = [e for e in events if e.kind in ("correct", "bonus", "emit")]
    rule = next((e.info.get("rule") for e in list(verdicts.values()) + emitted if e.info.get("rule")), None)
    rule_name = {"argmax": "greedy (argmax)", "ratio": "speculative sampling (ratio test)"}.get(
        rule, rule or "not recorded"
    )
    parts = [
        f"<h4>Round {step} - rule: {esc(rule_name)}</h4>",
        f'<div class="sv-tokens"><span class="sv-prompt">... </span>{context}</div>',
    ]
    plan = next((e.info["plan"] for e in events if e.kind == "verify" and "plan" in e.info), None)
    if plan:
        parts.append(plan_html(plan))
    if not drafts:
        parts.append('<div class="sv-note">no drafts this round: the target produced the token itself</div>')
    for d in drafts:
        v = verdicts.get(d.depth)
        fate = "none" if v is None else "accept" if v.kind == "accept" else "untried" if untried(v) else "reject"
        info = v.info if v is not None else {}
        p_title = "target p (top-k), had the earlier drafts stood" if fate == "untried" else "target p (top-k)"
        parts.append(
            f'<div class="sv-card sv-v-{fate}" data-depth="{d.depth}" data-verdict="{fate}">'
            f"<b>draft {d.depth + 1}</b>: {token_span(d)} from {esc(d.source)}"
            + (f", copied from token {int(d.info['copied_from'])} of the text" if "copied_from" in d.info else "")
            + (f" (q={d.q:.3g})" if d.q is not None else "")
            + '<div class="sv-dists">'
            + bars_html("drafter q (top-k)", info.get("top_q") or [], decode, d.token_id, "q")
            + bars_html(p_title, info.get("top_p") or [], decode, d.token_id, "p")
            + "</div>"
            + (rule_html(v, decode) if v is not None else '<div class="sv-note">not verified</div>')
            + "</div>"
        )
    copied = any(d.source == "lookup" for d in drafts)
    residual = (
        "drawn from p without the copied token, renormalised (norm(max(0, p - q)), q one-hot) (top-k)"
        if copied
        else "drawn from the residual norm(max(0, p - q)) (top-k)"
    )
    parts.extend(emitted_card(e, decode, residual) for e in emitted)
    for e in (e for e in events if e.kind == "early_exit"):
        parts.append(
            f'<div class="sv-note">early exit ({esc(str(e.info.get("reason", "")))}), confidence '
            f"{e.info.get('confidence', float('nan')):.3f}</div>"
        )
    return f'<div class="sv-step" id="step-explainer-body" data-rule="{esc(rule or "")}">{"".join(parts)}</div>'


def emitted_card(e: Event, decode, residual_title: str) -> str:
    """The token the target emitted this round (a correction, a bonus or a plain step) with the distribution it was
    drawn from: the residual at a sampling rejection (titled by the round's kind of draft), else p's top-k."""
    card = [
        f'<div class="sv-card" data-emitted="{esc(e.kind)}"><b>the target emits</b> {token_span(e)} '
        f"({esc(FATE_LABELS[e.kind])}" + (f", p={e.p:.3g}" if e.p is not None else "") + ")"
    ]
    if e.info.get("residual_top"):
        card.append(bars_html(residual_title, e.info["residual_top"], decode, e.token_id, "residual"))
    elif e.info.get("top_p"):
        card.append(bars_html("target p here (top-k)", e.info["top_p"], decode, e.token_id, "p"))
    return "".join(card) + "</div>"


TREE_DRAWN = 64  # nodes a round's tree draws at most (a summary says what is left out)
PLAN_SOURCES = {
    "lookup": "copy {k} token(s) from earlier in the text",
    "draft": "ask the drafter for up to {k} token(s)",
    "none": "no draft: one plain target step",
}


def plan_html(plan: dict) -> str:
    """Why this round drafted what it did (choose=yield: the best expected tokens per modeled cost so far)."""
    what = PLAN_SOURCES.get(plan.get("source"), "{source}").format(**plan)
    return (
        f'<div class="sv-note" data-plan="{esc(str(plan.get("source")))}">chosen for this round: {esc(what)}; '
        f"expected {float(plan.get('value', 0)):.2f} tokens per target step of modeled cost, the best option on "
        f"this run's verdicts so far (choose=yield)</div>"
    )


CAUSES = {
    "mismatch": "tried: not the target's argmax",
    "ratio": "tried: refused by the sibling rule",
    "sibling_accepted": "not tried: a sibling before it was taken",
    "after_reject": "not reached: its parent was not taken",
    "past_end": "taken after the output ended",
}


def tree_round_html(
    trace: Trace, step: int, events: list[Event], context: str, decode=None, limit: int = TREE_DRAWN
) -> str:
    """A token-tree round: the tree drawn as nested lists from the root (the last committed token), the accepted
    path highlighted, each node's q, p and verdict on hover and beside it; then the rule and the token the target
    emitted. Beyond `limit` nodes only the accepted path and the nodes nearest the root are drawn, with a count."""
    drafts = {e.info["node"]: e for e in events if e.kind == "draft"}
    verdicts = {e.info["node"]: e for e in events if e.kind in ("accept", "reject") and "node" in e.info}
    emitted = [e for e in events if e.kind in ("correct", "bonus")]
    children: dict[int, list[int]] = {}
    for node, d in sorted(drafts.items()):
        children.setdefault(int(d.info["parent"]), []).append(node)
    path = [n for n, v in verdicts.items() if v.kind == "accept"]
    drawn = set(path)  # the accepted path always; then level by level (so every drawn node's parent is drawn)
    for node in sorted(drafts, key=lambda n: (drafts[n].depth, n)):
        if len(drawn) >= limit:
            break
        drawn.add(node)
    rule = next((v.info.get("rule") for v in verdicts.values() if v.info.get("rule")), None) or next(
        (e.info.get("rule") for e in emitted), None
    )
    depth = max((d.depth for d in drafts.values()), default=-1) + 1
    leaves = sum(1 for n in drafts if n not in children)
    summary = (
        f"a tree of {len(drafts)} candidates, {depth} levels deep, {leaves} leaves; the accepted path is "
        f"{len(path)} long"
        + (
            f"; {len(drafts) - len(drawn)} nodes not drawn (the first {limit} by depth, and the accepted path, are)"
            if len(drawn) < len(drafts)
            else ""
        )
    )

    def node_html(node: int) -> str:
        d, v = drafts[node], verdicts.get(node)
        cause = v.info.get("cause", "") if v is not None else ""
        fate = (
            "accept"
            if v is not None and v.kind == "accept"
            else ("tried" if cause in ("mismatch", "ratio") else "other")
        )
        facts = [
            f"q={d.q:.3g}" if d.q is not None else "",
            f"p={v.p:.3g}" if v is not None and v.p is not None else "",
            "accepted" if fate == "accept" else CAUSES.get(cause, cause),
        ]
        if v is not None and "accept_prob" in v.info:
            facts.append(f"chance {float(v.info['accept_prob']):.3f}, u {float(v.info['u']):.3f}")
        text = " | ".join(f for f in facts if f)
        label = decode(d.token_id) if decode else (d.text or f"#{d.token_id}")
        kids = [c for c in children.get(node, []) if c in drawn]
        inner = f"<ul>{''.join(node_html(c) for c in kids)}</ul>" if kids else ""
        return (
            f'<li data-node="{node}" data-verdict="{fate}"><span class="sv-node sv-n-{fate}" title="{esc(text)}">'
            f'{visible(label)}</span><span class="sv-node-facts">{esc(text)}</span>{inner}</li>'
        )

    roots = [c for c in children.get(0, []) if c in drawn]
    rule_text = {
        "argmax": "greedy: at each node the child equal to the target's argmax is taken, if there is one",
        "sibling": "sampling, the sibling rule: at each node the children are tried in the drafter's order; "
        "child x is taken with the residual's probability of x, otherwise x is removed from the "
        "residual, which is renormalised, and the next child is tried; when none is taken the "
        "target's token is drawn from what is left. Every token keeps probability p exactly.",
    }
    parts = [
        f"<h4>Round {step} - a token tree - rule: {esc(rule or 'not recorded')}</h4>",
        f'<div class="sv-tokens"><span class="sv-prompt">... </span>{context}</div>',
        f'<div class="sv-note" data-tree-summary="1">{esc(summary)}</div>',
        f'<div class="sv-tree"><ul><li data-node="0">'
        f'<span class="sv-node">root (last committed token)</span><ul>{"".join(node_html(c) for c in roots)}</ul>'
        f"</li></ul></div>",
        f'<div class="sv-rule" data-rule="{esc(rule or "")}">{esc(rule_text.get(rule or "", ""))}</div>',
    ]
    parts.extend(
        emitted_card(e, decode, "drawn from p without the children tried, renormalised (top-k)") for e in emitted
    )
    return (
        f'<div class="sv-step" id="step-explainer-body" data-rule="{esc(rule or "")}" data-tree="1">'
        f"{''.join(parts)}</div>"
    )

"""The Step-through says what happened to each draft of a chain round: the first rejected draft was tried and
refused; the drafts after it were never tried (the round ended there), so they get no verdict of their own."""

from __future__ import annotations

import re

import pytest

from specviz.api import run
from specviz.engine.trace import Event, RowResult, Trace
from specviz.views.render import UNTRIED, explainer_html


def cards(html: str) -> dict[int, str]:
    """depth -> the HTML of that draft's card."""
    found = re.split(r'(?=<div class="sv-card sv-v-)', html)
    return {int(re.search(r'data-depth="(\d+)"', c).group(1)): c for c in found if 'data-depth="' in c}


def rejected_round(rule: str) -> Trace:
    """Four drafts: the first accepted, the second refused, the third and fourth after it (never tried)."""
    top = [[7, 0.363], [8, 0.2]]
    events = [Event("verify", step=0, source="target", t0=0.0, t1=0.1)]
    for d in range(4):
        events.append(Event("draft", step=0, token_id=8, text="n", q=0.5, depth=d, source="draft"))
    sampling = rule == "ratio"  # u < accept_prob = 0.4 accepts the first, u = 0.9 refuses the second
    events.append(
        Event(
            "accept",
            step=0,
            position=0,
            token_id=8,
            text="n",
            p=0.363,
            q=0.5,
            depth=0,
            info={"rule": rule, "top_p": top, **({"u": 0.1, "accept_prob": 0.4} if sampling else {})},
        )
    )
    cause = "mismatch" if rule == "argmax" else "ratio"
    events.append(
        Event(
            "reject",
            step=0,
            token_id=8,
            text="n",
            p=0.2,
            q=0.5,
            depth=1,
            info={"rule": rule, "top_p": top, "cause": cause, **({"u": 0.9, "accept_prob": 0.4} if sampling else {})},
        )
    )
    for d in (2, 3):
        info = {"rule": rule, "top_p": top, "cause": "after_reject"}  # what the target said had draft 2 stood
        events.append(Event("reject", step=0, token_id=8, text="n", p=0.363, q=0.5, depth=d, info=info))
    events.append(
        Event(
            "correct", step=0, position=1, token_id=7, text="m", p=0.363, depth=1, source="target", info={"rule": rule}
        )
    )
    row = RowResult(prompt="p", prompt_ids=[1], output_ids=[8, 7], text="nm", finish_reason="length")
    return Trace(method="draft_model", params={}, rows=[row], events=events)


@pytest.mark.parametrize("rule", ["argmax", "ratio"])
def test_drafts_after_a_rejection_read_not_tried(rule):
    by_depth = cards(explainer_html(rejected_round(rule), 0))
    assert sorted(by_depth) == [0, 1, 2, 3]
    assert 'data-verdict="accept"' in by_depth[0] and "-> <b>accepted</b>" in by_depth[0]
    assert 'data-verdict="reject"' in by_depth[1] and "-> <b>rejected</b>" in by_depth[1]
    for d in (2, 3):
        card = by_depth[d]
        assert 'data-verdict="untried"' in card and UNTRIED in card
        assert "rejected" not in card and "different" not in card and "argmax is" not in card
        assert "Had the earlier drafts stood, the target would have given it p=0.363" in card
        assert "had the earlier drafts stood" in card  # the p bars are titled as the hypothetical they are


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_real_run_marks_every_draft_after_a_rejection_untried(embedded_pair, temperature):
    trace = run(
        "draft_model",
        embedded_pair,
        "def fibonacci(n):\n",
        max_new_tokens=48,
        gamma=5,
        temperature=temperature,
        dist_top_k=3,
    )
    after = [e for e in trace.events if e.kind == "reject" and e.info.get("cause") == "after_reject"]
    assert after, "no round rejected a draft before its last one"
    for step in sorted({e.step for e in after}):
        by_depth = cards(explainer_html(trace, step))
        untried = {e.depth for e in after if e.step == step}
        first = min(untried) - 1  # the refused draft
        assert 'data-verdict="reject"' in by_depth[first] and "<b>rejected</b>" in by_depth[first]
        for d in untried:
            assert 'data-verdict="untried"' in by_depth[d] and UNTRIED in by_depth[d]
            assert "rejected" not in by_depth[d]

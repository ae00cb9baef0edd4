"""Prompt lookup: the n-gram index finds the most recent earlier match and copies from it, every copied draft is
traced with where it came from, greedy output equals autoregressive, and sampling follows the target's law."""

from __future__ import annotations

import pytest
from helpers import assert_greedy_equal, assert_trace_invariants

from specviz.api import run
from specviz.methods.prompt_lookup import NgramIndex

REPEATING = "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n    return"


def indexed(tokens: list[int], low: int = 1, high: int = 3) -> NgramIndex:
    index = NgramIndex(low, high)
    index.extend(tokens)
    return index


def test_the_most_recent_earlier_match_of_the_longest_ngram_wins():
    index = indexed([1, 2, 3, 9, 1, 2, 4, 5, 1, 2])
    assert index.match() == (2, 5)  # "1 2" ended at 1 and at 5; the text's own ending is not a match
    drafts, sources, n = index.draft(3)
    assert (drafts, sources, n) == ([4, 5, 1], [6, 7, 8], 2)


def test_a_longer_match_is_preferred_to_a_more_recent_shorter_one():
    index = indexed([7, 1, 2, 3, 8, 2, 3, 5, 1, 2, 3])
    assert index.match() == (3, 3)  # "1 2 3" at 1..3 beats "2 3" at 5..6


def test_a_copy_runs_into_its_own_drafts_on_a_repeating_pattern():
    index = indexed([4, 5, 6, 4, 5, 6, 4])
    drafts, sources, _ = index.draft(5)
    assert drafts == [5, 6, 4, 5, 6]
    assert all(at < 7 for at in sources)


def test_no_match_no_draft_and_the_index_grows_with_the_text():
    index = indexed([1, 2, 3], low=2, high=2)
    assert index.draft(4) == ([], [], 0)
    index.extend([1, 2])
    assert index.draft(2) == ([3, 1], [2, 3], 2)


def test_min_ngram_above_max_ngram_is_refused(embedded_pair):
    with pytest.raises(ValueError, match=r"min_ngram \(3\) must not exceed max_ngram \(2\)"):
        run("prompt_lookup", embedded_pair, "def f(x):", max_new_tokens=4, min_ngram=3, max_ngram=2)
    with pytest.raises(
        ValueError,
        match=r"min_ngram \(2\) must not exceed max_ngram \(1\); min_ngram is 2 unless set: "
        r"set min_ngram=1 too",
    ):
        run("prompt_lookup", embedded_pair, "def f(x):", max_new_tokens=4, max_ngram=1)
    with pytest.raises(ValueError, match="gamma must be >= 1"):
        run("prompt_lookup", embedded_pair, "def f(x):", max_new_tokens=4, gamma=0)


@pytest.mark.parametrize(
    "name,params",
    [
        ("prompt_lookup", {}),
        ("prompt_lookup", {"gamma": 3, "min_ngram": 1, "max_ngram": 1}),
        ("prompt_lookup", {"gamma": 16, "min_ngram": 2, "max_ngram": 4}),
        ("hf_prompt_lookup", {}),
    ],
)
def test_embedded_pair_is_lossless(embedded_pair, name, params):
    reference = run("autoregressive", embedded_pair, REPEATING, max_new_tokens=48)
    trace = run(name, embedded_pair, REPEATING, max_new_tokens=48, **params)
    assert_greedy_equal(embedded_pair, trace, reference)
    assert_trace_invariants(trace)


def test_every_draft_says_where_it_was_copied_from(embedded_pair):
    trace = run("prompt_lookup", embedded_pair, REPEATING, max_new_tokens=48)
    prompt = trace.rows[0].prompt_ids
    drafts = [e for e in trace.events if e.kind == "draft"]
    assert drafts and all(e.source == "lookup" and e.q == 1.0 for e in drafts)
    accepted = [e for e in trace.events if e.kind == "accept"]
    assert accepted, "a repeating prompt gives accepted copies"
    for e in drafts:
        text = prompt + trace.output_ids
        assert text[e.info["copied_from"]] == e.token_id
        assert e.info["in_prompt"] == (e.info["copied_from"] < len(prompt))
        assert 1 <= e.info["ngram"] <= 3
    assert trace.meta["lookup"]["rounds_with_a_match"] > 0


def test_the_page_marks_copied_tokens_and_the_explainer_shows_the_copy_rule(embedded_pair):
    from specviz.views.render import explainer_html, tokens_html

    greedy = run("prompt_lookup", embedded_pair, REPEATING, max_new_tokens=32)
    tok = embedded_pair.tokenizer
    pieces = [tok.decode([i]) for i in greedy.rows[0].prompt_ids]
    html = tokens_html(greedy.rows[0].prompt, greedy.events, pieces=pieces)
    assert html.count('class="sv-ptok"') == len(pieces) and "sv-copied" in html and "data-copied-from=" in html
    assert "sv-copied" not in tokens_html(greedy.rows[0].prompt, greedy.events)  # no pieces: nothing to point at
    sampled = run("prompt_lookup", embedded_pair, REPEATING, max_new_tokens=32, temperature=0.7, seed=3)
    judged = [e for e in sampled.events if e.kind in ("accept", "reject") and e.source == "lookup" and "u" in e.info]
    assert judged, "a sampled run with copies judges them"
    lesson = explainer_html(sampled, judged[0].step, decode=tok.decode)
    assert 'data-rule="copy"' in lesson and "q = 1" in lesson and "copied from token" in lesson

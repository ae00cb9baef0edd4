"""Distributions in the trace (schema 2): every verified draft position carries the top-k of the
drafter's q and the target's p the rule used; sampling verdicts carry u and min(1, p/q), a correction
after a sampling rejection the residual's top-k. Version-1 traces (without them) still load."""

from __future__ import annotations

import json

import pytest
from helpers import make_agreeing_pair

from specviz.api import run, run_batch
from specviz.engine.trace import SCHEMA_VERSION, Trace

PROMPTS = ["def add(a, b):\n    return", "import os\n\nclass"]
VERDICT_KINDS = ("accept", "reject")
NEW_FIELDS = ("top_q", "top_p", "u", "accept_prob", "residual_top", "rule")


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    """A drafter that agrees with the target often, not always (accepts, rejects and bonuses all happen)."""
    return make_agreeing_pair(tiny_tokenizer, draft_noise=0.3)


def check_top(entries, k: int) -> None:
    assert 0 < len(entries) <= k
    probs = [prob for _, prob in entries]
    assert all(0.0 <= prob <= 1.0 for prob in probs) and probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-4
    assert len({token for token, _ in entries}) == len(entries)


def check_events(trace: Trace, k: int, sampling: bool) -> dict[str, int]:
    seen = {"accept": 0, "reject": 0, "correct": 0, "bonus": 0, "residual": 0}
    for e in trace.events:
        if e.kind in VERDICT_KINDS:
            seen[e.kind] += 1
            check_top(e.info["top_q"], k)
            check_top(e.info["top_p"], k)
            probs_p = dict(e.info["top_p"])
            if e.token_id in probs_p:  # the event's p is the probability its top-k list shows
                assert probs_p[e.token_id] == pytest.approx(e.p, abs=2e-6)
            probs_q = dict(e.info["top_q"])
            if e.token_id in probs_q:
                assert probs_q[e.token_id] == pytest.approx(e.q, abs=2e-6)
            if sampling:
                assert e.info["rule"] == "ratio"
                judged = e.kind == "accept" or e.info["cause"] == "ratio"
                if judged:
                    assert e.info["accept_prob"] == pytest.approx(min(1.0, e.p / e.q), rel=1e-4)
                    assert (e.info["u"] < e.info["accept_prob"]) == (e.kind == "accept")
                else:
                    assert "u" not in e.info
            else:
                assert e.info["rule"] == "argmax" and "u" not in e.info
                if e.kind == "accept" or e.info["cause"] == "mismatch":
                    best = e.info["top_p"][0][0]
                    assert (best == e.token_id) == (e.kind == "accept")
        elif e.kind in ("correct", "bonus"):
            seen[e.kind] += 1
            check_top(e.info["top_p"], k)
            if not sampling:
                assert e.info["top_p"][0][0] == e.token_id  # greedy emits the target's argmax
            if "residual_top" in e.info:
                seen["residual"] += 1
                assert sampling and e.kind == "correct"
                check_top(e.info["residual_top"], k)
                assert sum(prob for _, prob in e.info["residual_top"]) <= 1.0 + 1e-4
    return seen


CASES = [
    ("draft_model", {"gamma": 4}),
    ("draft_model", {"gamma": 3, "vocab_trim": 200}),
    ("draft_model", {"gamma": 3, "drafter_forward": "transformers", "gamma_schedule": "heuristic"}),
    ("kangaroo", {"gamma": 5, "eta": 0.0, "exit_layer": 2}),
    ("sorted", {"gamma": 4, "theta": 0.3}),
    ("mirror", {"gamma": 3, "exit_layer": 2, "kappa": 2}),
]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("name,params", CASES)
def test_every_drafting_method_records_the_distributions(pair, name, params, temperature):
    seen = {"accept": 0, "reject": 0, "correct": 0, "bonus": 0, "residual": 0}
    for prompt in PROMPTS:
        trace = run(name, pair, prompt, max_new_tokens=40, temperature=temperature, seed=3, dist_top_k=5, **params)
        assert trace.params["dist_top_k"] == 5
        for kind, count in check_events(trace, 5, temperature > 0).items():
            seen[kind] += count
    assert seen["accept"] and seen["reject"] and seen["correct"], seen
    if temperature > 0:
        assert seen["residual"], "no sampling rejection carried the residual's top-k"


@pytest.mark.parametrize("name", ["eqspec", "exspec"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batch_methods_record_the_distributions(pair, name, temperature):
    trace = run_batch(
        name, pair, PROMPTS + ["x = 1\n"], max_new_tokens=24, temperature=temperature, batch_size=2, gamma=3
    )
    seen = check_events(trace, 8, temperature > 0)
    assert seen["accept"] and (seen["reject"] or seen["bonus"])


def test_autoregressive_emits_carry_the_targets_top_k(pair):
    trace = run("autoregressive", pair, PROMPTS[0], max_new_tokens=10, dist_top_k=3)
    emits = [e for e in trace.events if e.kind == "emit"]
    assert emits and all(e.info["top_p"][0][0] == e.token_id and len(e.info["top_p"]) == 3 for e in emits)
    batch = run_batch("batch_autoregressive", pair, PROMPTS, max_new_tokens=6, dist_top_k=3)
    emits = [e for e in batch.events if e.kind == "emit"]
    assert len(emits) == 12 and all(e.info["top_p"][0][0] == e.token_id for e in emits)


def test_off_records_nothing_and_default_is_eight(pair):
    off = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0, dist_top_k=0)
    for e in off.events:
        assert not {"top_q", "top_p", "residual_top"} & set(e.info)
    on = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0)
    assert on.params["dist_top_k"] == 8 and on.output_ids == off.output_ids  # recording changes no draw
    assert max(len(e.info.get("top_p", [])) for e in on.events) == 8
    with pytest.raises(ValueError, match="dist_top_k must be <="):
        run("draft_model", pair, PROMPTS[0], dist_top_k=1000)


def test_traces_stay_bounded(pair):
    """The distributions add a bounded amount per token: at most 32 entries per list, a few lists per event."""
    trace = run("draft_model", pair, PROMPTS[0], max_new_tokens=64, temperature=1.0, dist_top_k=32)
    size = len(trace.to_json())
    assert size / max(trace.new_tokens, 1) < 12_000


def strip_to_v1(trace: Trace) -> str:
    d = trace.to_dict()
    d["schema"] = 1
    for e in d["events"]:
        for key in NEW_FIELDS:
            e["info"].pop(key, None)
    return json.dumps(d)


def test_version_1_and_2_traces_still_load(pair):
    trace = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0)
    assert trace.to_dict()["schema"] == SCHEMA_VERSION == 3
    as_v2 = trace.to_dict() | {"schema": 2}  # version 3 added tree fields only: a chain trace is a valid version 2
    assert Trace.from_dict(as_v2) == trace
    old = Trace.from_json(strip_to_v1(trace))
    assert old.output_ids == trace.output_ids and len(old.events) == len(trace.events)
    assert all("top_p" not in e.info for e in old.events)
    assert Trace.from_json(old.to_json()).to_dict()["schema"] == 3  # saved again: the current schema
    again = Trace.from_json(trace.to_json())
    assert again == trace
    d = trace.to_dict()
    d["schema"] = 4
    with pytest.raises(ValueError, match="not a specviz trace"):
        Trace.from_json(json.dumps(d))

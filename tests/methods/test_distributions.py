"""Distributions in the trace (schema 2): every verified draft position carries the top-k of the
drafter's q and the target's p the rule used; sampling verdicts carry u and min(1, p/q), a correction
after a sampling rejection the residual's top-k. Version-1 traces (without them) still load.

And the law itself: each drafting method's sampled output against the target's exact law (chi-square), in runs
long enough that a round drafts two tokens, so the rule at a second drafted or copied position, and the chooser
past its priors, are tested too."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_agreeing_pair, near_copy, peaky_llama, two_token_law, word_tokenizer

from specviz.analysis.exactness import exactness
from specviz.analysis.stats import chi_square
from specviz.api import run, run_batch
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.trace import SCHEMA_VERSION, Trace
from specviz.models.pair import ModelPair

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


# ----------------------------------------------------------------------------- the law past the first draft
LAW_PROMPT = "w1 w2"
# ends in "w4 w6", seen before: a lookup round copies "w5 w0", which the target (at LAW_TEMPERATURE) accepts with
# p = 0.64, then 0.54: a copy it nearly always accepted or always refused would leave the rule there untested
REPEAT_PROMPT = "w4 w6 w5 w0 w4 w6"
LAW_TEMPERATURE = 0.8
NEW_TOKENS = 3  # a round drafts at most (tokens left - 1): with 3 the first round drafts 2, so gamma = 2 matters
LAW_RUNS = 3000
TRACED_RUNS = 40  # runs of each case (the first seeds of the law's samples) whose traces are read


@pytest.fixture(scope="module")
def law_pairs() -> dict[str, ModelPair]:
    """Peaky random Llamas on an 8-id vocabulary (id 0 = EOS): "adapter" has a Kangaroo adapter and a sorted
    drafter that is a noisy copy of the target (so its first draft passes often enough to reach the second);
    "lens" has no adapter (Kangaroo's training-free logit lens, whose draft is cheap enough for the chooser)."""
    tok = word_tokenizer(7)
    vocab = len(tok)
    target = peaky_llama(vocab, layers=2, seed=21)

    def pair(**extras) -> ModelPair:
        return ModelPair(
            target=target,
            tokenizer=tok,
            draft=peaky_llama(vocab, layers=1, seed=22),
            target_name="t",
            draft_name="d",
            device=torch.device("cpu"),
            dtype=torch.float32,
            extras=extras,
        )

    torch.manual_seed(5)
    adapter = KangarooAdapter.for_target(target.config, 1).eval()
    return {
        "adapter": pair(
            kangaroo_adapter=adapter,
            sorted_drafter=near_copy(target, 0.3, seed=23),
            vocab_ranking=list(range(vocab)),
        ),
        "lens": pair(),
    }


KANGAROO = {"gamma": 2, "eta": 0.0, "exit_layer": 1}  # eta 0: no confidence stop (kangaroo-yield keeps 0.6)
LOOKUP = {"lookup": 1, "lookup_gamma": 2}  # the hybrid copies where the text's last token occurred before
YIELD = {"lookup": 2, "lookup_gamma": 2, "choose": "yield"}  # each round planned: a copy, the drafter or no draft
LAW_CASES = [
    pytest.param("draft_model", {"gamma": 2}, LAW_PROMPT, "adapter", id="draft_model"),
    pytest.param("draft_model", {"gamma": 2, "vocab_trim": 6}, LAW_PROMPT, "adapter", id="vocabtrim"),
    pytest.param("kangaroo", KANGAROO, LAW_PROMPT, "adapter", id="kangaroo"),
    pytest.param("kangaroo", KANGAROO, LAW_PROMPT, "lens", id="kangaroo-lens"),
    pytest.param("sorted", {"gamma": 2, "theta": 0.4}, LAW_PROMPT, "adapter", id="sorted"),
    pytest.param("mirror", {"gamma": 2, "exit_layer": 1}, LAW_PROMPT, "adapter", id="mirror"),
    pytest.param("prompt_lookup", {"gamma": 2}, REPEAT_PROMPT, "adapter", id="prompt_lookup"),
    pytest.param("draft_model", {"gamma": 2, **LOOKUP}, REPEAT_PROMPT, "adapter", id="draft_model-lookup"),
    pytest.param("kangaroo", {**KANGAROO, **LOOKUP}, REPEAT_PROMPT, "adapter", id="kangaroo-lookup"),
    pytest.param("draft_model", {"gamma": 2, **YIELD}, REPEAT_PROMPT, "adapter", id="draft_model-yield"),
    pytest.param("kangaroo", {"gamma": 2, "exit_layer": 1, **YIELD}, REPEAT_PROMPT, "lens", id="kangaroo-yield"),
]


def first_two(cell: str) -> tuple[int, ...]:
    """The two-token cell of an exactness cell key ("a b c", "a 0" or "0"): its first two ids, or (0,) at EOS."""
    ids = tuple(int(token) for token in cell.split())
    return ids[:1] if ids[0] == 0 else ids[:2]


def reached(trace: Trace) -> dict[str, int]:
    """What a trace shows of the rounds: rounds that drafted two tokens or more, verdicts of the rule at a round's
    second draft (accepted, or rejected by its uniform: not merely after an earlier rejection), and per source
    the rounds it drafted."""
    drafted: dict[int, list[str]] = {}
    for e in trace.events:
        if e.kind == "draft":
            drafted.setdefault(e.step, []).append(e.source)
    seen = {"two_draft_rounds": sum(len(sources) >= 2 for sources in drafted.values())}
    seen["second_judged"] = sum(e.kind in VERDICT_KINDS and e.depth == 1 and "u" in e.info for e in trace.events)
    for sources in drafted.values():
        for source in set(sources):
            seen[source] = seen.get(source, 0) + 1
    return seen


@pytest.mark.slow  # 3,000 sampled runs per case, memoized by the exactness lab (Mirror's are not: the longest)
@pytest.mark.parametrize("name,params,prompt,which", LAW_CASES)
def test_sampling_past_the_first_draft_preserves_the_target_distribution(law_pairs, name, params, prompt, which):
    """The joint law of the first two tokens of three-token runs (and of all three, rare cells pooled) against the
    target's exact law. The first round drafts (or copies) two tokens, so the second token is often the rule's
    verdict at a second draft: a rejection there draws from max(0, p - q) after an accepted first draft (a copy's
    q is 1 at the copy: accepted with p(x), otherwise drawn from p without x). After a prompt that ends in a
    repeat the first round copies; with `choose=yield` a round that follows a refused copy is planned from the
    run's own verdicts (not the priors), and the drafter is chosen in some runs."""
    pair = law_pairs[which]
    seen: dict[str, int] = {}
    for seed in range(TRACED_RUNS):
        trace = run(
            name,
            pair,
            prompt,
            max_new_tokens=NEW_TOKENS,
            temperature=LAW_TEMPERATURE,
            seed=seed,
            dist_top_k=0,
            **params,
        )
        for key, count in reached(trace).items():
            seen[key] = seen.get(key, 0) + count
    assert seen["two_draft_rounds"] >= TRACED_RUNS // 2, f"too few rounds drafted two tokens: {seen}"
    assert seen["second_judged"] >= TRACED_RUNS // 5, f"the rule rarely judged a second draft: {seen}"
    if prompt == REPEAT_PROMPT:
        assert seen.get("lookup", 0) >= TRACED_RUNS // 2, f"too few rounds copied: {seen}"
    if params.get("choose") == "yield":
        drafter = set(seen) - {"two_draft_rounds", "second_judged", "lookup"}
        assert drafter and seen.get("lookup"), f"the chooser did not choose both the copy and the drafter: {seen}"

    result = exactness(
        name, pair, prompt, n=LAW_RUNS, tokens=NEW_TOKENS, temperature=LAW_TEMPERATURE, reference=False, **params
    )
    assert result["counts"]["other"] == 0  # every continuation of 8 ids is enumerated (top = 16)
    law = two_token_law(pair.target, pair.tokenizer(prompt, add_special_tokens=False)["input_ids"], LAW_TEMPERATURE)
    counts = dict.fromkeys(law, 0)
    for cell, count in result["counts"].items():
        if count:
            counts[first_two(cell)] += count
    cells = list(law)
    pvalue = chi_square([counts[c] for c in cells], [law[c] for c in cells]).p_value
    assert pvalue > 1e-3, f"{name}: chi-square of the first two tokens p = {pvalue:.2e}"
    assert result["chi2_p"] > 1e-3, f"{name}: chi-square of all three tokens p = {result['chi2_p']:.2e}"

"""The per-round source choice (`choose=yield`): its counts, its plans, and that it changes how a run drafts, never
what it outputs."""

from __future__ import annotations

import pytest
import torch

from specviz import run
from specviz.methods.hybrid import PROBE_EVERY, Acceptance, SourceChooser
from specviz.models.pair import ModelPair
from specviz.views.render import explainer_html
from tests.helpers import assert_trace_invariants, peaky_llama, word_tokenizer


def test_acceptance_counts_the_first_draft_and_the_later_ones_judged():
    rate = Acceptance(first_hits=0, first_tries=0, more_hits=0, more_tries=0)
    rate.update(drafted=5, accepted=3)  # first passed; 2nd and 3rd passed, 4th judged and failed, 5th never judged
    assert (rate.first_hits, rate.first_tries, rate.more_hits, rate.more_tries) == (1, 1, 2, 3)
    rate.update(drafted=4, accepted=4)  # a clean sweep: 3 later drafts judged, all passed
    assert (rate.first_hits, rate.first_tries, rate.more_hits, rate.more_tries) == (2, 2, 5, 6)
    rate.update(drafted=3, accepted=0)
    assert (rate.first_hits, rate.first_tries, rate.more_hits, rate.more_tries) == (2, 3, 5, 6)
    rate.update(drafted=0, accepted=0)  # no draft: nothing learnt
    assert rate.first_tries == 3


def test_expected_accepted_drafts_follow_the_two_rates():
    rate = Acceptance(first_hits=1, first_tries=2, more_hits=3, more_tries=4)  # a1 = 0.5, a = 0.75
    assert rate.expected(0) == 0
    assert rate.expected(1) == pytest.approx(0.5)
    assert rate.expected(3) == pytest.approx(0.5 * (1 + 0.75 + 0.75**2))


def test_the_plan_weighs_tokens_against_modeled_cost():
    chooser = SourceChooser(width_cost=0.05, draft_cost=0.3)
    for _ in range(30):  # copies of 3-gram matches always pass, the drafter's first draft never does
        chooser.update(chooser.plan(copy_max=8, ngram=3, draft_max=4), 8, 8, 3)
        chooser.rates[("draft",)].update(4, 0)
    plan = chooser.plan(copy_max=8, ngram=3, draft_max=4)
    assert plan.source == "lookup" and plan.k == 8 and plan.value > 1
    # the same chooser, where only a 1-gram matched (never seen: its prior) and the drafter fails: the prior copy
    # is still worth a try; a lone drafter that always fails is not, and a plain step is planned instead
    assert chooser.plan(copy_max=8, ngram=1, draft_max=4).source == "lookup"
    chooser.idle["draft"] = 0  # (30 rounds without the drafter would make the next one its probe)
    assert chooser.plan(copy_max=0, draft_max=4).source is None


def test_a_costly_width_shortens_the_copy():
    cheap, dear = SourceChooser(width_cost=0.0, draft_cost=0.0), SourceChooser(width_cost=0.5, draft_cost=0.0)
    assert cheap.plan(copy_max=10, ngram=2).k == 10
    assert 1 <= dear.plan(copy_max=10, ngram=2).k < 10


def test_a_source_left_out_is_tried_again():
    chooser = SourceChooser(width_cost=0.05, draft_cost=0.5)
    chooser.rates[("draft",)] = Acceptance(first_hits=0, first_tries=20, more_hits=0, more_tries=20)
    plans = [chooser.plan(draft_max=4) for _ in range(2 * PROBE_EVERY + 2)]
    tried = [i for i, p in enumerate(plans) if p.source == "draft"]
    assert tried == [PROBE_EVERY, 2 * PROBE_EVERY + 1] and all(plans[i].k >= 1 for i in tried)


REPEATING = "def area(w, h):\n    return w * h\n\n\ndef area2(w, h):\n    return w * h\n\n\ndef area3(w, h):\n"


@pytest.mark.parametrize(
    "name,params",
    [
        ("prompt_lookup", {"choose": "yield"}),
        ("draft_model", {"choose": "yield"}),
        ("draft_model", {"lookup": 2, "choose": "yield"}),
        ("kangaroo", {"lookup": 2}),
        ("kangaroo", {"lookup": 2, "choose": "yield"}),
    ],
)
def test_every_round_records_its_plan_and_the_output_is_the_targets(embedded_pair, name, params):
    reference = run("autoregressive", embedded_pair, REPEATING, max_new_tokens=48)
    trace = run(name, embedded_pair, REPEATING, max_new_tokens=48, **params)
    assert trace.output_ids == reference.output_ids
    assert_trace_invariants(trace)
    rounds = [e for e in trace.events if e.kind == "verify"]
    drafts = [e for e in trace.events if e.kind == "draft"]
    if params.get("lookup"):
        assert any(e.source == "lookup" for e in drafts), "the repeating prompt is copied from"
        assert trace.meta["lookup"]["lookup_rounds"] > 0
    if params.get("choose") == "yield":
        assert all("plan" in e.info for e in rounds)
        for e in rounds:  # the plan is what the round did: its source drafted at most k tokens, or none drafted
            plan, mine = e.info["plan"], [d for d in drafts if d.step == e.step]
            assert len(mine) == e.info["drafts"] <= plan["k"]
            assert all((d.source == "lookup") == (plan["source"] == "lookup") for d in mine)
            assert plan["source"] != "none" or not mine
        assert trace.meta["chooser"]
        lesson = explainer_html(trace, rounds[0].step, decode=embedded_pair.tokenizer.decode)
        assert f'data-plan="{rounds[0].info["plan"]["source"]}"' in lesson and "chosen for this round" in lesson


@pytest.fixture(scope="module")
def narrow_drafter_pair():
    """A tokenizer of 12 ids and a target over all of them, with a drafter that reads every id but whose logits cover
    only ids 0..7 (its LM head cut to 8 rows): the pair's common vocabulary is 8, so a copy that starts with a higher
    id yields nothing."""
    tok = word_tokenizer(11)
    draft = peaky_llama(len(tok), layers=1, seed=32)
    head = torch.nn.Linear(draft.config.hidden_size, 8, bias=False)
    head.weight.data = draft.lm_head.weight.data[:8].clone()
    draft.lm_head = head
    return ModelPair(
        target=peaky_llama(len(tok), layers=2, seed=31),
        tokenizer=tok,
        draft=draft,
        target_name="t",
        draft_name="d",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def test_a_planned_copy_that_yields_nothing_is_planned_again_without_it(narrow_drafter_pair):
    """The text ends in "w1 w9 w1", whose earlier "w1" was followed by w9 (id 10, past the drafter's 8 ids): the
    lookup matches, but nothing can be copied. The round is planned without the copy: the drafter drafts (or no
    draft), the verify event says so, and its verdict counts for the drafter, not the lookup."""
    pair = narrow_drafter_pair
    prompt = "w1 w9 w1 w9 w1"
    reference = run("autoregressive", pair, prompt, max_new_tokens=2)
    trace = run("draft_model", pair, prompt, max_new_tokens=2, gamma=4, lookup=1, choose="yield")
    assert trace.output_ids == reference.output_ids
    assert_trace_invariants(trace)
    first = next(e for e in trace.events if e.kind == "verify" and e.step == 0)
    plan = first.info["plan"]
    assert plan["source"] in ("draft", "none"), plan
    assert "lookup" in plan.get("skipped", ""), plan  # the copy was dropped, and the trace says why
    drafts = [e for e in trace.events if e.kind == "draft" and e.step == 0]
    assert first.info["drafts"] == len(drafts) <= plan["k"]
    assert all(d.source == "draft" for d in drafts)
    rates = trace.meta["chooser"]
    assert not any(key.startswith("lookup") for key in rates), rates  # the lookup was never offered, nor credited
    if plan["source"] == "draft":
        assert rates["draft"] != {"first": 0.6, "more": 0.75}, rates  # the verdict moved the drafter's prior

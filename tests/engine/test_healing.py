"""Token healing at the prompt boundary (specviz.engine.healing): the backed-off token's text is extended by the
first generated token, every method decodes the same healed prompt (greedy equality holds with healing
on), batch rows heal one by one, and the sampled first token stays inside the allowed set."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_pair
from helpers import assert_greedy_equal, assert_rows_equal, assert_trace_invariants

from specviz.api import run, run_batch
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.healing import plan, token_texts
from specviz.methods import METHODS

PROMPT = "def add(a, b):\n"  # ends in a bare newline: BPE merges newline + indentation elsewhere
SINGLE = [name for name, cls in METHODS.items() if not cls.batch and name != "autoregressive"]
PARAMS = {
    "draft_model": {"gamma": 3},
    "hf_assisted": {"gamma": 3},
    "kangaroo": {"gamma": 4, "eta": 0.0, "exit_layer": 1},
    "sorted": {"gamma": 3},
    "mirror": {"gamma": 3, "exit_layer": 1, "kappa": 2},
}


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    pair = make_tiny_pair("llama", tiny_tokenizer, target_layers=3, draft_layers=1, seed=1)
    vocab = pair.target.get_output_embeddings().weight.shape[0]
    from conftest import make_tiny_model

    pair.extras = {
        "sorted_drafter": make_tiny_model("llama", vocab, layers=3, seed=11),
        "vocab_ranking": list(range(vocab - 1, -1, -1)),
    }
    torch.manual_seed(5)
    pair.extras["kangaroo_adapter"] = KangarooAdapter.for_target(pair.target.config, 1).eval()
    return pair


def test_plan_backs_off_a_newline_that_indentation_extends(tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    texts = token_texts(tiny_tokenizer)
    assert texts[ids[-1]] == "\n"
    healing = plan(tiny_tokenizer, ids, len(texts))
    assert healing is not None and healing.kept_ids == ids[:-1] and healing.removed_text == "\n"
    assert ids[-1] in healing.allowed and len(healing.allowed) > 1
    assert all(texts[i].startswith("\n") for i in healing.allowed)
    assert any(texts[i].startswith("\n ") for i in healing.allowed), "an indented newline token must be allowed"
    assert plan(tiny_tokenizer, ids[-1:], len(texts)) is None, "a one-token prompt has nothing to keep"


def test_healed_run_extends_the_removed_text_and_says_so(pair):
    trace = run("autoregressive", pair, PROMPT, max_new_tokens=12, heal_prompt=True)
    assert_trace_invariants(trace)
    healing = trace.meta["token_healing"][0]
    row = trace.rows[0]
    assert row.prompt == PROMPT[:-1] and healing["removed_text"] == "\n"
    assert row.text.startswith("\n") and (row.prompt + row.text).startswith(PROMPT)
    first = [e for e in trace.events if e.kind == "emit" and e.position == 0][0]
    assert first.step == -1 and first.source == "target (token healing)" and first.token_id == healing["healed_token"]
    plain = run("autoregressive", pair, PROMPT, max_new_tokens=12)
    assert "token_healing" not in plain.meta and plain.rows[0].prompt == PROMPT


@pytest.mark.parametrize("name", SINGLE)
def test_every_method_is_greedy_equal_with_healing(pair, name):
    reference = run("autoregressive", pair, PROMPT, max_new_tokens=20, heal_prompt=True)
    trace = run(name, pair, PROMPT, max_new_tokens=20, heal_prompt=True, **PARAMS.get(name, {}))
    assert trace.meta["token_healing"] == reference.meta["token_healing"]
    assert_greedy_equal(pair, trace, reference)
    assert_trace_invariants(trace)
    from specviz.analysis.metrics import summarize
    from specviz.views.render import rounds

    verifies = {e.step for e in trace.events if e.kind == "verify"}
    if verifies:  # the healing forward is a round of one token: tau is not inflated by it
        assert summarize(trace).rounds == len(verifies) + 1
    assert rounds(trace)[0] == 0, "the step explainer starts at the first verification round"


@pytest.mark.parametrize("name", [n for n, cls in METHODS.items() if cls.batch])
def test_batch_rows_heal_like_single_runs(pair, name):
    prompts = [PROMPT, "import os\n\nclass", "x = 1\n"]
    refs = [run("autoregressive", pair, p, max_new_tokens=10, heal_prompt=True) for p in prompts]
    trace = run_batch(name, pair, prompts, max_new_tokens=10, heal_prompt=True, batch_size=2)
    assert [r.prompt for r in trace.rows] == [r.rows[0].prompt for r in refs]
    assert_rows_equal(pair, trace, [r.output_ids for r in refs])
    assert_trace_invariants(trace)
    one = run_batch(name, pair, prompts, max_new_tokens=1, heal_prompt=True, batch_size=2)
    assert [r.output_ids for r in one.rows] == [r.output_ids[:1] for r in refs]


def test_single_token_budget_is_the_healed_token(pair):
    trace = run("draft_model", pair, PROMPT, max_new_tokens=1, heal_prompt=True)
    assert len(trace.output_ids) == 1 and trace.rows[0].finish_reason == "length"
    assert trace.output_ids[0] == trace.meta["token_healing"][0]["healed_token"]


def test_sampled_first_token_stays_in_the_allowed_set(pair, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    allowed = set(plan(tiny_tokenizer, ids, len(token_texts(tiny_tokenizer))).allowed)
    firsts = {
        run("draft_model", pair, PROMPT, max_new_tokens=2, heal_prompt=True, temperature=1.5, seed=s).output_ids[0]
        for s in range(12)
    }
    assert firsts <= allowed and len(firsts) > 1, "sampling draws among the allowed tokens, not only the argmax"


def test_embedded_target_continues_the_block_after_a_healed_newline(embedded_pair):
    """The bundled prompts end in a newline: healed, the embedded target's first token indents the body."""
    trace = run("autoregressive", embedded_pair, "def add(a, b):\n", max_new_tokens=4, heal_prompt=True)
    assert trace.rows[0].text.startswith("\n "), repr(trace.rows[0].text)

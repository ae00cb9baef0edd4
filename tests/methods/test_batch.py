"""Batch speculative decoding keeps output equivalence: every row of batch_autoregressive, EQSPEC and EXSPEC
equals single-sequence autoregressive decoding (or diverges only at a proven tie), while the naive mode
visibly breaks it. Realignment and grouping decisions are in the trace."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_pair
from helpers import (
    assert_rows_equal,
    assert_trace_invariants,
    damp_layers_after,
    near_copy,
    peaky_llama,
    row_divergences,
)

from specviz.api import run, run_batch
from specviz.models.pair import ModelPair

PROMPTS = [
    "def add(a, b):\n    return",
    "import os",
    "class Foo(object):\n    def __init__(self, x):\n        self.x = x",
    "x",
    "for i in range(10):\n    print(i)",
    "# a comment\n",
    "while True:",
    'return {"key": [1, 2, 3]}',
]
BATCH_METHODS = [
    ("batch_autoregressive", {}),
    ("eqspec", {"gamma": 3}),
    ("exspec", {"gamma": 3}),
    ("exspec", {"gamma": 2, "pool_factor": 1}),
]


def references(pair, prompts, n):
    return [run("autoregressive", pair, p, max_new_tokens=n).output_ids for p in prompts]


@pytest.fixture(scope="module")
def agreeing_pair(tiny_tokenizer):
    """Drafts accepted often but not always: rows accept different counts, so realignment really happens."""
    vocab = len(tiny_tokenizer)
    target = peaky_llama(vocab, layers=3, seed=3, hidden=32, init=0.2)
    damp_layers_after(target, 1, 0.1)
    return ModelPair(
        target=target,
        tokenizer=tiny_tokenizer,
        draft=near_copy(target, 0.1, seed=5),
        target_name="agree",
        draft_name="agree-draft",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def arch_pairs(tiny_tokenizer):
    return {
        arch: make_tiny_pair(arch, tiny_tokenizer, target_layers=2, draft_layers=1, seed=2)
        for arch in ("llama", "gpt2", "opt", "gpt_neox")
    }


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("name,params", BATCH_METHODS)
def test_rows_equal_autoregressive_on_an_agreeing_pair(agreeing_pair, name, params, batch_size):
    refs = references(agreeing_pair, PROMPTS, 24)
    trace = run_batch(name, agreeing_pair, PROMPTS, max_new_tokens=24, batch_size=batch_size, **params)
    assert_rows_equal(agreeing_pair, trace, refs)
    assert_trace_invariants(trace)
    assert trace.meta["batch_size"] == batch_size and not trace.meta["naive"]
    if name == "eqspec" and batch_size > 1:
        realigns = [e for e in trace.events if e.kind == "realign"]
        assert realigns and any(e.info["shift"] > 0 for e in realigns), "rows never accepted different counts"
        assert {"accepted", "pad_added", "pad_removed", "cache_moved", "shift"} <= set(realigns[0].info)
        assert all(e.t1 >= e.t0 for e in realigns)
    if name == "exspec":
        schedules = [e for e in trace.events if e.kind == "schedule"]
        assert schedules and all("same_length" in e.info and "group" in e.info for e in schedules)
        assert trace.meta["same_length_rounds"] + trace.meta["realigned_rounds"] == trace.meta["rounds"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_rows_equal_autoregressive_across_architectures(arch_pairs, arch, batch_size):
    pair = arch_pairs[arch]
    refs = references(pair, PROMPTS, 16)
    for name, params in BATCH_METHODS[:3]:
        trace = run_batch(name, pair, PROMPTS, max_new_tokens=16, batch_size=batch_size, **params)
        assert_rows_equal(pair, trace, refs)
        assert_trace_invariants(trace)


def test_naive_mode_breaks_equivalence_beyond_ties(agreeing_pair, arch_pairs):
    """The check above can tell right from wrong: skipping the position realignment changes outputs."""
    broken = []
    for pair in (agreeing_pair, arch_pairs["gpt2"]):
        refs = references(pair, PROMPTS, 24)
        for name in ("eqspec", "batch_autoregressive"):
            trace = run_batch(
                name,
                pair,
                PROMPTS,
                max_new_tokens=24,
                batch_size=8,
                realign="naive",
                **({"gamma": 3} if name == "eqspec" else {}),
            )
            assert trace.meta["naive"] and trace.meta["realign_mode"] == "naive"
            broken += [d for d in row_divergences(pair, trace, refs) if d[2] >= 1e-3]
    assert broken, "naive realignment produced no non-tie divergence: the equivalence test could not catch the bug"


def test_embedded_pair_batches_are_equivalent(embedded_pair):
    prompts = ["def fibonacci(n):\n", "import os\n\n\ndef list_files(path):\n", "class Stack:\n", "x = ["]
    refs = references(embedded_pair, prompts, 32)
    for name, params in BATCH_METHODS[:3]:
        trace = run_batch(name, embedded_pair, prompts, max_new_tokens=32, batch_size=3, **params)
        assert_rows_equal(embedded_pair, trace, refs)
        assert_trace_invariants(trace)


def test_rows_stop_on_their_own_eos(agreeing_pair):
    refs = references(agreeing_pair, PROMPTS, 24)
    eos = refs[0][6]  # a token row 0 emits: rows that emit it stop there, others run to the limit
    target = agreeing_pair.target
    saved = target.generation_config.eos_token_id
    target.generation_config.eos_token_id = eos
    try:
        refs = references(agreeing_pair, PROMPTS, 24)
        for name, params in BATCH_METHODS[:3]:
            trace = run_batch(name, agreeing_pair, PROMPTS, max_new_tokens=24, batch_size=4, **params)
            assert_rows_equal(agreeing_pair, trace, refs)
            reasons = {r.finish_reason for r in trace.rows}
            assert "eos" in reasons and "length" in reasons, reasons
            stops = {eos, agreeing_pair.tokenizer.eos_token_id}
            assert all(r.output_ids[-1] in stops for r in trace.rows if r.finish_reason == "eos")
    finally:
        target.generation_config.eos_token_id = saved


def test_sampled_batches_are_reproducible_by_seed(agreeing_pair):
    a = run_batch("eqspec", agreeing_pair, PROMPTS[:4], max_new_tokens=12, batch_size=4, temperature=1.0, seed=3)
    b = run_batch("eqspec", agreeing_pair, PROMPTS[:4], max_new_tokens=12, batch_size=4, temperature=1.0, seed=3)
    assert [r.output_ids for r in a.rows] == [r.output_ids for r in b.rows]
    assert_trace_invariants(a)


def test_batch_sampling_keeps_the_target_distribution():
    """First sampled token of every row of an EQSPEC batch follows the target's law (chi-square)."""
    from helpers import word_tokenizer

    from specviz.analysis.stats import chi_square

    tok = word_tokenizer(7)
    vocab = len(tok)
    target, draft = peaky_llama(vocab, 2, seed=21), peaky_llama(vocab, 1, seed=22)
    pair = ModelPair(
        target=target,
        tokenizer=tok,
        draft=draft,
        target_name="t",
        draft_name="d",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    prompt = "w1 w2"
    with torch.no_grad():
        law = torch.softmax(
            target(torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])).logits[0, -1].double() / 0.8, -1
        )
    counts = torch.zeros(vocab)
    for seed in range(250):
        trace = run_batch(
            "eqspec", pair, [prompt] * 8, max_new_tokens=1, batch_size=8, gamma=2, temperature=0.8, seed=seed
        )
        for row in trace.rows:
            counts[row.output_ids[0]] += 1
    assert chi_square(counts.tolist(), law.double().tolist()).p_value > 1e-3


def test_batch_cancel_returns_partial_rows(agreeing_pair):
    import threading

    cancel = threading.Event()
    cancel.set()
    trace = run_batch("eqspec", agreeing_pair, PROMPTS[:3], max_new_tokens=20, batch_size=3, cancel=cancel)
    assert all(r.finish_reason == "cancelled" for r in trace.rows)
    assert_trace_invariants(trace)

"""Every registered single-sequence method is lossless: greedy output equals autoregressive decoding
token for token (or diverges only at a proven numerical tie), on random tiny models of several
architectures and on the embedded pair; sampled output follows the target's distribution."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_tiny_model, make_tiny_pair
from helpers import (
    assert_greedy_equal,
    assert_trace_invariants,
    make_agreeing_pair,
)

import specviz.engine.decoder as engine
from specviz.api import run
from specviz.engine.adapter import KangarooAdapter
from specviz.methods import METHODS
from specviz.models.pair import ModelPair

SPLIT_ARCHS = {
    "llama",
    "qwen2",
    "mistral",
}  # layers take rotary embeddings from the model: Kangaroo/Mirror can split them
SLIDING_ARCHS = {"mistral"}  # the tiny Mistral has sliding-window layers: a token tree is refused with a message
SINGLE = [name for name, cls in METHODS.items() if not cls.batch and name != "autoregressive"]
PROMPTS = ["def add(a, b):\n    return", "import os\n\nclass"]


@pytest.fixture(autouse=True)
def cache_checks(monkeypatch):
    monkeypatch.setattr(engine, "CHECKS", True)  # every feed/rollback asserts the cache length


def with_extras(pair: ModelPair, arch: str) -> ModelPair:
    vocab = pair.target.get_output_embeddings().weight.shape[0]
    pair.extras = {
        "sorted_drafter": make_tiny_model("llama", vocab, layers=3, seed=11),
        "vocab_ranking": list(range(vocab - 1, -1, -1)),
    }
    if arch in SPLIT_ARCHS:
        torch.manual_seed(5)
        pair.extras["kangaroo_adapter"] = KangarooAdapter.for_target(pair.target.config, 1).eval()
    return pair


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    return {
        arch: with_extras(make_tiny_pair(arch, tiny_tokenizer, target_layers=3, draft_layers=1, seed=1), arch)
        for arch in ARCHS
    }


def method_params(name: str) -> list[dict]:
    return {
        "draft_model": [
            {"gamma": 1},
            {"gamma": 4},
            {"gamma": 3, "gamma_schedule": "heuristic"},
            {"gamma": 3, "vocab_trim": 100},
            {"gamma": 4, "drafter_forward": "transformers"},
            {"gamma": 3, "vocab_trim": 100, "drafter_forward": "transformers"},
            {"gamma": 6, "eta": 0.5},
            {"gamma": 3, "eta": 0.5, "gamma_schedule": "heuristic", "vocab_trim": 100},
            {"gamma": 3, "lookup": 1},
            {"gamma": 2, "lookup": 2, "lookup_gamma": 6, "vocab_trim": 100},
            {"gamma": 4, "lookup": 1, "choose": "yield"},
            {"gamma": 4, "choose": "yield", "width_cost": 0.3},
        ],
        "prompt_lookup": [{}, {"gamma": 3, "min_ngram": 1, "max_ngram": 2}, {"choose": "yield", "width_cost": 0.2}],
        "hf_assisted": [{"gamma": 3}],
        "tree": [
            {},
            {"nodes": 5, "depth": 3, "branch": 2},
            {"nodes": 1, "depth": 1, "branch": 1},
            {"nodes": 10, "depth": 5, "branch": 3, "drafter_forward": "transformers"},
        ],
        "kangaroo": [
            {"gamma": 4, "eta": 0.0, "exit_layer": 1},
            {"gamma": 6, "eta": 0.6, "exit_layer": 1},
            {"gamma": 3, "exit_layer": 1, "vocab_trim": 100},
            {"gamma": 4, "exit_layer": 1, "lookup": 1},
            {"gamma": 4, "exit_layer": 1, "lookup": 1, "choose": "yield"},
        ],
        "sorted": [{"gamma": 4}, {"gamma": 3, "sub_model": 1}, {"gamma": 4, "theta": 0.01}],
        "mirror": [
            {"gamma": 3, "exit_layer": 1, "kappa": 2},
            {"gamma": 2, "exit_layer": 2, "kappa": 3, "parallel": False},
        ],
    }.get(name, [{}])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SINGLE)
def test_greedy_equals_autoregressive(pairs, arch, name):
    pair = pairs[arch]
    for prompt in PROMPTS:
        reference = run("autoregressive", pair, prompt, max_new_tokens=24)
        assert_trace_invariants(reference)
        for params in method_params(name):
            if name in ("kangaroo", "mirror") and arch not in SPLIT_ARCHS:
                with pytest.raises(ValueError, match="cannot be split by layer"):
                    run(name, pair, prompt, max_new_tokens=24, **params)
                continue
            if name == "tree" and arch in SLIDING_ARCHS:
                with pytest.raises(ValueError, match="sliding-window layers"):
                    run(name, pair, prompt, max_new_tokens=24, **params)
                continue
            trace = run(name, pair, prompt, max_new_tokens=24, **params)
            assert_greedy_equal(pair, trace, reference)
            assert_trace_invariants(trace)


@pytest.fixture(scope="module")
def agreeing_pair(tiny_tokenizer):
    return make_agreeing_pair(tiny_tokenizer)


@pytest.mark.parametrize(
    "name,params",
    [
        ("draft_model", {"gamma": 4}),
        ("kangaroo", {"gamma": 5, "eta": 0.0, "exit_layer": 2}),
        ("kangaroo", {"gamma": 5, "eta": 0.5, "exit_layer": 2}),
        ("sorted", {"gamma": 4, "theta": 0.3}),
        ("mirror", {"gamma": 3, "exit_layer": 2, "kappa": 2}),
    ],
)
def test_partial_acceptance_paths_stay_lossless(agreeing_pair, name, params):
    for prompt in PROMPTS:
        reference = run("autoregressive", agreeing_pair, prompt, max_new_tokens=40)
        trace = run(name, agreeing_pair, prompt, max_new_tokens=40, **params)
        assert_greedy_equal(agreeing_pair, trace, reference)
        assert_trace_invariants(trace)
        kinds = [e.kind for e in trace.events]
        assert kinds.count("accept") >= 5, (
            f"{name}: too few accepts to exercise the accept path ({kinds.count('accept')})"
        )
        assert "reject" in kinds or "bonus" in kinds
    if name == "mirror":
        fates = {e.info["fate"] for e in trace.events if e.kind == "branch"}
        assert fates, "mirror launched no branches"
        hits = trace.meta["mirror"]["hits"]
        reused = sum(1 for e in trace.events if e.kind == "branch" and e.info["fate"] == "reused")
        assert hits == reused
        # a reused branch's tokens are exactly the next round's drafts
        for e in trace.events:
            if e.kind == "branch" and e.info["fate"] == "reused":
                nxt = [d.token_id for d in trace.events if d.kind == "draft" and d.step == e.step + 1]
                assert nxt == e.info["tokens"][: len(nxt)] and nxt
                assert (
                    e.token_id == trace.output_ids[[t.position for t in trace.token_events() if t.step == e.step][-1]]
                )


def test_kangaroo_early_exit_events_carry_confidence(agreeing_pair):
    trace = run("kangaroo", agreeing_pair, PROMPTS[0], max_new_tokens=40, gamma=6, eta=0.9, exit_layer=2)
    exits = [e for e in trace.events if e.kind == "early_exit"]
    assert exits and all(e.info["confidence"] < 0.9 and e.info["reason"] == "confidence" for e in exits)
    none = run("kangaroo", agreeing_pair, PROMPTS[0], max_new_tokens=40, gamma=6, eta=0.0, exit_layer=2)
    assert not [e for e in none.events if e.kind == "early_exit"]


def test_draft_model_stops_drafting_under_eta(agreeing_pair):
    trace = run("draft_model", agreeing_pair, PROMPTS[0], max_new_tokens=40, gamma=6, eta=0.9)
    exits = [e for e in trace.events if e.kind == "early_exit"]
    assert exits and all(e.info["confidence"] < 0.9 and e.info["reason"] == "confidence" for e in exits)
    for e in exits:  # the unsure draft is the round's last one
        depths = [d.depth for d in trace.events if d.kind == "draft" and d.step == e.step]
        assert max(depths) == e.depth < 5
    none = run("draft_model", agreeing_pair, PROMPTS[0], max_new_tokens=40, gamma=6)
    assert not [e for e in none.events if e.kind == "early_exit"]
    assert trace.output_ids == none.output_ids


def test_sorted_sources_name_the_sub_model(agreeing_pair):
    trace = run("sorted", agreeing_pair, PROMPTS[0], max_new_tokens=30, gamma=4, theta=0.3)
    sources = {e.source for e in trace.events if e.kind == "draft"}
    assert sources <= {"sorted[:1]", "sorted[:2]", "sorted[:3]", "sorted[:4]"} and sources
    fixed = run("sorted", agreeing_pair, PROMPTS[0], max_new_tokens=30, gamma=4, sub_model=2)
    assert {e.source for e in fixed.events if e.kind == "draft"} == {"sorted[:2]"}


def test_sorted_lazy_fill_matches_a_full_forward(agreeing_pair):
    """Tokens that exited early get their deeper KV later: the drafter's deepest logits then equal a plain forward's."""
    from specviz.engine.decoder import Output
    from specviz.engine.trace import Recorder
    from specviz.engine.verify import Sampling
    from specviz.methods.base import RunContext
    from specviz.methods.sorted import SortedDrafter

    model = agreeing_pair.extras["sorted_drafter"]
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 64, 12, 8]])
    ctx = RunContext(
        pair=agreeing_pair,
        prompt_ids=ids,
        params={},
        sampling=Sampling(),
        generator=torch.Generator(),
        rec=Recorder(),
        out=Output(10, set(), 100),
        vocab=model.config.vocab_size,
    )
    drafter = SortedDrafter(ctx, model, theta=0.0, sub_model=0)  # theta 0: every token exits after layer 1
    drafter.prefill(ids[:, :3])
    for i in range(3, 8):
        drafter.draft_one(ids[:, i : i + 1])
    drafter.rollback(7)  # drop position 7 everywhere
    drafter.sub_model = drafter.depth  # now go all the way down: waiting states are filled lazily
    logits, k, _ = drafter.draft_one(ids[:, 7:9])
    assert k == drafter.depth
    expected = model(ids[:, :9]).logits[0, -1]
    assert torch.allclose(logits[0], expected, atol=1e-4)


def test_seeded_sampling_is_reproducible(pairs):
    pair = pairs["llama"]
    a = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0, seed=7)
    b = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0, seed=7)
    c = run("draft_model", pair, PROMPTS[0], max_new_tokens=20, temperature=1.0, seed=8)
    assert a.output_ids == b.output_ids
    assert a.output_ids != c.output_ids or len(a.output_ids) < 3


@pytest.mark.parametrize(
    "prompt,params,message",
    [
        ("", {}, "prompt is empty"),
        ("   ", {}, "prompt is empty"),
        ("x", {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ("x", {"max_new_tokens": 10**7}, "max_new_tokens must be <="),
        ("x", {"max_new_tokens": "many"}, "max_new_tokens must be int"),
        ("x", {"gamma": 0}, "gamma must be >= 1"),
        ("x", {"gamma": 99}, "gamma must be <= 16"),
        ("x", {"temperature": -1}, "temperature must be >= 0"),
        ("x", {"top_p": 0}, "top_p must be >="),
        ("x", {"gamma_schedule": "wild"}, "gamma_schedule must be one of"),
        ("x", {"bogus": 1}, "unknown parameter"),
    ],
)
def test_bad_input_gets_a_clear_message(pairs, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        run("draft_model", pairs["llama"], prompt, **params)


def test_method_specific_ranges(pairs):
    pair = pairs["llama"]
    with pytest.raises(ValueError, match="unknown method"):
        run("nope", pair, "x")
    with pytest.raises(ValueError, match="exit_layer must be below"):
        run("kangaroo", pair, "x", exit_layer=3)
    with pytest.raises(ValueError, match="eta must be <= 1"):
        run("kangaroo", pair, "x", eta=1.5)
    with pytest.raises(ValueError, match="trained on layer"):
        run("kangaroo", pair, "x", exit_layer=2)
    with pytest.raises(ValueError, match="sub_model must be 0"):
        run("sorted", pair, "x", sub_model=5)
    with pytest.raises(ValueError, match="vocab_trim=.* exceeds"):
        run("draft_model", pair, "x", vocab_trim=10**6)
    with pytest.raises(ValueError, match="kappa must be <= 8"):
        run("mirror", pair, "x", kappa=9)
    no_draft = ModelPair(
        target=pair.target,
        tokenizer=pair.tokenizer,
        draft=None,
        target_name="t",
        draft_name=None,
        device=pair.device,
        dtype=pair.dtype,
        extras={},
    )
    with pytest.raises(ValueError, match="needs a draft model"):
        run("draft_model", no_draft, "x")
    lens = run("kangaroo", no_draft, "x", exit_layer=1, max_new_tokens=4)  # no adapter: the logit lens, not an error
    assert lens.meta["kangaroo_drafter"] == "logit lens (no adapter)"
    with pytest.raises(ValueError, match="ranking"):
        run("kangaroo", no_draft, "x", exit_layer=1, vocab_trim=8)


def test_cancel_returns_a_partial_trace(pairs):
    import threading

    cancel = threading.Event()
    cancel.set()
    trace = run("draft_model", pairs["llama"], PROMPTS[0], max_new_tokens=50, cancel=cancel)
    assert trace.rows[0].finish_reason == "cancelled"
    assert len(trace.output_ids) < 50
    assert_trace_invariants(trace)


EMBEDDED_CASES = [
    ("draft_model", {"gamma": 4}),
    ("draft_model", {"gamma": 3, "vocab_trim": 2048}),
    ("kangaroo", {}),
    ("sorted", {}),
    ("sorted", {"sub_model": 1}),
    ("mirror", {}),
    ("hf_assisted", {"gamma": 4}),
    ("prompt_lookup", {}),
    ("hf_prompt_lookup", {}),
    ("draft_model", {"gamma": 4, "lookup": 2}),
    ("tree", {"nodes": 32, "depth": 8, "branch": 4}),
]  # the default tree: tests/methods/test_tree.py


@pytest.mark.parametrize("name,params", EMBEDDED_CASES)
def test_embedded_pair_is_lossless(embedded_pair, name, params):
    for prompt in ("def fibonacci(n):\n", "class Stack:\n    def __init__(self):\n"):
        reference = run("autoregressive", embedded_pair, prompt, max_new_tokens=48)
        trace = run(name, embedded_pair, prompt, max_new_tokens=48, **params)
        assert_greedy_equal(embedded_pair, trace, reference)
        assert_trace_invariants(trace)


def test_mirror_stats_read_from_the_trace(embedded_pair):
    from specviz.analysis.metrics import mirror_stats

    trace = run("mirror", embedded_pair, "def fibonacci(n):\n", max_new_tokens=40)
    stats = mirror_stats(trace)
    branches = [e for e in trace.events if e.kind == "branch"]
    assert branches and 0.0 <= stats["overlap"] <= 1.0 and 0.0 <= stats["branch_hit_rate"] <= 1.0
    reused_rounds = {e.step for e in branches if e.info["fate"] == "reused"}
    assert stats["branch_hit_rate"] == pytest.approx(len(reused_rounds) / len({e.step for e in branches}))
    if stats["branch_hit_rate"]:  # a reused branch saves its round's serial drafting in the modeled timeline
        assert stats["modeled_speedup_over_sd"] > 1.0
    assert (
        stats["modeled_speedup_over_ar"] > 0
        and mirror_stats(run("autoregressive", embedded_pair, "x", max_new_tokens=2)) == {}
    )


def test_leviathan_speedup_is_expected_tokens_over_round_cost():
    """(1 - a^(g+1)) / (1 - a) tokens a round over g drafts at c and one verify at v target steps (v 1:
    the paper's), all g + 1 tokens when every draft is accepted."""
    from specviz.speedup import leviathan_speedup

    tokens = 1 + 0.5 + 0.25 + 0.125 + 0.0625
    assert abs(leviathan_speedup(0.5, 4, 0.1) - tokens / 1.4) < 1e-12
    assert abs(leviathan_speedup(0.5, 4, 0.1, verify_cost=1.3) - tokens / 1.7) < 1e-12
    assert leviathan_speedup(1.0, 4, 0.2, verify_cost=1.3) == 5 / 2.1

"""The `tree` method: greedy output equal to autoregressive (with test_methods' architectures), its sampling exact
by the sibling rule (chi-square, including a prompt where the drafter's first choice is often refused and a later
sibling taken), the rule broken on purpose caught by the Exactness lab's test, and its events a well-formed tree."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_trace_invariants, peaky_llama, two_token_law, word_tokenizer

from specviz.analysis.exactness import exactness
from specviz.analysis.stats import chi_square
from specviz.api import run
from specviz.models.pair import ModelPair

TREE = {"nodes": 6, "depth": 2, "branch": 3}


@pytest.fixture(scope="module")
def peaky_pair():
    tok = word_tokenizer(7)  # 8 ids, id 0 = EOS
    vocab = len(tok)
    return ModelPair(
        target=peaky_llama(vocab, layers=2, seed=21),
        tokenizer=tok,
        draft=peaky_llama(vocab, layers=1, seed=22),
        target_name="t",
        draft_name="d",
        device=torch.device("cpu"),
        dtype=torch.float32,
        extras={},
    )


@pytest.mark.slow  # chi-square over 2,500 runs
def test_tree_sampling_preserves_the_target_distribution(peaky_pair):
    """Joint law of the first two tokens of three-token runs (so the first round's tree has two levels: a sibling
    is tried at the root and again below the accepted child) against the target's exact law. On this prompt the
    drafter's first choice at the root is refused in about half the runs and a later sibling taken in about half."""
    prompt, temperature, runs = "w1 w2", 0.8, 2500
    law = two_token_law(
        peaky_pair.target, peaky_pair.tokenizer(prompt, add_special_tokens=False)["input_ids"], temperature
    )
    counts = {cell: 0 for cell in law}
    first_refused = later_taken = deep = 0
    for seed in range(runs):
        trace = run("tree", peaky_pair, prompt, max_new_tokens=3, temperature=temperature, seed=seed, **TREE)
        out = trace.output_ids
        counts[tuple(out[:1]) if out[0] == 0 else tuple(out[:2])] += 1
        root = [e for e in trace.events if e.step == 0 and e.kind in ("accept", "reject") and e.info["parent"] == 0]
        first_refused += any(e.kind == "reject" and e.info["sibling"] == 0 and e.info["cause"] == "ratio" for e in root)
        later_taken += any(e.kind == "accept" and e.info["sibling"] > 0 for e in root)
        deep += any(e.kind == "accept" and e.step == 0 and e.depth == 1 for e in trace.events)
    assert first_refused > 0.3 * runs and later_taken > 0.3 * runs and deep > 0.1 * runs, (
        first_refused,
        later_taken,
        deep,
    )
    cells = list(law)
    pvalue = chi_square([counts[c] for c in cells], [law[c] for c in cells]).p_value
    assert pvalue > 1e-3, f"chi-square p = {pvalue:.2e}"


@pytest.mark.slow  # 1,000 sampled runs
def test_the_exactness_lab_catches_the_broken_sibling_rule(peaky_pair):
    """The Exactness lab's test can fail for a tree: drawing the correction from p itself (as if no sibling had
    been tried) over-weights the siblings, and the chi-square says so."""
    broken = exactness(
        "tree", peaky_pair, "w1 w2", n=1000, tokens=2, seed=0, broken=True, temperature=0.8, reference=False, **TREE
    )
    assert broken["broken"] and broken["chi2_p"] < 1e-3, broken


def test_events_form_a_tree_and_greedy_is_lossless(embedded_pair):
    prompt = "def fibonacci(n):\n"
    reference = run("autoregressive", embedded_pair, prompt, max_new_tokens=40)
    trace = run("tree", embedded_pair, prompt, max_new_tokens=40, nodes=12, depth=5, branch=3, dist_top_k=4)
    assert trace.output_ids == reference.output_ids
    assert_trace_invariants(trace)
    verifies = [e for e in trace.events if e.kind == "verify"]
    assert verifies and all(e.info["tree"] and e.info["tokens"] == e.info["drafts"] + 1 <= 13 for e in verifies)
    drafts = [e for e in trace.events if e.kind == "draft"]
    assert max(e.depth for e in drafts) <= 4 and any(e.info["sibling"] > 0 for e in drafts)
    judged = [e for e in trace.events if e.kind in ("accept", "reject")]
    assert all(e.p is not None and e.q is not None for e in judged)
    assert all(e.info["top_p"] for e in trace.events if e.kind in ("correct", "bonus"))
    assert trace.meta["tree"]["rounds"] == len(verifies)


@pytest.mark.parametrize("params,name", [({"nodes": 0}, "nodes"), ({"depth": 17}, "depth"), ({"branch": 0}, "branch")])
def test_bad_tree_parameters_get_clear_messages(peaky_pair, params, name):
    with pytest.raises(ValueError, match=name):
        run("tree", peaky_pair, "w1", **params)


def test_a_round_records_its_drafter_forwards(peaky_pair):
    """One drafter forward per level grown (the root's feed, then one per deeper level): with room for every node
    the count equals the tree's depth; a level the node budget cuts whole still counts."""
    ample = run("tree", peaky_pair, "w1 w2", max_new_tokens=12, nodes=64, depth=3, branch=2)
    rounds = [e.info for e in ample.events if e.kind == "verify"]
    assert rounds and all(info["forwards"] == info["depth"] for info in rounds)
    tight = run("tree", peaky_pair, "w1 w2", max_new_tokens=12, nodes=2, depth=4, branch=2)
    assert any(e.info["forwards"] > e.info["depth"] for e in tight.events if e.kind == "verify")

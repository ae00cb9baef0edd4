"""scripts/lookup_ceiling.py: lookup drafting replayed against a known output, each round priced by its width. The
replay's rounds are prompt_lookup's own (greedy equality makes them so), and a trie of every earlier match holds at
most its budget of nodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from specviz.api import run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lookup_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("lookup_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chain(ceiling, prompt: list[int]):
    return ceiling.chain_proposer(prompt, gamma=10, low=2, high=3)


def test_a_copied_continuation_is_one_round_priced_at_its_width(ceiling):
    costs = {1: 1.0, 2: 1.2, 11: 1.5, 16: 2.0}
    tau, after = ceiling.replay([1, 2, 3, 4, 5, 1, 2], [3, 4, 5, 1, 2, 3], chain(ceiling, [1, 2, 3, 4, 5, 1, 2]), costs)
    assert tau == 6.0 and after == pytest.approx(6 / (1.2 + 0.3 * 4 / 9))  # five copied (room for 5), all taken
    tau, after = ceiling.replay([1, 2, 3], [7, 8], chain(ceiling, [1, 2, 3]), costs)
    assert tau == 1.0 and after == 1.0  # no match: plain steps
    assert ceiling.cost_of(costs, 6) == pytest.approx(1.2 + 0.3 * 4 / 9)  # linear between measured widths
    assert ceiling.cost_of(costs, 20) == pytest.approx(2.0 + 0.1 * 4)  # beyond the widest: the last slope
    with pytest.raises(ValueError, match="neither hold nor bracket"):
        ceiling.cost_of({2: 1.2, 11: 1.5}, 1)


def test_the_trie_holds_every_match_within_its_budget(ceiling):
    text = [5, 1, 9, 5, 1, 8, 7, 5, 1]  # "5 1" occurred twice before: followed by 9 and by 8
    paths = ceiling.trie_drafts(text, budget=16, depth=3, low=2, high=2)
    assert paths == [[8, 7, 5], [9, 5, 1]]  # the most recent first
    small = ceiling.trie_drafts(text, budget=4, depth=3, low=2, high=2)
    assert sum(len(p) for p in small) == 4 and small[0] == [8, 7, 5]


def test_the_replayed_rounds_are_prompt_lookups_own(ceiling, embedded_pair):
    """On the embedded pair, prompt_lookup's real rounds accept what the replay says they accept."""
    prompt = "def area(w, h):\n    return w * h\n\n\ndef area(w, h):\n    return"
    reference = run("autoregressive", embedded_pair, prompt, max_new_tokens=24)
    trace = run("prompt_lookup", embedded_pair, prompt, max_new_tokens=24)
    ids = reference.rows[0].prompt_ids
    rounds = sum(1 for e in trace.events if e.kind == "verify")
    tau, _ = ceiling.replay(ids, reference.output_ids, chain(ceiling, ids), {1: 1.0, 2: 1.0})
    assert rounds < len(reference.output_ids)  # copies were accepted: the replay has something to agree with
    assert tau == pytest.approx(len(reference.output_ids) / rounds)

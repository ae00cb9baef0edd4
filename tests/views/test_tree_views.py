"""What the page shows of a token tree: the Step-through draws a round's tree (accepted path highlighted, q, p and
the verdict per node, a display limit with a summary), the token view marks tokens from a non-first branch, and the
explorer's modeled tau of a tree reduces to Leviathan's chain at one child per node and grows with the branches."""

from __future__ import annotations

import re

import pytest

from specviz.api import run
from specviz.engine.trace import Trace
from specviz.speedup import tree_tau
from specviz.views.plots import explorer_point, speedup_explorer, tau_explorer
from specviz.views.render import explainer_html, tokens_html


@pytest.fixture(scope="module")
def tree_trace(embedded_pair):
    return run(
        "tree",
        embedded_pair,
        "def fibonacci(n):\n    if n < 2:\n",
        max_new_tokens=40,
        nodes=12,
        depth=5,
        branch=3,
        dist_top_k=4,
        heal_prompt=True,
    )


def test_step_through_draws_the_tree(tree_trace, embedded_pair):
    step = next(e.step for e in tree_trace.events if e.kind == "accept")
    html = explainer_html(tree_trace, step, decode=embedded_pair.tokenizer.decode)
    nodes = [e for e in tree_trace.events if e.kind == "draft" and e.step == step]
    assert 'data-tree="1"' in html and html.count('class="sv-node sv-n-') == len(nodes)
    accepted = [e.info["node"] for e in tree_trace.events if e.kind == "accept" and e.step == step]
    for node in accepted:
        assert re.search(rf'<li data-node="{node}" data-verdict="accept"><span class="sv-node sv-n-accept"', html)
    assert "q=" in html and "p=" in html and "the target emits" in html and f"a tree of {len(nodes)} candidates" in html
    small = explainer_html(tree_trace, step, decode=embedded_pair.tokenizer.decode)
    from specviz.views.render import tree_round_html  # the display limit

    events = [e for e in tree_trace.events if e.step == step]
    limited = tree_round_html(tree_trace, step, events, "", embedded_pair.tokenizer.decode, limit=3)
    assert limited.count('class="sv-node sv-n-') == max(3, len(accepted)) and "nodes not drawn" in limited
    assert small == html


def test_tokens_from_a_non_first_branch_are_marked():
    from specviz.engine.trace import Event

    first = Event("accept", step=0, position=0, token_id=5, text="a", info={"node": 1, "parent": 0, "sibling": 0})
    second = Event("accept", step=0, position=1, token_id=6, text="<b>", info={"node": 3, "parent": 1, "sibling": 2})
    html = tokens_html("x", [first, second])
    assert html.count("sv-sibling") == 1 and 'data-sibling="2"' in html and "&lt;b&gt;" in html
    assert "choice #3" in html


def test_tree_tau_model():
    for alpha in (0.3, 0.6, 0.9):
        for n in (1, 4, 8):
            chain = (1 - alpha ** (n + 1)) / (1 - alpha)
            assert tree_tau(alpha, n, 1, n) == pytest.approx(chain)
            assert tree_tau(alpha, n, 4, n) >= chain - 1e-12
    assert tree_tau(0.6, 16, 4, 6) > tree_tau(0.6, 16, 1, 16)  # at 0.6 branching beats a longer chain
    assert tree_tau(0.6, 16, 4, 1) == pytest.approx(1 + 1 - 0.4**4)  # one level: P(any of 4 choices)
    fig = tau_explorer(0.6, 4, 6, [{"method": "tree", "gamma": 16, "speedup": 1.1, "tau": 3.9}])
    assert [t.name for t in fig.data][:2] == ["MODELED chain: alpha 0.60", "MODELED tree: branch 4, depth 6"]
    assert fig.data[2].y[0] == 3.9


def test_the_chain_speedup_explorer_leaves_a_tree_off(tree_trace):
    """Its curve is Leviathan's chain against gamma: a tree's nodes are not gamma, so its point goes to the tau
    explorer only."""
    stored = Trace.from_json(tree_trace.to_json())  # as the Playground stores it
    stored.meta["against_autoregressive"] = {"speedup": 1.2, "alpha": 0.3, "c": 0.2, "tau": 2.5}
    stored.meta["against_autoregressive"]["mean_drafts_per_round"] = 11.0
    point = explorer_point(stored)
    assert point["tree"] and point["gamma"] == 11.0
    chain = {"method": "draft_model", "tree": False, "gamma": 4.0, "speedup": 1.1, "alpha": 0.6, "c": None, "tau": 2.0}
    measured = [t for t in speedup_explorer(0.6, 4, 0.2, 1.3, [point, chain]).data if t.name.startswith("MEASURED")]
    assert [t.name for t in measured] == ["MEASURED draft_model"] and "c — (no drafter forward)" in measured[
        0
    ].hovertemplate
    assert [t.name for t in tau_explorer(0.6, 3, 5, [point, chain]).data][2:] == [
        "MEASURED tree",
        "MEASURED draft_model",
    ]

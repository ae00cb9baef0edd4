"""What the page shows of a token tree: the Step-through draws a round's tree (accepted path highlighted, q, p and
the verdict per node, a display limit with a summary), the token view marks tokens from a non-first branch, and the
explorer's modeled tau of a tree reduces to Leviathan's chain at one child per node and grows with the branches."""

from __future__ import annotations

import re

import pytest

from specviz.api import run
from specviz.speedup import tree_tau
from specviz.views.plots import tau_explorer
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

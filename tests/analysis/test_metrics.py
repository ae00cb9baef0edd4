"""The metrics' definitions on traces counted by hand: a token tree's cost is its levels, its per-position
acceptance is by depth, and the chain-only figures are None for it; a chain's figures are the chain formulas;
copied drafts (prompt lookup) cost no drafter forward."""

from __future__ import annotations

import pytest

from specviz.analysis.metrics import compare, forward_spans, per_position_acceptance, position_counts, summarize
from specviz.engine.trace import Event, RowResult, Trace
from specviz.speedup import iid_alpha, iid_tokens, leviathan_speedup
from specviz.views import plots

STEP = 0.05  # seconds of one autoregressive target step in the baseline
FORWARD = 0.01  # one drafter forward: c = 0.2
VERIFY = 0.065  # one verification: v = 1.3


def trace_of(method: str, events: list[Event], tokens: int, wall: float, meta: dict | None = None) -> Trace:
    row = RowResult(prompt="p", prompt_ids=[1], output_ids=list(range(tokens)), finish_reason="length")
    return Trace(method=method, params={}, rows=[row], events=events, wall_time=wall, meta=meta or {})


def baseline(tokens: int = 6) -> Trace:
    """Autoregressive: one emit per token, each a target step of STEP seconds."""
    events = [
        Event("emit", step=i, position=i, token_id=i, source="target", t0=i * STEP, t1=(i + 1) * STEP)
        for i in range(tokens)
    ]
    return trace_of("autoregressive", events, tokens, tokens * STEP)


def tree_round(step: int, t: float, parents: list[int], path: list[int], tried: list[int]) -> tuple[list[Event], float]:
    """One tree round: node n (1-based) has parent parents[n - 1] (0 = the root); the nodes of one depth share the
    span of the drafter forward that proposed them; `path` is accepted, `tried` refused (the rest not tried); the
    target's token follows (a bonus at a leaf, else a correction). Returns the events and the round's end."""
    depth = {0: -1}
    for n, parent in enumerate(parents, start=1):
        depth[n] = depth[parent] + 1
    levels = max(depth.values()) + 1
    events = []
    for n, parent in enumerate(parents, start=1):
        t0 = t + depth[n] * FORWARD
        info = {"node": n, "parent": parent, "sibling": parents[:n].count(parent) - 1}
        events.append(
            Event(
                "draft", step=step, token_id=n, q=0.5, depth=depth[n], source="draft", t0=t0, t1=t0 + FORWARD, info=info
            )
        )
    v0 = t + levels * FORWARD
    events.append(
        Event(
            "verify", step=step, source="target", t0=v0, t1=v0 + VERIFY, info={"tree": True, "tokens": len(parents) + 1}
        )
    )
    position = 0
    for n, parent in enumerate(parents, start=1):
        info = {"node": n, "parent": parent, "rule": "argmax"}
        if n in path:
            events.append(Event("accept", step=step, position=position, token_id=n, depth=depth[n], info=info))
            position += 1
        else:
            cause = "mismatch" if n in tried else ("sibling_accepted" if parent in [0, *path] else "after_reject")
            events.append(Event("reject", step=step, token_id=n, depth=depth[n], info={**info, "cause": cause}))
    end = path[-1] if path else 0
    kind = "correct" if end in parents else "bonus"
    events.append(
        Event(kind, step=step, position=position, token_id=99, depth=len(path), source="target", info={"node": end})
    )
    return events, v0 + VERIFY


# The issue's round: 12 nodes over 5 levels (3 + 3 + 3 + 2 + 1), the path 1 -> 4 accepted, node 4's children all
# refused: tau = 3 (2 accepted + the correction), alpha = 2/12, c = 0.2, v = 1.3.
ISSUE_TREE = [0, 0, 0, 1, 1, 1, 4, 4, 4, 7, 7, 10]


def test_a_trees_modeled_speedup_counts_its_levels_not_its_nodes():
    events, end = tree_round(0, 0.0, ISSUE_TREE, path=[1, 4], tried=[7, 8, 9])
    tree = trace_of("tree", events, tokens=3, wall=end, meta={"draft_params": 10, "target_params": 100})
    m = compare(tree, baseline())
    assert m["tree"] and m["tau"] == 3 and m["alpha"] == pytest.approx(2 / 12)
    assert m["mean_drafts_per_round"] == 12 and m["forwards_per_round"] == 5
    assert m["c"] == pytest.approx(0.2) and m["v"] == pytest.approx(1.3)
    assert m["modeled_speedup"] == pytest.approx(3 / (5 * 0.2 + 1.3))  # 1.30x, not 3 / (12 * 0.2 + 1.3) = 0.81x
    assert m["mbsu"] == pytest.approx(3 / (0.1 * 5 + 1))  # a level reads the drafter's weights once
    for chain_only in ("alpha_iid", "theoretical_speedup", "efficiency"):
        assert m[chain_only] is None, chain_only


def test_a_trees_figures_over_rounds_and_its_acceptance_by_depth():
    first, end = tree_round(0, 0.0, ISSUE_TREE, path=[1, 4], tried=[7, 8, 9])
    # round 1: level 1 = nodes 1, 2; level 2 = node 3 under node 2; node 1 refused, 2 and 3 taken, a bonus
    second, end = tree_round(1, end, [0, 0, 2], path=[2, 3], tried=[1])
    tree = trace_of("tree", first + second, tokens=6, wall=end)
    s = summarize(tree)
    assert (s.rounds, s.drafted, s.accepted) == (2, 15, 4)
    assert s.tau == 3 and s.mean_drafts_per_round == 7.5 and s.forwards_per_round == (5 + 2) / 2
    assert len(forward_spans(tree)) == 7 and s.draft_step_s == pytest.approx(FORWARD)  # a span per forward, not node
    m = compare(tree, baseline())
    assert m["modeled_speedup"] == pytest.approx(3 / (3.5 * 0.2 + 1.3))
    # by depth: the share of rounds whose tree reached depth d in which the accepted path reached it
    assert position_counts(tree) == {0: (2, 2), 1: (2, 2), 2: (0, 1), 3: (0, 1), 4: (0, 1)}
    assert per_position_acceptance(tree) == {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    fig = plots.position_acceptance(tree)
    assert list(fig.data[0].y) == [1.0, 1.0, 0.0, 0.0, 0.0] and list(fig.data[0].customdata) == [2, 2, 1, 1, 1]
    assert "rounds whose tree reached this depth" in fig.data[0].hovertemplate
    table = plots.stats_table(tree, baseline()).set_index("metric")["value"]
    assert table["modeled speedup tau / (levels x c + v)"] == "1.50x"
    assert table["drafter forwards per round (levels)"] == "3.50"
    for label in (
        "alpha fitted from tau, i.i.d. chain model",
        "theoretical speedup (Leviathan's chain, from alpha, c)",
        "efficiency: measured / theoretical (chain)",
    ):
        assert table[label] == plots.NOT_SHOWN, label


def test_a_recorded_forward_count_is_used():
    """A level grown and then wholly cut by the node budget leaves no node: a round's verify info.forwards, where
    the method records it, counts that forward too."""
    events, end = tree_round(0, 0.0, ISSUE_TREE, path=[1, 4], tried=[7, 8, 9])
    next(e for e in events if e.kind == "verify").info["forwards"] = 6
    m = compare(trace_of("tree", events, tokens=3, wall=end), baseline())
    assert m["forwards_per_round"] == 6 and m["modeled_speedup"] == pytest.approx(3 / (6 * 0.2 + 1.3))


def chain_round(step: int, t: float, gamma: int, accepted: int, copied: bool = False) -> tuple[list[Event], float]:
    """gamma drafts one forward each (a copy: one lookup span for all), `accepted` of them taken, then the target's."""
    events = []
    for d in range(gamma):
        t0, t1 = (t, t + 0.0001) if copied else (t + d * FORWARD, t + (d + 1) * FORWARD)
        info = {"copied_from": d} if copied else {}
        events.append(
            Event(
                "draft",
                step=step,
                token_id=d,
                q=1.0 if copied else 0.5,
                depth=d,
                source="lookup" if copied else "draft",
                t0=t0,
                t1=t1,
                info=info,
            )
        )
    v0 = events[-1].t1
    events.append(Event("verify", step=step, source="target", t0=v0, t1=v0 + VERIFY))
    for d in range(gamma):
        if d < accepted:
            events.append(Event("accept", step=step, position=d, token_id=d, depth=d))
        else:
            events.append(
                Event(
                    "reject",
                    step=step,
                    token_id=d,
                    depth=d,
                    info={"cause": "mismatch" if d == accepted else "after_reject"},
                )
            )
    events.append(
        Event(
            "correct" if accepted < gamma else "bonus",
            step=step,
            position=accepted,
            token_id=99,
            depth=accepted,
            source="target",
        )
    )
    return events, v0 + VERIFY


def test_chain_figures_are_the_chain_formulas():
    first, end = chain_round(0, 0.0, 3, accepted=2)
    second, end = chain_round(1, end, 3, accepted=3)
    chain = trace_of("draft_model", first + second, tokens=7, wall=end, meta={"draft_params": 10, "target_params": 100})
    m = compare(chain, baseline(7))
    alpha, gamma, c, v, tau = 5 / 6, 3, 0.2, 1.3, 3.5
    assert not m["tree"] and m["alpha"] == pytest.approx(alpha) and m["tau"] == tau
    assert m["mean_drafts_per_round"] == gamma == m["forwards_per_round"]
    assert m["c"] == pytest.approx(c) and m["v"] == pytest.approx(v)
    assert m["theoretical_speedup"] == pytest.approx(leviathan_speedup(alpha, gamma, c))
    assert m["efficiency"] == pytest.approx(m["speedup"] / leviathan_speedup(alpha, gamma, c))
    assert m["modeled_speedup"] == pytest.approx(tau / (gamma * c + v))
    assert m["alpha_iid"] == pytest.approx(iid_alpha(tau, gamma))
    assert m["mbsu"] == pytest.approx(tau / (0.1 * gamma + 1))
    assert per_position_acceptance(chain) == {0: 1.0, 1: 1.0, 2: 0.5}
    fig = plots.position_acceptance(chain)
    assert list(fig.data[0].customdata) == [2, 2, 2] and "of %{customdata} drafts" in fig.data[0].hovertemplate


def test_copied_drafts_cost_no_drafter_forward():
    """Prompt lookup: the copy's lookup is not a drafter forward (c is None, not the lookup's microseconds per
    copied token); a hybrid's c is its drafter's forwards only, and its cost counts only the drafter's drafts."""
    first, end = chain_round(0, 0.0, 4, accepted=2, copied=True)
    second, end = chain_round(1, end, 4, accepted=4, copied=True)
    lookup = trace_of("prompt_lookup", first + second, tokens=8, wall=end)
    m = compare(lookup, baseline(8))
    tau, alpha, gamma = 4.0, 6 / 8, 4
    assert m["forwards_per_round"] == 0 and m["c"] is None
    assert m["modeled_speedup"] == pytest.approx(tau / 1.3)  # tau / v: drafting is free
    assert m["theoretical_speedup"] == pytest.approx(iid_tokens(alpha, gamma))  # Leviathan's chain at c = 0
    assert m["mbsu"] == tau  # no drafter weights read
    table = plots.stats_table(lookup, baseline(8)).set_index("metric")["value"]
    assert table["c: drafter forward / target step (measured)"] == plots.NOT_SHOWN

    drafted, end = chain_round(2, end, 3, accepted=1)
    hybrid = trace_of(
        "draft_model", first + second + drafted, tokens=10, wall=end, meta={"draft_params": 10, "target_params": 100}
    )
    m = compare(hybrid, baseline(10))
    assert m["c"] == pytest.approx(0.2)  # the copies' spans are not drafter forwards
    assert m["forwards_per_round"] == 1 and m["mean_drafts_per_round"] == 11 / 3
    assert m["modeled_speedup"] == pytest.approx(m["tau"] / (1 * 0.2 + 1.3))
    assert m["mbsu"] == pytest.approx(m["tau"] / (0.1 * 1 + 1))

"""Cost models of speculative decoding: Leviathan et al.'s expected speedup, MBSU, and Mirror-SD's
heterogeneous timeline. Pure arithmetic: it imports nothing from specviz, so every floor may use it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


def iid_alpha(tau: float, gamma: float) -> float | None:
    """The per-token acceptance a with (1 - a^(g+1)) / (1 - a) = tau (bisection; None if undefined)."""
    if gamma <= 0 or tau < 1:
        return None
    if tau >= gamma + 1:
        return 1.0

    def expected(a: float) -> float:
        return (
            sum(a**i for i in range(int(gamma) + 1)) if float(gamma).is_integer() else (1 - a ** (gamma + 1)) / (1 - a)
        )

    lo, hi = 0.0, 1.0 - 1e-12
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) < tau else (lo, mid)
    return (lo + hi) / 2


def tree_tau(alpha: float, nodes: int, branch: int, depth: int) -> float:
    """Expected tokens per round of the best token tree of `nodes` candidates (at most `branch` children per node,
    `depth` levels) under the i.i.d. model extended to siblings: the target takes the drafter's r-th choice at a
    node with probability alpha (1 - alpha)^(r - 1) (the chance it takes the next choice, given it refused the
    earlier ones, is alpha again). A round then yields 1 + the sum over the tree's nodes of the chance that the
    node's whole path is taken; the best tree holds the `nodes` nodes with the highest such chance (a child never
    beats its parent, so they do form a tree: Sequoia's construction, EAGLE-2's in expectation). With branch 1
    it is Leviathan's (1 - alpha^(n+1)) / (1 - alpha)."""
    if nodes <= 0 or depth <= 0 or branch <= 0 or alpha <= 0:
        return 1.0
    rank = [alpha * (1 - alpha) ** r for r in range(branch)]
    frontier = [(-rank[r], 1) for r in range(branch)]  # (-chance of the path, depth)
    heapq.heapify(frontier)
    tau = 1.0
    for _ in range(nodes):
        if not frontier:
            break
        chance, level = heapq.heappop(frontier)
        tau -= chance
        if level < depth:
            for r in range(branch):
                heapq.heappush(frontier, (chance * rank[r], level + 1))
    return tau


def iid_tokens(alpha: float, gamma: float) -> float:
    """(1 - alpha^(g+1)) / (1 - alpha): expected tokens of a chain round of g drafts, each accepted with
    probability alpha given the ones before it were (the bonus or correction included)."""
    return gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def leviathan_speedup(alpha: float, gamma: float, c: float, verify_cost: float = 1.0) -> float:
    """(1 - alpha^(g+1)) / ((1 - alpha)(g c + v)): expected speedup for i.i.d. acceptance alpha; v, the cost of
    one verification in target steps, is 1 in the paper (a measured one: compare's v)."""
    return iid_tokens(alpha, gamma) / (gamma * c + verify_cost)


def mbsu(tau: float, forwards: float, draft_params: int, target_params: int) -> float:
    """VocabTrim's memory-bound speed-up, MBSU = tau / (forwards * c_mem + 1) with c_mem = drafter
    weights read per forward / target weights read per forward: the speedup when every forward costs the
    bytes it reads (the GPU serving regime), whatever this CPU measures. Here tau counts tokens per round
    (bonus included), forwards the drafter forwards per round (a chain's drafts, gamma in the paper; a token
    tree's levels: a level's nodes go through the drafter in one forward, one read of its weights), and weights
    exclude input-embedding tables (a lookup reads one row) - see specviz.models.anatomy.weights_read_per_token."""
    return tau / (draft_params / target_params * forwards + 1)


@dataclass(frozen=True)
class HeterogeneousCosts:
    """The paper's setting, modeled: target on one accelerator, drafter on another (milliseconds)."""

    target_layer_ms: float = 0.5  # one target layer over a verification block
    draft_step_ms: float = 0.4  # one drafter forward (any number of branch rows: they run in parallel)
    comm_ms: float = 0.05  # sending the early-exit candidates across


def modeled_timeline(trace, layers: int, exit_layer: int, costs: HeterogeneousCosts) -> dict:
    """Re-time a Mirror-SD trace under `costs` (acceptance pattern as measured; timings MODELED).

    Per round: prefix(l_e) + max(suffix, comm + branch rollout) + serial drafting when the previous
    round's branch missed; against plain speculative decoding with the same drafts and acceptance:
    serial drafting + the whole target, per round."""
    gamma = trace.params["gamma"]
    rounds = sorted({e.step for e in trace.events if e.kind == "verify"})
    reused = {e.step + 1 for e in trace.events if e.kind == "branch" and e.info.get("fate") == "reused"}
    prefix = exit_layer * costs.target_layer_ms
    suffix = (layers - exit_layer) * costs.target_layer_ms
    branch = costs.comm_ms + gamma * costs.draft_step_ms
    t = t_sd = 0.0
    lanes = []
    for step in rounds:
        # every draft the round verified, also those a reused branch supplied (serial drafting would have paid them)
        drafts = sum(1 for e in trace.events if e.kind == "draft" and e.step == step)
        serial = 0.0 if step in reused else drafts * costs.draft_step_ms
        lanes.append(
            {
                "step": step,
                "draft": (t, t + serial),
                "prefix": (t + serial, t + serial + prefix),
                "suffix": (t + serial + prefix, t + serial + prefix + suffix),
                "branches": (t + serial + prefix, t + serial + prefix + branch),
            }
        )
        t += serial + prefix + max(suffix, branch)
        t_sd += drafts * costs.draft_step_ms + prefix + suffix
    t_ar = trace.new_tokens * layers * costs.target_layer_ms  # one full target pass per token
    return {
        "label": "modeled",
        "costs": costs.__dict__,
        "rounds": lanes,
        "mirror_ms": t,
        "speculative_ms": t_sd,
        "autoregressive_ms": t_ar,
        "modeled_speedup_over_sd": t_sd / t if t else None,
        "modeled_speedup_over_ar": t_ar / t if t else None,
    }

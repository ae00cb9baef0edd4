"""Summaries of Traces. Definitions live next to the code that computes them.

A chain round drafts gamma tokens one after another; a token tree (`tree`, info.tree on its verify events) drafts
a whole level of candidates per drafter forward and verifies all of them in one target forward. Where the two
differ, the definition says so:

- alpha (acceptance rate) = accepted drafts / drafted tokens (a tree: accepted nodes / nodes).
- tau (mean accepted tokens) = output tokens / verification rounds, the bonus or correction token
  included (1.00 for autoregressive decoding).
- gamma (`mean_drafts_per_round`) = drafted tokens / rounds (a tree: its nodes).
- drafter forwards per round (`forwards_per_round`) = what drafting costs, counted in drafter forwards: a chain
  makes one per draft, a copied draft (prompt lookup) none; a tree one per level grown, however wide the level.
- per-position acceptance: see `position_counts`.
- c (cost ratio) = median duration of one drafter forward / median autoregressive target step (the reference
  run's decode steps, first token excluded). None where no drafter forward was made (prompt lookup).
- v (verification cost) = median duration of one round's verification / one autoregressive target step. A tree's
  verify event spans its forward over nodes + 1 tokens, so for a tree v is the cost at the tree's width.
- speedup = tokens/s of the method / tokens/s of the autoregressive run of the same prompt, in
  the same process (the caller pairs them).
- modeled speedup = tau / (forwards c + v): the measured acceptance with the measured costs (chain: forwards =
  gamma; tree: forwards = levels; copies: forwards = 0, tau / v).
- theoretical speedup (Leviathan et al.) = (1 - alpha^(g+1)) / ((1 - alpha) (forwards c + 1)), g = mean drafts
  per round, alpha measured (copies only: forwards = 0, the paper's c = 0); efficiency = measured speedup /
  theoretical. CHAIN ONLY: the formula is the expected length of an accepted prefix of g i.i.d. drafts; a tree's
  siblings are not a prefix (None for a tree).
- alpha_iid = the i.i.d. acceptance that would give the measured tau: solves
  (1 - a^(g+1)) / (1 - a) = tau. Acceptance is not i.i.d. in practice, so it differs from alpha. CHAIN ONLY, as
  the theoretical speedup (None for a tree: `speedup.tree_tau` is the tree's own model).
- MBSU (VocabTrim's memory-bound speed-up) = tau / (c_params forwards + 1), c_params = drafter
  parameters (its LM head at the size used) / target parameters: every forward costs the weights it reads, so
  a tree's level costs one drafter read however many nodes it holds, and its verification one target read, as a
  chain's. Copies read no drafter weights: MBSU = tau for prompt lookup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median

from specviz.engine.trace import TOKEN_KINDS, Event, Trace, is_healed_token
from specviz.speedup import HeterogeneousCosts, iid_alpha, iid_tokens, mbsu, modeled_timeline


def _durations(trace: Trace, kind: str, min_step: int = -10) -> list[float]:
    return [e.t1 - e.t0 for e in trace.events if e.kind == kind and e.step >= min_step]


def target_step_cost(ar_trace: Trace) -> float | None:
    """Median seconds of one autoregressive target step (decode steps only, prefill excluded)."""
    spans = _durations(ar_trace, "emit", min_step=1)
    return median(spans) if spans else None


def is_tree(trace: Trace) -> bool:
    """A token-tree run: its verify events say so (info.tree, schema 3)."""
    return any(e.kind == "verify" and e.info.get("tree") for e in trace.events)


def _round_drafts(drafts: list[Event]) -> dict[tuple[int, int], list[Event]]:
    rounds: dict[tuple[int, int], list[Event]] = {}
    for e in drafts:
        rounds.setdefault((e.row, e.step), []).append(e)
    return rounds


def drafter_forwards(trace: Trace) -> int:
    """Drafter forwards spent drafting (prefill excluded): what a round's drafting costs, in forwards.

    Chain: one per drafted token a model made; a copied token (info.copied_from, prompt lookup) costs none.
    Tree: one per level grown: the root's forward proposes level 1, and each further forward feeds a level's
    expanded nodes together (one forward, a tree mask) and proposes the next level. A round counts its verify
    event's info.forwards where the method records it, else the levels of the verified tree (its deepest node's
    depth + 1), which misses a forward whose whole level was then cut by the node budget."""
    drafts = [e for e in trace.events if e.kind == "draft"]
    if not is_tree(trace):
        return sum(1 for e in drafts if "copied_from" not in e.info)
    recorded = {
        (e.row, e.step): e.info["forwards"] for e in trace.events if e.kind == "verify" and "forwards" in e.info
    }
    return sum(recorded.get(key, max(e.depth for e in nodes) + 1) for key, nodes in _round_drafts(drafts).items())


def forward_spans(trace: Trace) -> list[float]:
    """Seconds of each drafter forward seen in the events. Chain: one per drafted token, copies and Mirror's branch
    rollouts (run beside the target, not in series) left out. Tree: the nodes of one level share the span of the
    forward that proposed them, so a round's distinct spans are its forwards."""
    drafts = [e for e in trace.events if e.kind == "draft"]
    if is_tree(trace):
        return [t1 - t0 for _, _, t0, t1 in sorted({(e.row, e.step, e.t0, e.t1) for e in drafts})]
    return [e.t1 - e.t0 for e in drafts if "branch" not in e.info and "copied_from" not in e.info]


@dataclass
class RunStats:
    method: str
    new_tokens: int
    seconds: float
    tokens_per_s: float
    rounds: int  # verification rounds (decode steps for autoregressive)
    drafted: int
    accepted: int
    alpha: float | None
    tau: float | None  # None where rounds are not visible (hf_assisted)
    mean_drafts_per_round: float  # gamma: drafted tokens per round (a tree's nodes)
    forwards_per_round: float  # drafter forwards per round (`drafter_forwards`: a tree's levels)
    tree: bool  # a token tree: the chain-only figures of `compare` are None
    draft_step_s: float | None  # median seconds of one drafter forward (None: no forward, copies only)
    verify_s: float | None  # median seconds of one round's verification (all its parts)
    early_exits: int
    wasted_drafts: int  # drafted tokens that did not become output

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(trace: Trace) -> RunStats:
    drafts = [e for e in trace.events if e.kind == "draft"]
    accepts = sum(1 for e in trace.events if e.kind == "accept")
    verify_time: dict[tuple[int, int], float] = {}  # a round's verification may be split in parts (Mirror-SD)
    for e in trace.events:
        if e.kind == "verify":
            verify_time[(e.row, e.step)] = verify_time.get((e.row, e.step), 0.0) + (e.t1 - e.t0)
    tokens = sum(1 for e in trace.events if e.kind in TOKEN_KINDS)
    # token healing's first token (step -1) took one target forward of its own: a round of one token
    healed = sum(1 for e in trace.events if is_healed_token(e))
    rounds = (
        len(verify_time) + healed
        if verify_time
        else len({(e.row, e.step) for e in trace.events if e.kind in TOKEN_KINDS})
    )
    draft_spans = forward_spans(trace)
    verify_spans = list(verify_time.values())
    new_tokens = trace.new_tokens
    opaque = any(e.info.get("opaque") for e in trace.events if e.kind == "prefill")  # hf_assisted: no rounds seen
    return RunStats(
        method=trace.method,
        new_tokens=new_tokens,
        seconds=trace.wall_time,
        tokens_per_s=new_tokens / trace.wall_time if trace.wall_time > 0 else 0.0,
        rounds=rounds,
        drafted=len(drafts),
        accepted=accepts,
        alpha=accepts / len(drafts) if drafts else None,
        tau=None if opaque else (tokens / rounds if rounds else 0.0),
        mean_drafts_per_round=len(drafts) / rounds if rounds and drafts else 0.0,
        forwards_per_round=drafter_forwards(trace) / rounds if rounds and drafts else 0.0,
        tree=is_tree(trace),
        draft_step_s=median(draft_spans) if draft_spans else None,
        verify_s=median(verify_spans) if verify_spans else None,
        early_exits=sum(1 for e in trace.events if e.kind == "early_exit"),
        wasted_drafts=len(drafts) - accepts,
    )


def tokens_per_round(trace: Trace) -> list[int]:
    """Tokens emitted per verification round: accepted drafts + the correction or bonus (tau's samples)."""
    counts: dict[tuple[int, int], int] = {(e.row, e.step): 0 for e in trace.events if e.kind == "verify"}
    for e in trace.events:
        if e.kind in ("accept", "correct", "bonus") and (e.row, e.step) in counts:
            counts[(e.row, e.step)] += 1
    return list(counts.values())


def position_counts(trace: Trace) -> dict[int, tuple[int, int]]:
    """depth -> (accepted, offered): per-position acceptance is accepted / offered.

    Chain: offered = drafts at depth d, accepted = accepted drafts at depth d (a draft at depth d is accepted only
    if every draft before it was: the share of rounds drafting that deep whose accepted prefix reached it).
    Tree: the same share, by depth: offered = rounds whose tree holds a node at depth d, accepted = rounds whose
    accepted path reached depth d (at most one node per depth is accepted). Siblings are alternatives for one
    position, not positions: counting them as drafts would divide each depth by the tree's width. Of the two
    readings (the share reaching d, or accepted at d given d - 1 was reached) this one is kept because with one
    child per node it is exactly the chain's figure, so a chain and a tree read on the same axis; the conditional
    one is the ratio of consecutive bars."""
    offered: dict[int, int] = {}
    accepted: dict[int, int] = {}
    drafts = [e for e in trace.events if e.kind == "draft"]
    if is_tree(trace):
        for (row, step), nodes in _round_drafts(drafts).items():
            for d in {e.depth for e in nodes}:
                offered[d] = offered.get(d, 0) + 1
    else:
        for e in drafts:
            offered[e.depth] = offered.get(e.depth, 0) + 1
    for e in trace.events:
        if e.kind == "accept":
            accepted[e.depth] = accepted.get(e.depth, 0) + 1
    return {d: (accepted.get(d, 0), n) for d, n in sorted(offered.items())}


def per_position_acceptance(trace: Trace) -> dict[int, float]:
    """depth -> accepted / offered at that depth (`position_counts`)."""
    return {d: a / n for d, (a, n) in position_counts(trace).items()}


def compare(trace: Trace, baseline: Trace) -> dict:
    """The method against the autoregressive run of the same prompt (same process); the module's docstring
    defines every figure. Chain-only figures are None for a tree."""
    s, b = summarize(trace), summarize(baseline)
    step = target_step_cost(baseline)
    gamma, forwards = s.mean_drafts_per_round, s.forwards_per_round
    c = s.draft_step_s / step if step and s.draft_step_s is not None else None
    v = s.verify_s / step if step and s.verify_s is not None else None
    speedup = s.tokens_per_s / b.tokens_per_s if b.tokens_per_s else None
    speculated = bool(s.drafted) and bool(s.tau)  # rounds with drafts were seen
    # drafting's cost per round in target steps: forwards x c (copies only: nothing to pay)
    cost = (forwards * c if c is not None else None) if forwards else 0.0
    chain = speculated and not s.tree
    theoretical = (
        iid_tokens(s.alpha, gamma) / (cost + 1.0) if chain and s.alpha is not None and cost is not None else None
    )
    return {
        **s.to_dict(),
        "speedup": speedup,
        "equal_to_autoregressive": [r.output_ids for r in trace.rows] == [r.output_ids for r in baseline.rows],
        **divergence_counts(trace),
        "c": c,
        "v": v,
        "alpha_iid": iid_alpha(s.tau, gamma) if chain else None,
        "theoretical_speedup": theoretical,
        "efficiency": speedup / theoretical if speedup and theoretical else None,
        "modeled_speedup": s.tau / (cost + v) if speculated and cost is not None and v is not None else None,
        "mbsu": memory_bound_speedup(s, trace.meta) if speculated else None,
    }


def memory_bound_speedup(s: RunStats, meta: dict) -> float | None:
    """MBSU (the module's docstring) from the drafter forwards per round: tau where drafting read no drafter
    weights (copies only), None where the trace does not say what the models weigh."""
    if not s.forwards_per_round:
        return s.tau
    draft_params, target_params = meta.get("draft_params"), meta.get("target_params")
    if not (s.tau and draft_params and target_params):
        return None
    return mbsu(s.tau, s.forwards_per_round, draft_params, target_params)


def divergence_counts(trace: Trace) -> dict:
    """Differences from autoregressive as `specviz.analysis.divergence` classified them into the trace."""
    found = trace.meta.get("divergence") or []
    return {
        "tie_divergences": sum(1 for d in found if d["tie"]),
        "real_divergences": sum(1 for d in found if not d["tie"]),
        "first_difference": found[0] if found else None,
    }


def mirror_stats(trace: Trace, costs=None) -> dict:
    """Mirror-SD's own figures from its trace: branch hit rate (the final token among the kappa
    early-exit candidates), overlap (share of branch-rollout time spent while the target ran its
    suffix layers: drafter work hidden under the target), and the MODELED speedups under `costs`
    (default HeterogeneousCosts). Empty for other methods."""
    if trace.method != "mirror":
        return {}

    suffix = {e.step: (e.t0, e.t1) for e in trace.events if e.kind == "verify" and e.info.get("part") == "suffix"}
    spans = {e.step: (e.t0, e.t1) for e in trace.events if e.kind == "branch"}  # one span per round's branches
    busy = hidden = 0.0
    for step, (b0, b1) in spans.items():
        s0, s1 = suffix.get(step, (0.0, 0.0))
        busy += b1 - b0
        hidden += max(0.0, min(b1, s1) - max(b0, s0))
    mirror = trace.meta.get("mirror", {})
    modeled = modeled_timeline(
        trace, trace.meta["target_layers"], trace.params["exit_layer"], costs or HeterogeneousCosts()
    )
    return {
        "branch_hit_rate": mirror.get("hit_rate"),
        "overlap": hidden / busy if busy else None,
        "modeled_speedup_over_ar": modeled["modeled_speedup_over_ar"],
        "modeled_speedup_over_sd": modeled["modeled_speedup_over_sd"],
    }

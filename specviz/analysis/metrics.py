"""Summaries of Traces. Definitions live next to the code that computes them:

- alpha (acceptance rate) = accepted drafts / drafted tokens.
- tau (mean accepted tokens) = output tokens / verification rounds, the bonus or correction token
  included (1.00 for autoregressive decoding).
- per-position acceptance = for each depth d in the draft block, accepted drafts at d / drafts at d.
- c (cost ratio) = mean duration of one draft step / mean duration of one autoregressive target
  step (the reference run's decode steps, first token excluded).
- v (verification cost) = mean duration of one verification / one autoregressive target step.
- speedup = tokens/s of the method / tokens/s of the autoregressive run of the same prompt, in
  the same process (the caller pairs them).
- theoretical speedup (Leviathan et al.) = (1 - alpha^(g+1)) / ((1 - alpha) (g c + 1)), g = mean
  drafts per round, alpha measured; efficiency = measured speedup / theoretical.
- alpha_iid = the i.i.d. acceptance that would give the measured tau: solves
  (1 - a^(g+1)) / (1 - a) = tau. Acceptance is not i.i.d. in practice, so it differs from alpha.
- modeled speedup = tau / (g c + v): the measured acceptance with the measured costs.
- MBSU (VocabTrim's memory-bound speed-up) = tau / (c_params g + 1), c_params = drafter
  parameters (its LM head at the size used) / target parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median

from specviz.engine.trace import TOKEN_KINDS, Trace, is_healed_token
from specviz.speedup import HeterogeneousCosts, iid_alpha, leviathan_speedup, mbsu, modeled_timeline


def _durations(trace: Trace, kind: str, min_step: int = -10) -> list[float]:
    return [e.t1 - e.t0 for e in trace.events if e.kind == kind and e.step >= min_step]


def target_step_cost(ar_trace: Trace) -> float | None:
    """Median seconds of one autoregressive target step (decode steps only, prefill excluded)."""
    spans = _durations(ar_trace, "emit", min_step=1)
    return median(spans) if spans else None


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
    mean_drafts_per_round: float
    draft_step_s: float | None  # median seconds of one draft step
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
    draft_spans = [e.t1 - e.t0 for e in drafts if "branch" not in e.info]  # serial draft steps only
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


def per_position_acceptance(trace: Trace) -> dict[int, float]:
    """depth -> accepted drafts at that depth / drafts at that depth."""
    drafted: dict[int, int] = {}
    accepted: dict[int, int] = {}
    for e in trace.events:
        if e.kind == "draft":
            drafted[e.depth] = drafted.get(e.depth, 0) + 1
        elif e.kind == "accept":
            accepted[e.depth] = accepted.get(e.depth, 0) + 1
    return {d: accepted.get(d, 0) / n for d, n in sorted(drafted.items())}


def compare(trace: Trace, baseline: Trace) -> dict:
    """The method against the autoregressive run of the same prompt (same process)."""
    s, b = summarize(trace), summarize(baseline)
    step = target_step_cost(baseline)
    gamma = s.mean_drafts_per_round
    c = s.draft_step_s / step if step and s.draft_step_s is not None else None
    v = s.verify_s / step if step and s.verify_s is not None else None
    speedup = s.tokens_per_s / b.tokens_per_s if b.tokens_per_s else None
    theoretical = leviathan_speedup(s.alpha, gamma, c) if s.alpha is not None and c is not None and gamma else None
    a_iid = iid_alpha(s.tau, gamma) if gamma else None
    return {
        **s.to_dict(),
        "speedup": speedup,
        "equal_to_autoregressive": [r.output_ids for r in trace.rows] == [r.output_ids for r in baseline.rows],
        **divergence_counts(trace),
        "c": c,
        "v": v,
        "alpha_iid": a_iid,
        "theoretical_speedup": theoretical,
        "efficiency": speedup / theoretical if speedup and theoretical else None,
        "modeled_speedup": s.tau / (gamma * c + v) if c is not None and v is not None and gamma else None,
        "mbsu": (
            mbsu(s.tau, gamma, trace.meta["draft_params"], trace.meta["target_params"])
            if gamma and s.tau and trace.meta.get("draft_params") and trace.meta.get("target_params")
            else None
        ),
    }


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

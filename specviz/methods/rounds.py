"""The round every chain method shares: a drafter proposes, the target verifies the block in one forward,
the verdict commits the accepted tokens and the correction (and rolls both caches back).
"""

from __future__ import annotations

import torch

from specviz.engine.decoder import Output
from specviz.engine.lean import supports
from specviz.engine.protocols import Decoder
from specviz.engine.verify import Verdict, decide
from specviz.methods.base import RunContext, confidence_exit
from specviz.models.anatomy import weights_read_per_token


class Drafter:
    """Proposes draft tokens from a separate causal LM; subclasses change how (VocabTrim's head)."""

    source = "draft"

    def __init__(self, ctx: RunContext, model: torch.nn.Module, lean: bool = False):
        self.ctx = ctx
        self.lean = lean and ctx.once(("lean_supports", id(model)), lambda: supports(model))
        self.decoder = ctx.decoder(model, lean=self.lean)
        ctx.meta["drafter_forward"] = "lean" if self.lean else "transformers"
        ctx.meta["draft_params"] = ctx.once(("draft_params", id(model)), lambda: weights_read_per_token(model))  # MBSU

    def prefill(self, ids: torch.Tensor) -> None:
        if ids.shape[1]:
            self.decoder.feed(ids)

    def logits(self, pending: torch.Tensor) -> torch.Tensor:
        return self.decoder.feed(pending)  # (1, V)

    def propose(self, seq: torch.Tensor, gamma: int, step: int, eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft up to gamma tokens after seq (1, L): (tokens (k,), q (k, V)); records a draft event each.
        eta > 0: stop after a draft whose top-1 probability is under eta, that draft kept (Kangaroo's second early
        exit; under greedy decoding what transformers' assistant_confidence_threshold does with a fixed threshold):
        fewer drafts are wasted where the drafter is unsure, and the law of the output is unchanged, since only
        how many tokens are drafted moves."""
        ctx, rec = self.ctx, self.ctx.rec
        pending = seq[:, self.decoder.length :]  # committed tokens this cache has not seen (>= 1)
        tokens, qs, spans, stopped_at = [], [], [], None  # stopped_at: the confidence that stopped drafting
        for depth in range(gamma):
            t0 = rec.now()
            token, q = ctx.sampling.choose(self.logits(pending), ctx.generator)
            spans.append((t0, rec.now()))
            tokens.append(token)
            qs.append(q[0])
            pending = token.view(1, 1)
            if eta > 0 and depth + 1 < gamma and (confidence := float(q.max())) < eta:
                stopped_at = confidence
                break
        if not tokens:
            return seq.new_zeros(0), torch.zeros(0, ctx.vocab, device=seq.device)
        drafts, q = torch.cat(tokens), torch.stack(qs)
        q_x = q[torch.arange(len(tokens), device=q.device), drafts].tolist()
        for depth, (token_id, qv, (t0, t1)) in enumerate(zip(drafts.tolist(), q_x, spans)):
            rec.add("draft", step=step, token_id=token_id, q=qv, depth=depth, source=self.source, t0=t0, t1=t1)
        if stopped_at is not None:  # recorded after the drafts, as Kangaroo's: the last draft is the unsure one
            confidence_exit(rec, step, len(tokens) - 1, self.source, spans[-1][1], stopped_at, eta)
        return drafts, q

    def rollback(self, length: int) -> None:
        self.decoder.rollback(length)


def verify_block(
    ctx: RunContext,
    target: Decoder,
    seq: torch.Tensor,
    drafts: torch.Tensor,
    q: torch.Tensor,
    step: int,
    source: str = "target",
    plan: dict | None = None,
) -> Verdict:
    """One target forward over [last committed, drafts] and the lossless verdict on it; `plan`: how the round's
    source and length were chosen (`methods.hybrid`), recorded on the verify event."""
    block = torch.cat([seq[:, -1:], drafts.view(1, -1)], dim=1)
    t0 = ctx.rec.now()
    logits = target.feed(block, keep=block.shape[1])  # (gamma+1, V)
    return judge(ctx, drafts, q, logits, step, t0, source, plan)


def judge(
    ctx: RunContext,
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    logits: torch.Tensor,
    step: int,
    t0: float,
    source: str = "target",
    plan: dict | None = None,
) -> Verdict:
    """The lossless verdict on the target's logits (k+1, V) over [last committed, d_1..d_k], recorded as the
    round's verify event from t0 (when the target's forward began); `plan` as in `verify_block`."""
    verdict = decide(ctx.sampling, drafts, q, logits, ctx.generator, top=ctx.dist_top, rule=ctx.verify_rule)
    ctx.rec.add(
        "verify",
        step=step,
        source=source,
        t0=t0,
        t1=ctx.rec.now(),
        info={
            "tokens": len(drafts) + 1,
            "drafts": len(drafts),
            "accepted": verdict.accepted,
            **({"plan": plan} if plan else {}),
        },
    )
    return verdict


def commit_tokens(
    ctx: RunContext,
    out: Output,
    drafts: list[int],
    verdict: Verdict,
    step: int,
    sources: list[str] | None = None,
    row: int = 0,
) -> list[int]:
    """Emit accept / reject / correct / bonus events of one row and push its tokens; return them."""
    rec = ctx.rec
    now = rec.now()
    gamma, n = len(drafts), verdict.accepted
    new = []
    if not rec.enabled:  # nothing is stored: push the tokens, build no event
        for token_id in drafts[:n]:
            if out.done:
                break
            out.push(token_id)
            new.append(token_id)
        if not out.done:
            out.push(verdict.token)
            new.append(verdict.token)
        return new
    top_p = verdict.top_p
    for depth, token_id in enumerate(drafts):
        src = sources[depth] if sources else "draft"
        common = dict(
            step=step,
            row=row,
            token_id=token_id,
            p=verdict.p_draft[depth],
            q=verdict.q_draft[depth],
            depth=depth,
            source=src,
            t0=now,
            t1=now,
        )
        info = verdict_info(verdict, depth, depth <= n)
        if depth < n:
            if out.done:
                break  # accepted past EOS / the token limit: not part of the output
            rec.add("accept", position=out.push(token_id), info=info, **common)
            new.append(token_id)
        else:
            cause = ("mismatch" if ctx.sampling.greedy else "ratio") if depth == n else "after_reject"
            rec.add("reject", info={"cause": cause, "ratio": verdict.ratios[depth], **info}, **common)
    if not out.done:
        kind = "bonus" if n == gamma else "correct"
        info = {"rule": verdict.rule}
        if top_p:
            info["top_p"] = top_p[n]
        if verdict.residual_top is not None and kind == "correct":
            info["residual_top"] = verdict.residual_top
        rec.add(
            kind,
            step=step,
            row=row,
            position=out.push(verdict.token),
            token_id=verdict.token,
            p=verdict.p_token,
            q=None,
            depth=n,
            source="target",
            t0=now,
            t1=now,
            info=info,
        )
        new.append(verdict.token)
    return new


def verdict_info(verdict: Verdict, depth: int, judged: bool) -> dict:
    """What an accept / reject event records about the rule at its draft: the rule, the top-k of q and p
    there (when recorded) and, where sampling judged it, the uniform drawn and min(1, p/q)."""
    info: dict = {"rule": verdict.rule}
    if verdict.top_q:
        info["top_q"] = verdict.top_q[depth]
    if verdict.top_p:
        info["top_p"] = verdict.top_p[depth]
    if judged and verdict.rule != "argmax":
        if verdict.u is not None:
            info["u"] = verdict.u[depth]
        info["accept_prob"] = verdict.ratios[depth]
    return info


def commit(
    ctx: RunContext,
    seq: torch.Tensor,
    drafts: torch.Tensor,
    verdict: Verdict,
    step: int,
    sources: list[str] | None = None,
) -> torch.Tensor:
    """Commit one verdict of the single sequence; return the extended sequence (1, L')."""
    new = commit_tokens(ctx, ctx.out, drafts.tolist(), verdict, step, sources)
    return torch.cat([seq, torch.tensor([new], dtype=seq.dtype, device=seq.device)], dim=1)


def next_gamma(gamma: int, accepted: int, drafted: int, schedule: str, limit: int) -> int:
    """transformers' heuristic schedule: grow by 2 after a clean sweep, shrink by 1 otherwise."""
    if schedule == "constant":
        return gamma
    return min(limit, gamma + 2) if accepted == drafted else max(1, gamma - 1)


def prefill_both(ctx: RunContext, target: Decoder, drafter, source: str) -> None:
    """Prompt (all but its last token, which the first round feeds) into target and drafter caches."""
    rec, head = ctx.rec, ctx.prompt_ids[:, :-1]
    t0 = rec.now()
    if head.shape[1]:
        target.feed(head)
    t1 = rec.now()
    rec.add("prefill", source="target", t0=t0, t1=t1, info={"tokens": head.shape[1]})
    drafter.prefill(head)
    rec.add("prefill", source=source, t0=t1, t1=rec.now(), info={"tokens": head.shape[1]})

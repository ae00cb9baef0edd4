"""Classic speculative decoding with a separate drafter (Leviathan et al. 2023; Chen et al. 2023).

Per round: the drafter proposes gamma tokens one by one on its own KV cache; the target scores
[last committed token, d_1..d_gamma] in one forward; the shared rules of `verify.py` accept a
prefix and emit a correction or bonus token; both caches are cropped back to what was committed.
Gamma is fixed, or adapted per round with transformers' "heuristic" schedule (+2 after a round
where every draft passed, -1 otherwise).
"""
from __future__ import annotations

from specviz.methods.base import GAMMA, Method, Param, RunContext, eta_param
from specviz.methods.rounds import Drafter, commit, next_gamma, prefill_both, verify_block
from specviz.methods.vocabtrim import TrimmedDrafter

DRAFTER_FORWARD = Param("drafter_forward", str, "lean", choices=("lean", "transformers"),
                        help="the drafter's forward: specviz's lean Llama-family loop (same weights, less framework "
                             "work per call) or transformers' model(...); other architectures always use transformers")
GAMMA_SCHEDULE = Param("gamma_schedule", str, "constant", choices=("constant", "heuristic"),
                       help="constant gamma, or +2 after a round with every draft accepted and -1 otherwise "
                            "(transformers' 'heuristic' schedule)")


class DraftModel(Method):
    name = "draft_model"
    title = "Speculative decoding (separate drafter)"
    needs_draft = True
    memo_safe = True
    PARAMS = (
        GAMMA,
        eta_param(0.0),
        GAMMA_SCHEDULE,
        DRAFTER_FORWARD,
        Param("vocab_trim", int, 0, 0, 1_000_000,
              help="VocabTrim: keep only the K most frequent target tokens in the drafter's LM head (0 = off)"),
    )

    def make_drafter(self, ctx: RunContext) -> Drafter:
        k = ctx.params.get("vocab_trim", 0)
        lean = ctx.params.get("drafter_forward") == "lean"
        if k:
            return TrimmedDrafter(ctx, ctx.pair.draft, k, lean=lean)
        return Drafter(ctx, ctx.pair.draft, lean=lean)

    def generate(self, ctx: RunContext) -> None:
        out = ctx.out
        gamma, schedule, eta = ctx.params["gamma"], ctx.params["gamma_schedule"], ctx.params["eta"]
        limit = 16
        target = ctx.decoder(ctx.pair.target)
        drafter = self.make_drafter(ctx)
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, drafter.source)
        step = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            g = min(gamma, out.room - 1)
            drafts, q = drafter.propose(seq, g, step, eta)
            verdict = verify_block(ctx, target, seq, drafts, q, step)
            seq = commit(ctx, seq, drafts, verdict, step, [drafter.source] * len(drafts))
            target.rollback(length + verdict.accepted)
            drafter.rollback(length + verdict.accepted)
            gamma = next_gamma(gamma, verdict.accepted, len(drafts), schedule, limit)
            step += 1
        ctx.meta["final_gamma"] = gamma

"""Classic speculative decoding with a separate drafter (Leviathan et al. 2023; Chen et al. 2023).

Per round: the drafter proposes gamma tokens one by one on its own KV cache; the target scores
[last committed token, d_1..d_gamma] in one forward; the shared rules of `verify.py` accept a
prefix and emit a correction or bonus token; both caches are cropped back to what was committed.
Gamma is fixed, or adapted per round with transformers' "heuristic" schedule (+2 after a round
where every draft passed, -1 otherwise).

`lookup=n` makes it a lookup-or-drafter hybrid: a round whose text ends in n tokens that occurred before takes
the prompt-lookup draft (`specviz.methods.prompt_lookup`: free to make, q = 1 at each copy) and skips the
drafter; other rounds draft as usual. With `choose=yield` (`specviz.methods.hybrid`) each round instead takes the
source and length with the most expected tokens per modeled cost, from the run's own verdicts: a copy, the
drafter, or no draft at all (a plain target step). Each round's drafts come from one source and are verified by the
rule for it (a copy is accepted with p(x), a drafted token with min(1, p/q)), so the hybrid is exact under sampling
too. `prompt_lookup.LookupOrDraft` plans the rounds (Kangaroo's too).
The drafter catches up on the tokens of lookup rounds at its next round (its cache feeds what it has not seen).
"""

from __future__ import annotations

from specviz.methods.base import GAMMA, Method, Param, RunContext, eta_param
from specviz.methods.hybrid import CHOOSE, WIDTH_COST
from specviz.methods.prompt_lookup import SOURCE as LOOKUP
from specviz.methods.prompt_lookup import LookupOrDraft
from specviz.methods.rounds import Drafter, commit, next_gamma, prefill_both, verify_block
from specviz.methods.vocabtrim import TrimmedDrafter

DRAFTER_FORWARD = Param(
    "drafter_forward",
    str,
    "lean",
    choices=("lean", "transformers"),
    help="the drafter's forward: specviz's lean Llama-family loop (same weights, less framework "
    "work per call) or transformers' model(...); other architectures always use transformers",
)
GAMMA_SCHEDULE = Param(
    "gamma_schedule",
    str,
    "constant",
    choices=("constant", "heuristic"),
    help="constant gamma, or +2 after a round with every draft accepted and -1 otherwise "
    "(transformers' 'heuristic' schedule)",
)


LOOKUP_PARAM = Param(
    "lookup",
    int,
    0,
    0,
    8,
    help="hybrid: a round whose text ends in this many tokens seen before copies what followed them "
    "(prompt lookup) instead of asking the drafter (0 = never)",
)
LOOKUP_GAMMA_PARAM = Param("lookup_gamma", int, 10, 1, 16, help="hybrid: tokens copied per lookup round at most")


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
        Param(
            "vocab_trim",
            int,
            0,
            0,
            1_000_000,
            help="VocabTrim: keep only the K most frequent target tokens in the drafter's LM head (0 = off)",
        ),
        LOOKUP_PARAM,
        LOOKUP_GAMMA_PARAM,
        CHOOSE,
        WIDTH_COST,
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
        target = ctx.decoder(ctx.pair.target)
        drafter = self.make_drafter(ctx)
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, drafter.source)
        sources = LookupOrDraft(ctx)
        step = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            # 1. plan: a copy, gamma drafter tokens, or (choose=yield) what the run's verdicts say pays most
            source = sources.plan(seq, step, gamma)
            # 2. draft: the copy as it is, or k drafter tokens (none where k = 0)
            if source.copy is not None:
                drafts, q, by = source.copy, source.q, LOOKUP
            else:
                (drafts, q), by = drafter.propose(seq, source.k, step, eta), drafter.source
            # 3. verify: one target forward over [last token, drafts]
            verdict = verify_block(ctx, target, seq, drafts, q, step, plan=source.plan_info)
            # 4. accept: commit, roll both caches back to the committed length
            seq = commit(ctx, seq, drafts, verdict, step, [by] * len(drafts))
            target.rollback(length + verdict.accepted)
            drafter.rollback(length + verdict.accepted)
            sources.update(source, len(drafts), verdict.accepted, seq, length)
            if sources.chooser is None and source.copy is None:
                gamma = next_gamma(gamma, verdict.accepted, len(drafts), schedule, limit=16)
            step += 1
        ctx.meta["final_gamma"] = gamma
        sources.finish(ctx.meta)

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
drafter, or no draft at all (a plain target step). Each round's drafts come from one source and are verified by the rule for
it (a copy is accepted with p(x), a drafted token with min(1, p/q)), so the hybrid is exact under sampling too.
The drafter catches up on the tokens of lookup rounds at its next round (its cache feeds what it has not seen).
"""

from __future__ import annotations

import torch

from specviz.methods.base import GAMMA, Method, Param, RunContext, eta_param
from specviz.methods.hybrid import CHOOSE, WIDTH_COST, SourceChooser
from specviz.methods.prompt_lookup import SOURCE as LOOKUP
from specviz.methods.prompt_lookup import NgramIndex, one_hot, record_copies
from specviz.methods.rounds import Drafter, commit, next_gamma, prefill_both, verify_block
from specviz.methods.vocabtrim import TrimmedDrafter
from specviz.models.anatomy import weights_read_per_token

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
        limit = 16
        target = ctx.decoder(ctx.pair.target)
        drafter = self.make_drafter(ctx)
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, drafter.source)
        lookup = ctx.params["lookup"]
        index = NgramIndex(lookup, max(lookup, 4)) if lookup else None
        if index is not None:
            index.extend(seq[0].tolist())
        chooser = (
            SourceChooser(ctx.params["width_cost"], draft_cost(ctx, ctx.pair.target))
            if ctx.params["choose"] == "yield"
            else None
        )
        step = lookup_rounds = 0
        while not out.done:
            ctx.check_cancel()
            length, room = seq.shape[1], out.room - 1
            plan, ngram, copied = None, 0, None
            if chooser is not None:
                plan, ngram = chooser.plan_round(index, min(ctx.params["lookup_gamma"], room), min(gamma, room))
                if plan.source == LOOKUP:
                    copied = self.copy(ctx, index, seq, step, plan.k)
            elif index is not None:
                copied = self.copy(ctx, index, seq, step, min(ctx.params["lookup_gamma"], room))
            if copied is not None:
                drafts, q, ngram = copied
                source = LOOKUP
                lookup_rounds += 1
            elif plan is not None and plan.source is None:  # no draft pays: a plain target step
                drafts, q, source = seq.new_zeros(0), torch.zeros(0, ctx.vocab, device=seq.device), drafter.source
            else:
                drafts, q = drafter.propose(seq, plan.k if plan is not None else min(gamma, room), step, eta)
                source = drafter.source
            verdict = verify_block(ctx, target, seq, drafts, q, step, plan=plan.info() if plan is not None else None)
            seq = commit(ctx, seq, drafts, verdict, step, [source] * len(drafts))
            target.rollback(length + verdict.accepted)
            drafter.rollback(length + verdict.accepted)
            if chooser is not None:
                chooser.update(plan, len(drafts), verdict.accepted, ngram)
            elif copied is None:
                gamma = next_gamma(gamma, verdict.accepted, len(drafts), schedule, limit)
            if index is not None:
                index.extend(seq[0, length:].tolist())
            step += 1
        ctx.meta["final_gamma"] = gamma
        if index is not None:
            ctx.meta["lookup"] = {"rounds": step, "lookup_rounds": lookup_rounds}
        if chooser is not None:
            ctx.meta["chooser"] = chooser.summary()

    @staticmethod
    def copy(ctx: RunContext, index: NgramIndex, seq, step: int, gamma: int):
        """The round's prompt-lookup draft, its q and the n-gram matched, or None (no match: the drafter drafts)."""
        t0 = ctx.rec.now()
        drafts, sources, n = index.draft(gamma, ctx.vocab)
        if not drafts:
            return None
        record_copies(ctx, step, drafts, sources, n, ctx.prompt_ids.shape[1], t0)
        return torch.tensor(drafts, dtype=seq.dtype, device=seq.device), one_hot(drafts, ctx.vocab, seq.device), n


def draft_cost(ctx: RunContext, target) -> float:
    """A drafter token's modeled cost in target steps: the weights it reads over the target's (MBSU's model)."""
    whole = ctx.once(("target_params", id(target)), lambda: weights_read_per_token(target))
    return ctx.meta["draft_params"] / max(1, whole)

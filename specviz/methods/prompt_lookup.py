"""Prompt lookup (n-gram drafting): the draft is copied from the text so far, no drafter model.

What production servers ship without training (transformers' `prompt_lookup_num_tokens`, vLLM's `ngram`
method; Saxena 2023): when the last n tokens occurred earlier in the prompt or the output, the tokens that
followed them there are the draft. Here n runs from `max_ngram` down to `min_ngram`, the most recent earlier
occurrence wins, and the copy may run into the tokens it is copying (a repeated pattern keeps repeating, as an
LZ77 copy does), so a match gives gamma drafts (fewer only where the output's room or the target's vocabulary
ends). `min_ngram` is 2 by default (transformers' matches down to one token): a copy after one common token is
seldom accepted, and on a CPU the round that verifies it costs about a quarter of a step more than a plain one
(docs/results.md measures both on every prompt set).

Exact under sampling with the same rule as every method: a copied draft is deterministic, so its q is 1 at the
drafted token and 0 elsewhere. The draft x is accepted with probability min(1, p(x) / q(x)) = p(x), and at a
rejection the emitted token is drawn from norm(max(0, p - q)), which is p with x removed and renormalised:
P(emit y) = p(x) [y = x] + (1 - p(x)) p(y) / (1 - p(x)) [y != x] = p(y).

`choose=yield` (`specviz.methods.hybrid`) copies per round only as many tokens as the run's own verdicts say pay
for their verification (a match of n tokens is trusted as much as earlier matches of n were), and none at all
where a copy is not expected to pay: on a CPU, verifying ten tokens costs about half a step more than one.

The lookup stays cheap on long prompts: `NgramIndex` keeps, for every n, each n-gram's most recent end
position, updated as tokens are committed; a round reads a few dict entries instead of rescanning the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specviz.methods.base import Method, Param, RunContext
from specviz.methods.hybrid import CHOOSE, WIDTH_COST, Plan, SourceChooser, draft_cost
from specviz.methods.rounds import commit, verify_block

SOURCE = "lookup"
LOOKUP_GAMMA = Param(
    "gamma",
    int,
    10,
    1,
    16,
    help="tokens copied per round at most (a copy costs nothing to draft; the target verifies it)",
)
MAX_NGRAM = Param("max_ngram", int, 3, 1, 8, help="longest n-gram matched at the end of the text (tried first)")
MIN_NGRAM = Param(
    "min_ngram",
    int,
    2,
    1,
    8,
    help="shortest n-gram matched; no match of this length: no draft (1 copies after a single common "
    "token, seldom accepted: measured slower on every prompt set here)",
)


class NgramIndex:
    """The most recent earlier occurrence of every n-gram (min_n..max_n) of the committed tokens.

    Tokens are appended as they are committed; the n-grams ending before the last token are indexed then, so a
    lookup for the text's own ending finds only earlier occurrences. Appending costs (max_n - min_n + 1) dict
    writes per token; a lookup at most as many dict reads."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.last: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.indexed = 0  # n-grams ending at positions < indexed are in `last`

    def extend(self, ids: list[int]) -> None:
        self.tokens.extend(ids)
        tokens, end = self.tokens, len(self.tokens) - 1
        for e in range(self.indexed, end):
            for n, table in self.last.items():
                if e + 1 >= n:
                    table[tuple(tokens[e + 1 - n : e + 1])] = e
        self.indexed = max(self.indexed, end)

    def match(self) -> tuple[int, int] | None:
        """(n, end) of the longest n-gram ending the text that occurred before: end is its last token's position."""
        tokens = self.tokens
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            end = self.last[n].get(tuple(tokens[len(tokens) - n :]))
            if end is not None:
                return n, end
        return None

    def draft(self, gamma: int, vocab: int | None = None) -> tuple[list[int], list[int], int]:
        """Up to gamma tokens that followed the match, the position each was copied from, and the n matched; with
        `vocab`, the copy stops before the first id the target's logits do not cover."""
        found = self.match() if gamma > 0 else None
        if found is None:
            return [], [], 0
        n, end = found
        tokens, length = self.tokens, len(self.tokens)
        drafts, sources = [], []
        for i in range(gamma):
            at = end + 1 + i  # past the text's end, the copy reads its own drafts (a repeating pattern repeats)
            token = tokens[at] if at < length else drafts[at - length]
            if vocab is not None and token >= vocab:
                break
            drafts.append(token)
            sources.append(at if at < length else sources[at - length])
        return drafts, sources, n


def lookup_params(ctx: RunContext) -> tuple[int, int, int]:
    gamma, low, high = ctx.params["gamma"], ctx.params["min_ngram"], ctx.params["max_ngram"]
    if low > high:
        unset = low == MIN_NGRAM.default
        hint = f"; min_ngram is {MIN_NGRAM.default} unless set: set min_ngram={high} too" if unset else ""
        raise ValueError(f"min_ngram ({low}) must not exceed max_ngram ({high}){hint}")
    return gamma, low, high


def one_hot(drafts: list[int], vocab: int, device: torch.device) -> torch.Tensor:
    """q of deterministic drafts: probability 1 at each drafted token."""
    q = torch.zeros(len(drafts), vocab, device=device)
    if drafts:
        q[torch.arange(len(drafts), device=device), torch.tensor(drafts, device=device)] = 1.0
    return q


def record_copies(
    ctx: RunContext,
    step: int,
    drafts: list[int],
    sources: list[int],
    n: int,
    prompt_length: int,
    t0: float,
    t1: float | None = None,
) -> None:
    """A draft event per copied token: q = 1, and where in the prompt (or the output) it was copied from."""
    rec = ctx.rec
    if not rec.enabled:
        return
    t1 = rec.now() if t1 is None else t1
    for depth, (token_id, at) in enumerate(zip(drafts, sources)):
        rec.add(
            "draft",
            step=step,
            token_id=token_id,
            q=1.0,
            depth=depth,
            source=SOURCE,
            t0=t0,
            t1=t1,
            info={"copied_from": at, "in_prompt": at < prompt_length, "ngram": n},
        )


@dataclass(frozen=True)
class RoundSource:
    """Where one round's drafts come from: a copy, or k tokens of the method's drafter (k = 0: no draft at all, a
    plain target step)."""

    k: int  # tokens the drafter drafts (0 in a lookup round)
    copy: torch.Tensor | None = None  # a lookup round's copied drafts (k_copy,); None: the drafter drafts
    q: torch.Tensor | None = None  # the copy's q: 1 at each copied token
    plan: Plan | None = None  # choose=yield: the round's plan; None: `choose=match` decided
    ngram: int = 0  # n of the n-gram the text's ending matched (0: none)

    @property
    def plan_info(self) -> dict | None:
        """What the verify event records of the plan."""
        return self.plan.info() if self.plan is not None else None


class LookupOrDraft:
    """The lookup side of a drafting method (draft_model, Kangaroo: `lookup=n`, `choose`): each round copies what
    followed an earlier occurrence of the text's last n tokens, or lets the drafter draft, or (`choose=yield`)
    takes the source and length the run's own verdicts say pay most, no draft included; it learns from each
    verdict. Without `lookup` and with `choose=match`, every round is the drafter's."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        n = ctx.params["lookup"]
        self.index = NgramIndex(n, max(n, 4)) if n else None
        if self.index is not None:
            self.index.extend(ctx.prompt_ids[0].tolist())
        yields = ctx.params["choose"] == "yield"
        self.chooser = SourceChooser(ctx.params["width_cost"], draft_cost(ctx, ctx.pair.target)) if yields else None
        self.rounds = self.lookup_rounds = 0

    def plan(self, seq: torch.Tensor, step: int, gamma: int) -> RoundSource:
        """This round's source, for at most gamma drafter tokens (and lookup_gamma copied ones) within the room
        left; a copy is recorded here (its draft events: copying is all its drafting)."""
        ctx = self.ctx
        room = ctx.out.room - 1
        if self.index is None and self.chooser is None:
            return RoundSource(k=min(gamma, room))
        t0 = ctx.rec.now()
        copy_max = min(ctx.params["lookup_gamma"], room)
        if self.chooser is not None:
            plan, (drafts, sources, n) = self.chooser.plan_round(self.index, copy_max, min(gamma, room), ctx.vocab)
            k = plan.k if plan.source == "draft" else 0
        else:  # choose=match: copy where the ending matched, else draft
            plan, (drafts, sources, n) = None, self.index.draft(copy_max, ctx.vocab)
            k = min(gamma, room)
        if not drafts:
            return RoundSource(k=k, plan=plan, ngram=n)
        record_copies(ctx, step, drafts, sources, n, ctx.prompt_ids.shape[1], t0)
        self.lookup_rounds += 1
        copy = torch.tensor(drafts, dtype=seq.dtype, device=seq.device)
        return RoundSource(k=0, copy=copy, q=one_hot(drafts, ctx.vocab, seq.device), plan=plan, ngram=n)

    def update(self, source: RoundSource, drafted: int, accepted: int, seq: torch.Tensor, length: int) -> None:
        """Learn from the round's verdict; index the tokens it committed (seq's from `length` on)."""
        if self.chooser is not None:
            self.chooser.update(source.plan, drafted, accepted, source.ngram)
        if self.index is not None:
            self.index.extend(seq[0, length:].tolist())
        self.rounds += 1

    def finish(self, meta: dict) -> None:
        """The run's lookup counts and learnt rates, into the trace's meta."""
        if self.index is not None:
            meta["lookup"] = {"rounds": self.rounds, "lookup_rounds": self.lookup_rounds}
        if self.chooser is not None:
            meta["chooser"] = self.chooser.summary()


class PromptLookup(Method):
    """Drafts copied from earlier in the prompt or the output (n-gram matching), verified by the target."""

    name = "prompt_lookup"
    title = "Prompt lookup (n-gram drafts, no drafter)"
    memo_safe = True
    PARAMS = (LOOKUP_GAMMA, MAX_NGRAM, MIN_NGRAM, CHOOSE, WIDTH_COST)

    def generate(self, ctx: RunContext) -> None:
        gamma, low, high = lookup_params(ctx)
        rec, out = ctx.rec, ctx.out
        target = ctx.decoder(ctx.pair.target)
        seq = ctx.prompt_ids
        prompt_length = seq.shape[1]
        t0 = rec.now()
        if prompt_length > 1:
            target.feed(seq[:, :-1])  # all but the last token, which the first round feeds
        t1 = rec.now()
        rec.add("prefill", source="target", t0=t0, t1=t1, info={"tokens": prompt_length - 1})
        index = NgramIndex(low, high)
        index.extend(seq[0].tolist())
        rec.add("prefill", source=SOURCE, t0=t1, t1=rec.now(), info={"tokens": prompt_length, "what": "n-gram index"})
        chooser = SourceChooser(ctx.params["width_cost"], 0.0) if ctx.params["choose"] == "yield" else None
        step = hits = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            t0 = rec.now()
            k, plan = min(gamma, out.room - 1), None
            if chooser is not None:
                plan, (drafts, sources, n) = chooser.plan_round(index, k, vocab=ctx.vocab)
            else:
                drafts, sources, n = index.draft(k, ctx.vocab)
            t1 = rec.now()
            record_copies(ctx, step, drafts, sources, n, prompt_length, t0, t1)
            hits += bool(drafts)
            draft_t = torch.tensor(drafts, dtype=seq.dtype, device=seq.device)
            verdict = verify_block(
                ctx,
                target,
                seq,
                draft_t,
                one_hot(drafts, ctx.vocab, seq.device),
                step,
                plan=plan.info() if plan is not None else None,
            )
            if chooser is not None:
                chooser.update(plan, len(drafts), verdict.accepted, n)
            seq = commit(ctx, seq, draft_t, verdict, step, [SOURCE] * len(drafts))
            target.rollback(length + verdict.accepted)
            index.extend(seq[0, length:].tolist())
            step += 1
        ctx.meta["lookup"] = {"rounds": step, "rounds_with_a_match": hits, "prompt_tokens": prompt_length}
        if chooser is not None:
            ctx.meta["chooser"] = chooser.summary()

"""Batch speculative decoding done right: a batched autoregressive baseline, EQSPEC and EXSPEC.

The ragged-tensor problem: in one batched round, row i accepts a_i of the gamma drafts, so after the
round rows hold different numbers of valid tokens. A batch is kept rectangular here by LEFT padding:
row i's c_i valid cache entries are always the LAST c_i columns of a cache of width W, its pad is
W - c_i, its attention mask is 0 on the pad, and the position of its next token is c_i (its own count,
never the column index). After a verification block of T = gamma + 1 tokens row i keeps k_i = 1 + a_i
of the T new entries (the pending token and its accepted drafts; the rest are rejected drafts).

Realignment (`BatchKV.settle`), for target and drafter caches alike, per round:
  1. every row is shifted right by K - k_i columns (K = max k_i), so all rows end at column W + K
     again; the rejected entries of a row fall off its right end, its pad grows by K - k_i;
  2. columns that are pad in every row are dropped (pad removed), and the tail past W + K is cropped.
The move is one gather per layer over the (B, H, S, D) key and value tensors; every row gets a
`realign` event with what changed (accepted, kept, shift, pad before/after/added/removed, cache
entries moved, width) and the measured time of the whole operation.

EXSPEC keeps one cache per sequence in a pool larger than the batch. Each round a `schedule` event
per row records the group: rows whose current lengths are equal are concatenated with no padding and
no realignment; only when no same-length group fills the batch are other rows added with left
padding (then the round is counted as realigned). After the round each row's cache is sliced back to
its own valid entries (a view, no move). Finished rows leave the pool and queued prompts enter.

`realign="naive"` reproduces the classic bug on purpose (never a default): position ids are the
padded column index, as if every row started at column 0, so a row's positions jump whenever padding
or a realignment shift moves it. Output equivalence then breaks, which the Batch tab shows.

Drafting runs gamma drafter forwards plus one that writes the last draft into the drafter's cache,
so both caches always hold the same tokens and each row has exactly one pending token per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specviz.engine import kvcache
from specviz.engine.batch_cache import BatchKV, Seq
from specviz.engine.decoder import Output, context_limit, eos_ids
from specviz.engine.verify import decide
from specviz.methods.base import GAMMA, Method, Param, RunContext
from specviz.methods.rounds import commit_tokens

BATCH_SIZE = Param("batch_size", int, 4, 1, 32, help="rows decoded together")
REALIGN = Param(
    "realign",
    str,
    "full",
    choices=("full", "naive"),
    help="full: correct realignment; naive: BROKEN ON PURPOSE (positions from padded columns) to show why it matters",
)


is_filled, each_layer = kvcache.is_filled, kvcache.filled_layers


@dataclass
class RoundClock:
    """Seconds spent per phase over a whole batch run (trace.meta["seconds"])."""

    draft: float = 0.0
    verify: float = 0.0
    realign: float = 0.0
    prefill: float = 0.0
    schedule: float = 0.0
    rounds: int = 0
    realigned_rounds: int = 0
    same_length_rounds: int = 0
    extra: dict = field(default_factory=dict)


class BatchMethod(Method):
    """Shared machinery: prefill, one speculative (or plain) round over a BatchKV pair, commit, realign."""

    batch = True
    speculative = True

    def new_seqs(self, ctx: RunContext) -> list[Seq]:
        pair = ctx.pair
        eos = eos_ids(pair.target, pair.tokenizer)
        limit = context_limit(pair.target)
        seqs = [
            Seq(i, ids, Output(ctx.params["max_new_tokens"], eos, limit - len(ids) + (i in ctx.first_tokens)))
            for i, ids in enumerate(ctx.batch_prompts)
        ]
        for s in seqs:  # token healing (specviz.api) chose a row's first token already: it counts as output
            if s.index in ctx.first_tokens:
                s.out.push(ctx.first_tokens[s.index])
                s.healed = 1
        ctx.outputs = [s.out for s in seqs]  # visible to the caller even if the run is cancelled midway
        return seqs

    def prefill(self, ctx: RunContext, seqs: list[Seq], clock: RoundClock) -> tuple[BatchKV, BatchKV | None]:
        """Left-padded prompts (all but their last token) into fresh target (and drafter) caches."""
        rec, naive = ctx.rec, ctx.params["realign"] == "naive"
        device = ctx.pair.target.device
        heads = [s.prompt_ids[:-1] for s in seqs]
        width = max(len(h) for h in heads)
        pad_id = 0
        ids = torch.tensor([[pad_id] * (width - len(h)) + h for h in heads], dtype=torch.long, device=device)
        pads = [width - len(h) for h in heads]
        for s in seqs:
            s.pending = s.prompt_ids[-1]
        models = [("target", ctx.pair.target)] + ([("draft", ctx.pair.draft)] if self.speculative else [])
        kvs = []
        for source, model in models:
            kv = BatchKV(model, ctx.vocab, naive)
            t0 = rec.now()
            if width:
                kv.feed(ids, pads)
            else:
                kv.valid = [0] * len(seqs)
            t1 = rec.now()
            clock.prefill += t1 - t0
            for s in seqs:
                rec.add(
                    "prefill",
                    row=s.index,
                    source=source,
                    t0=t0,
                    t1=t1,
                    info={"tokens": len(s.prompt_ids) - 1, "pad": width - len(s.prompt_ids) + 1},
                )
            kvs.append(kv)
        return kvs[0], (kvs[1] if self.speculative else None)

    def round(
        self,
        ctx: RunContext,
        seqs: list[Seq],
        target: BatchKV,
        draft: BatchKV | None,
        step: int,
        clock: RoundClock,
        settle: bool = True,
    ) -> list[int]:
        """Draft, verify and commit one round for every row; realign (settle) or leave it to the caller.
        Returns the rejected-entry count at the right end of each row (0 after settling)."""
        rec, sampling, gen = ctx.rec, ctx.sampling, ctx.generator
        device = ctx.pair.target.device
        room = max(s.out.room for s in seqs)
        gamma = min(ctx.params.get("gamma", 0), room - 1) if draft is not None else 0
        cur = torch.tensor([[s.pending] for s in seqs], dtype=torch.long, device=device)
        drafts = torch.zeros(len(seqs), 0, dtype=torch.long, device=device)
        qs: list[torch.Tensor] = []
        if gamma:
            for depth in range(gamma):
                t0 = rec.now()
                logits = draft.feed(cur)[:, -1]
                token, q = sampling.choose(logits, gen)
                t1 = rec.now()
                clock.draft += t1 - t0
                q_x = q.gather(1, token[:, None])[:, 0].tolist()
                for s, tok, qv in zip(seqs, token.tolist(), q_x):
                    rec.add(
                        "draft",
                        step=s.steps,
                        row=s.index,
                        token_id=tok,
                        q=qv,
                        depth=depth,
                        source="draft",
                        t0=t0,
                        t1=t1,
                    )
                qs.append(q)
                cur = token[:, None]
                drafts = torch.cat([drafts, cur], dim=1)
            t0 = rec.now()
            draft.feed(cur)  # the last draft into the drafter's cache: both caches hold the same tokens
            clock.draft += rec.now() - t0
        block = torch.cat([torch.tensor([[s.pending] for s in seqs], dtype=torch.long, device=device), drafts], dim=1)
        t0 = rec.now()
        logits = target.feed(block)  # (B, gamma + 1, V)
        t1 = rec.now()
        clock.verify += t1 - t0
        kept = []
        q_all = torch.stack(qs, dim=1) if qs else None  # (B, gamma, V)
        top = ctx.dist_top
        for i, s in enumerate(seqs):
            row_drafts = drafts[i]
            verdict = decide(
                sampling,
                row_drafts,
                q_all[i] if q_all is not None else None,
                logits[i],
                gen,
                top=top,
                rule=ctx.verify_rule,
            )
            rec.add(
                "verify",
                step=s.steps,
                row=s.index,
                source="target",
                t0=t0,
                t1=t1,
                info={"tokens": gamma + 1, "drafts": gamma, "accepted": verdict.accepted, "batch": len(seqs)},
            )
            if self.speculative:
                new = commit_tokens(ctx, s.out, row_drafts.tolist(), verdict, s.steps, ["draft"] * gamma, row=s.index)
            else:
                new = [verdict.token]
                rec.add(
                    "emit",
                    step=s.steps,
                    row=s.index,
                    position=s.out.push(verdict.token),
                    token_id=verdict.token,
                    p=verdict.p_token,
                    source="target",
                    t0=t0,
                    t1=t1,
                    info={"top_p": verdict.top_p[0]} if verdict.top_p else {},
                )
            if new:
                s.pending = new[-1]
            kept.append(1 + verdict.accepted)
            s.steps += 1
        if settle:
            self.realign(ctx, seqs, target, draft, kept, gamma + 1, step, clock)
            return [0] * len(seqs)
        for kv in (target, draft):
            kv.valid = [v - (gamma + 1) + k for v, k in zip(kv.valid, kept)]
        return [gamma + 1 - k for k in kept]

    def realign(
        self,
        ctx: RunContext,
        seqs: list[Seq],
        target: BatchKV,
        draft: BatchKV | None,
        kept: list[int],
        block: int,
        step: int,
        clock: RoundClock,
    ) -> None:
        rec = ctx.rec
        t0 = rec.now()
        infos = target.settle(kept, block)
        if draft is not None:
            draft.settle(kept, block)
        t1 = rec.now()
        clock.realign += t1 - t0
        if any(info["shift"] or info["pad_removed"] for info in infos):
            clock.realigned_rounds += 1
        for s, info in zip(seqs, infos):
            rec.add(
                "realign",
                step=s.steps - 1,
                row=s.index,
                source="batch",
                t0=t0,
                t1=t1,
                info={"accepted": info["kept"] - 1, **info, "mode": ctx.params["realign"]},
            )

    def finish_meta(self, ctx: RunContext, clock: RoundClock, seqs: list[Seq]) -> None:
        ctx.meta.update(
            {
                "batch_size": ctx.params["batch_size"],
                "realign_mode": ctx.params["realign"],
                "naive": ctx.params["realign"] == "naive",
                "realign_seconds": clock.realign,
                "seconds": {
                    "prefill": clock.prefill,
                    "draft": clock.draft,
                    "verify": clock.verify,
                    "realign": clock.realign,
                    "schedule": clock.schedule,
                },
                "rounds": clock.rounds,
                "realigned_rounds": clock.realigned_rounds,
                **clock.extra,
            }
        )


class StaticBatch(BatchMethod):
    """Prompts in fixed batches of `batch_size` (static batching): the shared loop of batch AR and EQSPEC."""

    def generate(self, ctx: RunContext) -> None:
        clock = RoundClock()
        seqs = self.new_seqs(ctx)
        size = ctx.params["batch_size"]
        for start in range(0, len(seqs), size):
            group = [s for s in seqs[start : start + size] if not s.out.done]  # done: healed, max_new_tokens 1
            if not group:
                continue
            target, draft = self.prefill(ctx, group, clock)
            step = 0
            while group:
                ctx.check_cancel()
                self.round(ctx, group, target, draft, step, clock)
                clock.rounds += 1
                step += 1
                alive = [i for i, s in enumerate(group) if not s.out.done]
                if len(alive) < len(group) and alive:
                    t0 = ctx.rec.now()
                    target.keep_rows(alive)
                    if draft is not None:
                        draft.keep_rows(alive)
                    clock.realign += ctx.rec.now() - t0
                group = [group[i] for i in alive]
        self.finish_meta(ctx, clock, seqs)


class BatchAutoregressive(StaticBatch):
    name = "batch_autoregressive"
    title = "Batched autoregressive (throughput baseline)"
    speculative = False
    PARAMS = (BATCH_SIZE, REALIGN)


class EQSpec(StaticBatch):
    name = "eqspec"
    title = "EQSPEC (batched speculation, realigned every round)"
    needs_draft = True
    PARAMS = (BATCH_SIZE, GAMMA, REALIGN)


class EXSpec(BatchMethod):
    name = "exspec"
    title = "EXSPEC (sliding pool, same-length grouping)"
    needs_draft = True
    PARAMS = (
        BATCH_SIZE,
        GAMMA,
        REALIGN,
        Param("pool_factor", int, 2, 1, 8, help="pool holds pool_factor x batch_size sequences"),
    )

    def generate(self, ctx: RunContext) -> None:
        rec, clock = ctx.rec, RoundClock()
        seqs = self.new_seqs(ctx)
        size = ctx.params["batch_size"]
        capacity = size * ctx.params["pool_factor"]
        queue = [s for s in seqs if not s.out.done]  # done: healed, max_new_tokens 1
        pool: dict[int, tuple[Seq, BatchKV, BatchKV]] = {}
        step = 0
        while queue or pool:
            ctx.check_cancel()
            while queue and len(pool) < capacity:  # new requests enter the pool
                s = queue.pop(0)
                target, draft = self.prefill(ctx, [s], clock)
                pool[s.index] = (s, target, draft)
            t0 = rec.now()
            chosen, same = self.choose_group(pool, size)
            members = [pool[i] for i in chosen]
            group = [m[0] for m in members]
            target, padded_t = BatchKV.stack(ctx.pair.target, ctx.vocab, [m[1] for m in members], self.naive(ctx))
            draft, _ = BatchKV.stack(ctx.pair.draft, ctx.vocab, [m[2] for m in members], self.naive(ctx))
            t1 = rec.now()
            clock.schedule += t1 - t0
            if padded_t:
                clock.realign += t1 - t0
                clock.realigned_rounds += 1
            else:
                clock.same_length_rounds += 1
            for s in group:
                rec.add(
                    "schedule",
                    step=s.steps,
                    row=s.index,
                    source="pool",
                    t0=t0,
                    t1=t1,
                    info={
                        "group": chosen,
                        "length": s.length,
                        "same_length": same,
                        "padded": padded_t,
                        "pool": len(pool),
                        "queued": len(queue),
                    },
                )
            if padded_t:
                for s, member in zip(group, members):
                    rec.add(
                        "realign",
                        step=s.steps,
                        row=s.index,
                        source="pool",
                        t0=t0,
                        t1=t1,
                        info={
                            "reason": "no same-length group fills the batch",
                            "pad_added": target.width - member[1].width,
                            "pad_removed": 0,
                            "shift": 0,
                            "cache_moved": member[1].width,
                            "width_after": target.width,
                            "mode": ctx.params["realign"],
                        },
                    )
            trims = self.round(ctx, group, target, draft, step, clock, settle=False)
            for s, t_part, d_part in zip(group, target.split(trims), draft.split(trims)):
                if s.out.done:
                    del pool[s.index]  # a finished row leaves; a queued request takes its place
                else:
                    pool[s.index] = (s, t_part, d_part)
            clock.rounds += 1
            step += 1
        clock.extra = {"same_length_rounds": clock.same_length_rounds, "pool_capacity": capacity}
        self.finish_meta(ctx, clock, seqs)

    @staticmethod
    def naive(ctx: RunContext) -> bool:
        return ctx.params["realign"] == "naive"

    @staticmethod
    def choose_group(pool: dict, size: int) -> tuple[list[int], bool]:
        """The largest same-length group (oldest rows first); topped up with the nearest lengths if short."""
        by_length: dict[int, list[int]] = {}
        for index, (s, _, _) in sorted(pool.items()):
            by_length.setdefault(s.length, []).append(index)
        length, rows = max(by_length.items(), key=lambda kv: (min(len(kv[1]), size), -min(kv[1])))
        chosen = rows[:size]
        if len(chosen) == size or len(chosen) == len(pool):
            return chosen, True
        others = sorted((abs(s.length - length), i) for i, (s, _, _) in pool.items() if i not in chosen)
        chosen += [i for _, i in others[: size - len(chosen)]]
        return sorted(chosen), False

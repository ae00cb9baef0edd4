"""Mirror-SD: drafting launched from an early-exit signal, in parallel with the target's suffix
(Apple, arXiv 2510.13161), at specviz's scale.

Per round, with drafts d_1..d_k in hand:
1. target prefix: layers [0, l_e) over [last token, d_1..d_k]; the shared norm + head at l_e give an
   early-exit distribution at every position. Its argmax predicts how many drafts the target will
   accept (n^: the first position where it disagrees with the draft) and its top-kappa at n^ are the
   candidates for the token the target will emit there. An `early_exit` event carries them.
2. in parallel: the target runs layers [l_e, N) (the suffix) while the drafter, in a worker thread
   with its own random stream, rolls out a gamma-token branch for every candidate (the kappa branches
   share one prefix, so they run as one batch of kappa rows);
3. verify as usual on the final logits (lossless: acceptance reads only the target's final
   distribution). If the target accepted exactly n^ drafts and emitted a candidate, that candidate's
   branch is the next round's drafts at once ("reused"); else every branch is discarded and the
   next round drafts serially.
Branch events carry their fate; both lanes' spans are measured, so the timeline shows the overlap
that happened. On CPU both lanes share two cores; the paper's setting (drafter on its own
accelerator) is a modeled timeline (`modeled_timeline`), labelled as such.
Our reading where the paper is not public: candidates are taken at the predicted acceptance depth
only (not at every possible rejection depth); speculative streaming (several tokens per drafter
forward) is not implemented.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from specviz.engine import kvcache
from specviz.engine.layers import LayerStack
from specviz.engine.verify import decide
from specviz.methods.base import Method, Param, RunContext
from specviz.methods.calibrate import calibrated_exit
from specviz.methods.rounds import Drafter, commit


@dataclass
class Branches:
    candidates: list[int]  # the kappa early-exit candidates (branch j starts with candidates[j])
    depth: int  # n^: the acceptance length they assume
    tokens: torch.Tensor  # (kappa, gamma) rolled-out drafts
    q: torch.Tensor  # (kappa, gamma, V) drafter probabilities of each step
    kv: kvcache.KVCache  # drafter cache of all kappa rows (fed through the second-to-last draft)
    t0: float
    t1: float


def default_exit(pair, depth: int, vocab: int | None = None) -> int:
    """The trained early exit nearest half the target's depth (the embedded target's meta lists them);
    for a target without trained exits, the calibrated logit-lens exit (specviz.methods.calibrate)."""
    meta = (pair.extras or {}).get("target_meta") or {}
    exits = [e for e in meta.get("exits", []) if isinstance(e, int) and 1 <= e < depth]
    if exits:
        return min(exits, key=lambda e: (abs(e - depth / 2), e))
    if vocab is None or depth < 2:
        return max(1, depth // 2)

    return calibrated_exit(pair, vocab)["exit_layer"]


class MirrorSD(Method):
    name = "mirror"
    title = "Mirror-SD (early-exit-launched parallel drafting)"
    needs_draft = True
    PARAMS = (
        Param("gamma", int, 4, 1, 16, help="drafts per round (serial drafts and branch rollouts alike)"),
        Param(
            "exit_layer",
            int,
            None,
            1,
            64,
            optional=True,
            help="l_e: the target's early exit that launches the branches (default: the trained exit nearest half "
            "depth; embedded: 6)",
        ),
        Param("kappa", int, 2, 1, 8, help="early-exit candidates, one branch each"),
        Param(
            "parallel",
            bool,
            True,
            help="run the branches in a worker thread beside the target suffix (off: one after the other)",
        ),
    )

    def generate(self, ctx: RunContext) -> None:
        rec, out = ctx.rec, ctx.out
        gamma, le, kappa = ctx.params["gamma"], ctx.params["exit_layer"], ctx.params["kappa"]
        stack = LayerStack(ctx.pair.target, ctx.vocab)
        if le is None:
            le = ctx.params["exit_layer"] = default_exit(ctx.pair, stack.depth, ctx.vocab)
            if not ((ctx.pair.extras or {}).get("target_meta") or {}).get("exits"):
                ctx.meta["exit_calibration"] = calibrated_exit(ctx.pair, ctx.vocab)
        if le >= stack.depth:
            raise ValueError(f"exit_layer must be below the target's {stack.depth} layers; got {le}")
        drafter = Drafter(ctx, ctx.pair.draft)
        branch_gen = torch.Generator(device="cpu").manual_seed(ctx.params["seed"] + 0x5EED)
        pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-drafter") if ctx.params["parallel"] else None
        )
        hits = rounds_with_branches = 0
        try:
            seq = ctx.prompt_ids
            head_ids = seq[:, :-1]
            t0 = rec.now()
            if head_ids.shape[1]:
                stack.run(stack.embed_ids(head_ids), 0, stack.depth)
            t1 = rec.now()
            rec.add("prefill", source="target", t0=t0, t1=t1, info={"tokens": head_ids.shape[1]})
            drafter.prefill(head_ids)
            rec.add("prefill", source="draft", t0=t1, t1=rec.now(), info={"tokens": head_ids.shape[1]})
            ready: tuple[torch.Tensor, torch.Tensor] | None = None  # drafts from a reused branch
            step = 0
            while not out.done:
                ctx.check_cancel()
                length = seq.shape[1]
                budget = min(gamma, out.room - 1)
                if ready is not None:
                    drafts, q = ready[0][:budget], ready[1][:budget]
                else:
                    drafts, q = drafter.propose(seq, budget, step)
                k = len(drafts)
                # 1. target prefix and the early-exit signal
                block = torch.cat([seq[:, -1:], drafts.view(1, -1)], dim=1)
                t0 = rec.now()
                h_e = stack.run(stack.embed_ids(block), 0, le)
                exit_probs = torch.softmax(stack.logits(h_e)[0].float(), dim=-1)  # (k+1, V)
                guess = exit_probs.argmax(-1)
                agree = (guess[:k] == drafts).int()
                depth_hat = int(agree.cumprod(0).sum().item()) if k else 0
                top = torch.topk(exit_probs[depth_hat], kappa)
                candidates = top.indices.tolist()
                t1 = rec.now()
                rec.add(
                    "verify",
                    step=step,
                    source=f"target[:{le}]",
                    t0=t0,
                    t1=t1,
                    info={"tokens": block.shape[1], "part": "prefix"},
                )
                rec.add(
                    "early_exit",
                    step=step,
                    depth=depth_hat,
                    source=f"target[:{le}]",
                    t0=t1,
                    t1=t1,
                    info={
                        "reason": "mirror signal",
                        "candidates": candidates,
                        "candidate_probs": top.values.tolist(),
                        "confidence": float(top.values[0]),
                        "predicted_accepted": depth_hat,
                    },
                )
                # 2. branches beside the target suffix
                launch = out.room - (depth_hat + 1) > 1  # a next round will exist
                branch_args = (ctx, drafter, seq, drafts, depth_hat, candidates, gamma, branch_gen)
                future = pool.submit(self.rollout, *branch_args) if launch and pool else None
                t0 = rec.now()
                logits = stack.logits(stack.run(h_e, le, stack.depth))[0]  # (k+1, V)
                t_suffix = rec.now()
                branches = future.result() if future else (self.rollout(*branch_args) if launch else None)
                # 3. verify on the final distribution
                verdict = decide(ctx.sampling, drafts, q, logits, ctx.generator, top=ctx.dist_top, rule=ctx.verify_rule)
                rec.add(
                    "verify",
                    step=step,
                    source=f"target[{le}:]",
                    t0=t0,
                    t1=t_suffix,
                    info={"tokens": block.shape[1], "part": "suffix", "drafts": k, "accepted": verdict.accepted},
                )
                seq = commit(ctx, seq, drafts, verdict, step, [drafter.source] * k)
                keep = length + verdict.accepted
                stack.crop(keep)
                ready = None
                if branches is not None:
                    rounds_with_branches += 1
                    hit = verdict.accepted == branches.depth and verdict.token in branches.candidates
                    chosen = branches.candidates.index(verdict.token) if hit else -1
                    for j, cand in enumerate(branches.candidates):
                        rec.add(
                            "branch",
                            step=step,
                            depth=branches.depth,
                            token_id=cand,
                            source="draft",
                            t0=branches.t0,
                            t1=branches.t1,
                            info={
                                "fate": "reused" if j == chosen else "discarded",
                                "branch": j,
                                "tokens": branches.tokens[j].tolist(),
                                "lane": "drafter",
                            },
                        )
                    if hit:
                        hits += 1
                        ready = (branches.tokens[chosen], branches.q[chosen])
                        branches.kv.select_rows(torch.tensor([chosen], device=seq.device))
                        drafter.decoder.kv = branches.kv
                        for depth, token_id in enumerate(ready[0].tolist()):
                            rec.add(
                                "draft",
                                step=step + 1,
                                token_id=token_id,
                                q=float(ready[1][depth, token_id]),
                                depth=depth,
                                source=drafter.source,
                                t0=branches.t0,
                                t1=branches.t1,
                                info={"branch": chosen},
                            )
                if ready is None:
                    drafter.rollback(keep)
                step += 1
        finally:
            if pool:
                pool.shutdown(wait=True)
        ctx.meta["mirror"] = {
            "branch_rounds": rounds_with_branches,
            "hits": hits,
            "hit_rate": hits / rounds_with_branches if rounds_with_branches else None,
        }

    @staticmethod
    @torch.inference_mode()
    def rollout(
        ctx: RunContext,
        drafter: Drafter,
        seq: torch.Tensor,
        drafts: torch.Tensor,
        depth: int,
        candidates: list[int],
        gamma: int,
        generator: torch.Generator,
    ) -> Branches:
        """kappa branches, one per candidate, each gamma drafts after [seq, d_1..d_depth, candidate]."""
        t0 = ctx.rec.now()
        kappa = len(candidates)
        dec = drafter.decoder
        full = torch.cat([seq, drafts[:depth].view(1, -1)], dim=1)  # committed + assumed-accepted drafts
        base = min(dec.length, full.shape[1])
        kv = dec.kv.repeated(base, kappa, dec.model.config)
        cand = torch.tensor(candidates, device=seq.device).view(kappa, 1)
        feed = torch.cat([full[:, base:].expand(kappa, -1), cand], dim=1)  # (kappa, T)
        tokens, qs = [], []
        for i in range(gamma):
            logits = kv.forward(dec.model, feed.shape[1], input_ids=feed, use_cache=True, logits_to_keep=1).logits[
                :, -1, : ctx.vocab
            ]
            token, q = ctx.sampling.choose(logits, generator)
            tokens.append(token)
            qs.append(q)
            if i + 1 < gamma:
                feed = token.view(kappa, 1)
        return Branches(
            candidates=candidates,
            depth=depth,
            tokens=torch.stack(tokens, dim=1),
            q=torch.stack(qs, dim=1),
            kv=kv,
            t0=t0,
            t1=ctx.rec.now(),
        )

"""S2D: sorted speculative decoding (arXiv 2407.01955).

One sorted drafter (SoFT-trained: an exit after each of its layers, all through the shared final
norm and head) serves several targets. Per draft token the sub-model is chosen by confidence:
run layer 1; if the exit's top-1 probability exceeds theta, draft from it; else continue with
layer 2 from the layer-1 state, and so on; the last layer always drafts. A token that exited early
lacks the deeper layers' KV: its state waits and is pushed through those layers together with the
next token that goes that deep (lazy KV fill); rollback crops every layer and drops waiting states
of rejected drafts. `sub_model=k` fixes the depth instead (the paper's fixed baselines).
Several targets: run with a nested target (`load_pair(..., target_depth=8)`); the drafter is the same.
With temperature > 0 drafts are sampled from q (the reference takes argmax), so sampling stays exact.
"""
from __future__ import annotations

import torch

from ..engine import Decoder
from ..layers import LayerStack
from .base import GAMMA, Method, Param, RunContext
from .draft_model import commit, prefill_both, verify_block


class SortedDrafter:
    """A sorted drafter's layer stack with states waiting for their deeper layers."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, theta: float, sub_model: int):
        self.ctx = ctx
        self.stack = LayerStack(model, ctx.vocab)
        self.depth = self.stack.depth
        if sub_model > self.depth:
            raise ValueError(f"sub_model must be 0 (adaptive) or 1..{self.depth} for this sorted drafter; got {sub_model}")
        self.theta, self.sub_model = theta, sub_model
        self.waiting: list[torch.Tensor | None] = [None] * (self.depth + 1)  # inputs to layer j, from position lengths[j]
        self.fed = 0  # positions embedded so far

    def _queue(self, j: int, states: torch.Tensor) -> None:
        self.waiting[j] = states if self.waiting[j] is None else torch.cat([self.waiting[j], states], dim=1)

    def prefill(self, ids: torch.Tensor) -> None:
        if ids.shape[1]:
            self.stack.run(self.stack.embed_ids(ids), 0, self.depth)
            self.fed = ids.shape[1]

    def draft_one(self, token: torch.Tensor) -> tuple[torch.Tensor, int, list[float]]:
        """Embed `token` (1, T) and go as deep as confidence requires: (logits (1, V), exit k, confidences)."""
        self._queue(0, self.stack.embed_ids(token))
        self.fed += token.shape[1]
        confidences = []
        for j in range(self.depth):
            x, self.waiting[j] = self.waiting[j], None
            y = self.stack.run(x, j, j + 1)
            k = j + 1
            logits = self.stack.logits(y[:, -1])
            probs = self.ctx.sampling.probs(logits)
            confidences.append(float(probs.max().item()))
            if k < self.depth:
                self._queue(k, y)
            if k == self.depth or (self.sub_model and k == self.sub_model) or (not self.sub_model and confidences[-1] > self.theta):
                return logits, k, confidences
        raise AssertionError("unreachable")

    def rollback(self, length: int) -> None:
        for j in range(self.depth):
            start = self.stack.lengths[j]
            if self.waiting[j] is not None:
                keep = length - start
                self.waiting[j] = self.waiting[j][:, :keep] if keep > 0 else None
        self.stack.crop(length)
        self.fed = min(self.fed, length)


class Sorted(Method):
    name = "sorted"
    title = "S2D sorted speculative decoding"
    memo_safe = True
    PARAMS = (
        GAMMA,
        Param("theta", float, 0.5, 0.0, 1.0, help="confidence to draft from a shallower exit (the paper: 0.5 at each but the last)"),
        Param("sub_model", int, 0, 0, 64, help="0 = adaptive per token; k = always draft from the first k layers"),
    )

    def generate(self, ctx: RunContext) -> None:
        rec, out = ctx.rec, ctx.out
        model = ctx.pair.extras.get("sorted_drafter") if ctx.pair.extras else None
        if model is None:
            raise ValueError("sorted needs a sorted (SoFT) drafter: the embedded pair ships one; "
                             "put a Llama-family model in pair.extras['sorted_drafter']")
        gamma = ctx.params["gamma"]
        drafter = SortedDrafter(ctx, model, ctx.params["theta"], ctx.params["sub_model"])
        target: Decoder = ctx.decoder(ctx.pair.target)
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, "sorted")
        step = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            budget = min(gamma, out.room - 1)
            tokens, qs, sources = [], [], []
            pending = seq[:, drafter.fed:]
            for depth in range(budget):
                t0 = rec.now()
                logits, k, confidences = drafter.draft_one(pending)
                token, q = ctx.sampling.choose(logits, ctx.generator)
                t1 = rec.now()
                token_id = int(token.item())
                source = f"sorted[:{k}]"
                rec.add("draft", step=step, token_id=token_id, q=float(q[0, token_id].item()), depth=depth, source=source,
                        t0=t0, t1=t1, info={"exit": k, "confidences": confidences})
                if k < drafter.depth:
                    rec.add("early_exit", step=step, depth=depth, source=source, t0=t1, t1=t1,
                            info={"reason": "fixed sub-model" if ctx.params["sub_model"] else "confidence",
                                  "confidence": confidences[-1], "theta": ctx.params["theta"], "layers": k})
                tokens.append(token)
                qs.append(q[0])
                sources.append(source)
                pending = token.view(1, 1)
            drafts = torch.cat(tokens) if tokens else seq.new_zeros(0)
            q = torch.stack(qs) if qs else torch.zeros(0, ctx.vocab, device=seq.device)
            verdict = verify_block(ctx, target, seq, drafts, q, step)
            seq = commit(ctx, seq, drafts, verdict, step, sources)
            target.rollback(length + verdict.accepted)
            drafter.rollback(length + verdict.accepted)
            step += 1

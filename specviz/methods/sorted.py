"""S2D: sorted speculative decoding (arXiv 2407.01955).

One sorted drafter (SoFT-trained: an exit after each of its layers, all through the shared final
norm and head) serves several targets. Per draft token the sub-model is chosen by confidence:
run layer 1; if the exit's top-1 probability exceeds theta, draft from it; else continue with
layer 2 from the layer-1 state, and so on; the last layer always drafts. A token that exited early
lacks the deeper layers' KV: its state waits and is pushed through those layers together with the
next token that goes that deep (lazy KV fill); rollback crops every layer and drops waiting states
of rejected drafts. `sub_model=k` fixes the depth instead (the paper's fixed baselines).
Several targets: run with a nested target (`load_pair(..., target_depth=8)`); the drafter is the same.

`policy="cost"` (the default) chooses the depth per token by expected accepted tokens per unit of cost
instead of a fixed threshold: at exit k it goes one layer deeper only when the expected tokens that layer
adds (the acceptance gained there, times the chance this draft is reached at all) per unit of cost beat
the run's own throughput so far (tokens per unit of cost; autoregressive decoding's before the first
verdict). Costs are the weights a step reads (a layer and the exit head it is read through, against one
target step: MBSU's memory-bound model), not wall time, so a seeded run stays reproducible; acceptance is
calibrated online per exit and confidence bin from this run's own verdicts (prior: the confidence itself),
and so is what one more layer buys a token of a given confidence (prior: the deeper exit's average).
`policy="threshold"` is the paper's rule (theta).
With temperature > 0 drafts are sampled from q (the reference takes argmax), so sampling stays exact.
"""

from __future__ import annotations

import torch

from specviz.engine.layers import LayerStack
from specviz.engine.protocols import Decoder
from specviz.methods.base import GAMMA, Method, Param, RunContext
from specviz.methods.rounds import commit, prefill_both, verify_block
from specviz.models.anatomy import weights_read_per_token


class SortedDrafter:
    """A sorted drafter's layer stack with states waiting for their deeper layers."""

    BINS = 5

    def __init__(
        self, ctx: RunContext, model: torch.nn.Module, theta: float, sub_model: int, policy: str = "threshold"
    ):
        self.ctx = ctx
        self.stack = LayerStack(model, ctx.vocab)
        self.depth = self.stack.depth
        if sub_model > self.depth:
            raise ValueError(
                f"sub_model must be 0 (adaptive) or 1..{self.depth} for this sorted drafter; got {sub_model}"
            )
        self.theta, self.sub_model, self.policy = theta, sub_model, policy
        self.waiting: list[torch.Tensor | None] = [None] * (
            self.depth + 1
        )  # inputs to layer j, from position lengths[j]
        self.fed = 0  # positions embedded so far
        # the cost policy's measurements: seconds of layer j (+ its exit), one target step, acceptance per exit and bin

        target_step = weights_read_per_token(ctx.pair.target)
        head = sum(p.numel() for p in self.stack.head.parameters()) + sum(
            p.numel() for p in self.stack.norm.parameters()
        )
        # one token through layer j and read out at its exit, in target steps (weights read)
        self.layer_cost = [
            (sum(p.numel() for p in layer.parameters()) + head) / target_step for layer in self.stack.layers
        ]
        # committed tokens per target step of drafting + verifying, this run; before its first verdict,
        # autoregressive decoding's (1 token per target step): the rate any drafting has to beat
        self.throughput = 1.0
        self.rounds = 0
        self.reach = 1.0  # chance the draft being made now is reached (every earlier draft this round accepted)
        self.round_cost = 1.0  # this round's cost so far: the verification (about one target step) + drafting
        self.accepted = [[(b + 0.5) / self.BINS * 2 for b in range(self.BINS)] for _ in range(self.depth)]
        self.judged = [[2.0] * self.BINS for _ in range(self.depth)]
        # acceptance of drafts that went on past exit k with their exit-k confidence in bin b: what going deeper
        # buys a token *this* uncertain (an exit's average flatters the hard tokens that reach it)
        self.deeper_accepted = [[0.0] * self.BINS for _ in range(self.depth)]
        self.deeper_judged = [[0.0] * self.BINS for _ in range(self.depth)]

    def _bin(self, confidence: float) -> int:
        return min(self.BINS - 1, int(confidence * self.BINS))

    def expected(self, k: int, confidence: float | None = None) -> float:
        """Acceptance expected of a draft from exit k (1-based): at this confidence, or over all its drafts."""
        if confidence is not None:
            b = self._bin(confidence)
            return self.accepted[k - 1][b] / self.judged[k - 1][b]
        return sum(self.accepted[k - 1]) / sum(self.judged[k - 1])

    def expected_deeper(self, k: int, confidence: float) -> float:
        """Acceptance expected if a draft at exit k with this confidence goes on to exit k + 1: what such
        drafts got, with exit k + 1's average as a one-observation prior (optimism that the verdicts correct)."""
        b = self._bin(confidence)
        return (self.expected(k + 1) + self.deeper_accepted[k - 1][b]) / (1.0 + self.deeper_judged[k - 1][b])

    def observe(self, exits: list[list[float]], accepted: int) -> None:
        """Verdicts of one round (each draft's confidence at every exit it passed): drafts 0..accepted-1
        accepted, draft `accepted` rejected, later ones unjudged."""
        for i, confidences in enumerate(exits[: accepted + 1]):
            hit = 1.0 if i < accepted else 0.0
            k = len(confidences)
            b = self._bin(confidences[-1])
            self.judged[k - 1][b] += 1
            self.accepted[k - 1][b] += hit
            for j, passed in enumerate(confidences[:-1]):  # exits it went on from
                b = self._bin(passed)
                self.deeper_judged[j][b] += 1
                self.deeper_accepted[j][b] += hit

    def note_round(self, tokens: int) -> None:
        rate = tokens / self.round_cost
        self.throughput = rate if self.rounds == 0 else 0.8 * self.throughput + 0.2 * rate
        self.rounds += 1
        self.reach, self.round_cost = 1.0, 1.0

    def stop_here(self, k: int, confidence: float) -> bool:
        """At exit k < depth: do the tokens one more layer is expected to add, per second it costs, fall short of
        the run's throughput? (Then drafting here is worth more per unit of cost.)"""
        if self.sub_model:
            return k == self.sub_model
        if self.policy == "threshold":
            return confidence > self.theta  # the paper's rule
        gained = (self.expected_deeper(k, confidence) - self.expected(k, confidence)) * self.reach
        return gained <= self.throughput * self.layer_cost[k]

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
            self.round_cost += self.layer_cost[j]
            if k < self.depth:
                self._queue(k, y)
            if k == self.depth or self.stop_here(k, confidences[-1]):
                self.reach *= self.expected(k, confidences[-1])
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
        Param(
            "theta",
            float,
            0.5,
            0.0,
            1.0,
            help="confidence to draft from a shallower exit (the paper: 0.5 at each but the last)",
        ),
        Param("sub_model", int, 0, 0, 64, help="0 = adaptive per token; k = always draft from the first k layers"),
        Param(
            "policy",
            str,
            "cost",
            choices=("cost", "threshold"),
            help="adaptive choice: expected accepted tokens per unit of measured cost, or the paper's confidence "
            "threshold",
        ),
    )

    def generate(self, ctx: RunContext) -> None:
        rec, out = ctx.rec, ctx.out
        model = ctx.pair.extras.get("sorted_drafter") if ctx.pair.extras else None
        if model is None:
            raise ValueError(
                "sorted needs a sorted (SoFT) drafter: the embedded pair ships one; "
                "put a Llama-family model in pair.extras['sorted_drafter']"
            )
        gamma = ctx.params["gamma"]
        drafter = SortedDrafter(ctx, model, ctx.params["theta"], ctx.params["sub_model"], ctx.params["policy"])
        target: Decoder = ctx.decoder(ctx.pair.target)
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, "sorted")
        step = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            budget = min(gamma, out.room - 1)
            tokens, qs, sources, exits = [], [], [], []
            pending = seq[:, drafter.fed :]
            for depth in range(budget):
                t0 = rec.now()
                logits, k, confidences = drafter.draft_one(pending)
                token, q = ctx.sampling.choose(logits, ctx.generator)
                t1 = rec.now()
                token_id = int(token.item())
                source = f"sorted[:{k}]"
                rec.add(
                    "draft",
                    step=step,
                    token_id=token_id,
                    q=float(q[0, token_id].item()),
                    depth=depth,
                    source=source,
                    t0=t0,
                    t1=t1,
                    info={"exit": k, "confidences": confidences},
                )
                if k < drafter.depth:
                    rec.add(
                        "early_exit",
                        step=step,
                        depth=depth,
                        source=source,
                        t0=t1,
                        t1=t1,
                        info={
                            "reason": "fixed sub-model" if ctx.params["sub_model"] else "confidence",
                            "confidence": confidences[-1],
                            "theta": ctx.params["theta"],
                            "layers": k,
                        },
                    )
                tokens.append(token)
                qs.append(q[0])
                sources.append(source)
                exits.append(confidences)
                pending = token.view(1, 1)
            drafts = torch.cat(tokens) if tokens else seq.new_zeros(0)
            q = torch.stack(qs) if qs else torch.zeros(0, ctx.vocab, device=seq.device)
            verdict = verify_block(ctx, target, seq, drafts, q, step)
            drafter.observe(exits, verdict.accepted)
            drafter.note_round(verdict.accepted + 1)
            seq = commit(ctx, seq, drafts, verdict, step, sources)
            target.rollback(length + verdict.accepted)
            drafter.rollback(length + verdict.accepted)
            step += 1

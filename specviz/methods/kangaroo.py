"""Kangaroo: self-speculative decoding with double early exiting (Liu et al. 2024).

Drafter = the target's first l layers + a small adapter (attention only, see adapter.py) + the
target's own final norm and LM head. Per round:
1. draft: push the newest token through layers [0, l) (their KV goes straight into the target's
   cache), then adapter -> norm -> head -> draft token; repeat;
2. second early exit: stop drafting as soon as the draft's top-1 probability falls under eta (the
   low-confidence token is kept as the last draft), or at gamma drafts;
3. verify: run only layers [l, N) over the stored layer-l states of [last token, d_1..d_k]; the
   shallow layers are never recomputed (only d_k, which no draft step fed, gets its shallow pass);
4. crop target (every layer) and adapter caches to the committed length.
Lossless by the shared rules in verify.py.

The draft's layers, adapter and head run on the lean forward (lean.py) where the target is
Llama-family: on a CPU a decoder step is bound by the bytes of weights it reads, and per-module
framework work added a third on top. The lean shallow pass is bit-identical to the per-layer
transformers path in float32 (tests, load-time self-check), since verification continues from it.
The reference code drafts greedily; with temperature > 0 specviz samples drafts from q (processed
like p), so speculative sampling stays exact.

`lookup=n` makes it a lookup-or-self-draft hybrid, as draft_model's: a round may copy what followed an earlier
occurrence of the text's last n tokens (`prompt_lookup`), whose shallow pass then runs over the whole copy in one
forward; `choose=yield` picks the copy, the early exit or no draft per round (`methods.hybrid`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from specviz.engine import kvcache
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.layers import causal_mask, split_parts
from specviz.engine.lean import LeanAdapter, draft_linear, fast_norm, project, supports
from specviz.engine.protocols import SplitDecoder
from specviz.engine.verify import Verdict
from specviz.methods.base import Method, Param, RunContext, confidence_exit, eta_param
from specviz.methods.calibrate import calibrated_exit
from specviz.methods.draft_model import LOOKUP_GAMMA_PARAM, LOOKUP_PARAM
from specviz.methods.hybrid import CHOOSE, WIDTH_COST
from specviz.methods.prompt_lookup import SOURCE as LOOKUP
from specviz.methods.prompt_lookup import LookupOrDraft
from specviz.methods.rounds import commit, judge
from specviz.methods.vocabtrim import TrimmedHead, kept_ids


def find_adapter(ctx: RunContext, exit_layer: int | None) -> KangarooAdapter | None:
    """The pair's trained adapter, or None: then the draft is the logit lens (no trained parts at all)."""
    adapter = ctx.pair.extras.get("kangaroo_adapter") if ctx.pair.extras else None
    if adapter is None:
        return None
    if exit_layer is not None and adapter.config.exit_layer != exit_layer:
        raise ValueError(
            f"the adapter was trained on layer {adapter.config.exit_layer}; exit_layer={exit_layer} does not match it"
        )
    return adapter


class SelfDraftState:
    """The adapter's own KV cache and the layer-l states of committed tokens it has not seen yet.
    `lean`: the adapter runs on lean.LeanAdapter (preallocated KV) instead of transformers' attention."""

    def __init__(self, adapter: KangarooAdapter, lean: bool = False):
        self.adapter = adapter
        self.lean = LeanAdapter(adapter) if lean else None
        self.kv = kvcache.KVCache(depth=1) if not lean else None  # the adapter is one layer
        self.pending: list[torch.Tensor] = []  # layer-l states (1, 1, d) of positions length.. not fed yet

    @property
    def length(self) -> int:
        """Entries in the adapter's cache."""
        return self.lean.length if self.lean is not None else self.kv.length

    @torch.inference_mode()
    def step(self, hidden_l: torch.Tensor) -> torch.Tensor:
        """Feed the pending states and this one (1, 1, d); return the adapted state (1, d)."""
        h = torch.cat(self.pending + [hidden_l], dim=1) if self.pending else hidden_l
        self.pending = []
        if self.lean is not None:
            out = self.lean(h)
        else:
            past = self.kv.length
            pos = torch.arange(past, past + h.shape[1], device=h.device).unsqueeze(0)
            mask = causal_mask(h.shape[1], past, h.device)
            out = self.kv.run(lambda cache: self.adapter(h, pos, cache, mask), h.shape[1])
        return out[:, -1]

    def crop(self, length: int) -> None:
        if self.lean is not None:
            self.lean.rollback(length)
        else:
            self.kv.crop(length)


class LensDraftState:
    """No adapter: the layer-l state goes straight to the target's final norm and head (the logit lens).
    Same interface as SelfDraftState, with nothing to cache."""

    def __init__(self) -> None:
        self.length = 0
        self.pending: list[torch.Tensor] = []

    def step(self, hidden_l: torch.Tensor) -> torch.Tensor:
        self.pending = []
        return hidden_l[:, -1]

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)


class SelfDrafter:
    """Kangaroo's drafter: the target's shallow pass (layers [0, l) of a `SplitDecoder`), the adapter's state (or the
    logit lens) and the draft head. It proposes tokens, hands verification the layer-l states of the round's block
    (the deep layers continue from them), and rolls every cache back to what was committed."""

    def __init__(self, ctx: RunContext, split: SplitDecoder, state, head: Callable, source: str):
        self.ctx, self.split, self.state, self.head, self.source = ctx, split, state, head, source
        self.adapter = isinstance(state, SelfDraftState)  # False: the logit lens

    def prefill(self, ids: torch.Tensor) -> None:
        """Every layer over ids (1, T); their layer-l states wait for the adapter's first step."""
        states = self.split.prefill(ids)
        self.state.pending = [states] if states is not None else []

    def propose(self, token: torch.Tensor, k: int, step: int, eta: float):
        """Up to k drafts after `token` (1, 1), each from one shallow pass + adapter + head; drafting stops after a
        draft whose top-1 probability is under eta (that draft kept: the second early exit). Returns drafts (k,),
        their q (k, V) (None: no draft) and the layer-l states of [token, d_1 .. d_(k-1)]."""
        ctx, rec, split = self.ctx, self.ctx.rec, self.split
        t0 = rec.now()
        h = split.shallow(token)
        states, tokens, qs = [h], [], []
        for depth in range(k):
            token_t, q = ctx.sampling.choose(self.head(self.state.step(h)), ctx.generator)
            confidence = float(q.max().item())
            t1 = rec.now()
            token_id = int(token_t.item())
            q_x = float(q[0, token_id].item())
            info = {"confidence": confidence}
            rec.add(
                "draft", step=step, token_id=token_id, q=q_x, depth=depth, source=self.source, t0=t0, t1=t1, info=info
            )
            tokens.append(token_t)
            qs.append(q[0])
            if depth + 1 == k or confidence_exit(rec, step, depth, self.source, t1, confidence, eta):
                break
            t0 = rec.now()
            h = split.shallow(token_t.view(1, 1))
            states.append(h)
        drafts = torch.cat(tokens) if tokens else token.new_zeros(0)
        return drafts, torch.stack(qs) if qs else None, states

    def copy_states(self, token: torch.Tensor, copy: torch.Tensor) -> list[torch.Tensor]:
        """A lookup round: the shallow pass of [token, copied drafts] in one forward."""
        return [self.split.shallow(torch.cat([token, copy.view(1, -1)], dim=1))]

    def verify(self, states: list[torch.Tensor], drafts: torch.Tensor, q, step: int, plan: dict | None):
        """Layers [l, N) over the layer-l states of [last token, d_1 .. d_k] (d_k, which no draft step fed, gets its
        shallow pass first) and the verdict on their logits; returns it and the block of states (1, k+1, d)."""
        t0 = self.ctx.rec.now()
        if sum(h.shape[1] for h in states) == len(drafts):
            states = states + [self.split.shallow(drafts[-1:].view(1, 1))]
        block = torch.cat(states, dim=1)  # (1, k+1, d)
        logits = self.split.deep(block)  # (k+1, V)
        return judge(self.ctx, drafts, q, logits, step, t0, f"target[{self.split.exit_layer}:]", plan), block

    def rollback(self, length: int, verdict: Verdict, block: torch.Tensor) -> None:
        """Every cache back to [.. last token, d_1 .. d_n] (n accepted); the adapter will read their layer-l
        states. block[:, 0] is position length - 1; states before it (rounds without a draft step) are pending."""
        keep = length + verdict.accepted
        self.split.rollback(keep)
        self.state.crop(keep)
        start = max(self.state.length, length - 1)
        if keep > start:
            self.state.pending = self.state.pending + [block[:, start - (length - 1) : keep - (length - 1)]]


@torch.inference_mode()
def exit_logits(norm: torch.nn.Module, head: torch.nn.Module, vocab: int, hidden: torch.Tensor) -> torch.Tensor:
    """The target's own final norm and head at an exit: (..., vocab)."""
    return head(norm(hidden))[..., :vocab]


class Kangaroo(Method):
    name = "kangaroo"
    title = "Kangaroo (self-speculative, double early exit)"
    memo_safe = True
    PARAMS = (
        Param("gamma", int, 6, 1, 16, help="maximum draft depth per round (the paper's reference run: 6)"),
        eta_param(0.6),
        Param(
            "exit_layer",
            int,
            None,
            1,
            64,
            optional=True,
            help="l: the draft uses the target's first l layers (default: the adapter's trained layer, "
            "embedded: 2; without an adapter, the calibrated logit-lens exit)",
        ),
        Param(
            "vocab_trim",
            int,
            0,
            0,
            1_000_000,
            help="VocabTrim: keep only the K most frequent target tokens in the draft head (0 = off)",
        ),
        Param(
            "drafter_forward",
            str,
            "lean",
            choices=("lean", "transformers"),
            help="the draft's forward (layers [0, l), adapter, head): specviz's lean Llama-family loop, "
            "bit-identical to transformers' layers in float32, or transformers' per-layer modules; other "
            "architectures (and exactness sessions, which memoize per-layer forwards) always use transformers",
        ),
        LOOKUP_PARAM,
        LOOKUP_GAMMA_PARAM,
        CHOOSE,
        WIDTH_COST,
    )

    def generate(self, ctx: RunContext) -> None:
        out, gamma, eta = ctx.out, ctx.params["gamma"], ctx.params["eta"]
        drafter = self.make_drafter(ctx)
        seq = ctx.prompt_ids
        t0 = ctx.rec.now()
        drafter.prefill(seq[:, :-1])  # all but the last token, which the first round feeds
        info = {"tokens": seq.shape[1] - 1, "adapter": drafter.adapter}
        ctx.rec.add("prefill", source="target", t0=t0, t1=ctx.rec.now(), info=info)
        sources = LookupOrDraft(ctx)
        step = 0
        while not out.done:
            ctx.check_cancel()
            length = seq.shape[1]
            # 1. plan: a copy (lookup=n), up to gamma self-drafts, or (choose=yield) what the verdicts say pays most
            source = sources.plan(seq, step, gamma)
            # 2. draft: the copy's shallow pass in one forward, or layers [0, l) + adapter + head per token until
            #    the confidence exit or the depth limit
            if source.copy is not None:
                drafts, q, by = source.copy, source.q, LOOKUP
                states = drafter.copy_states(seq[:, -1:], drafts)
            else:
                (drafts, q, states), by = drafter.propose(seq[:, -1:], source.k, step, eta), drafter.source
            # 3. verify: layers [l, N) over the stored layer-l states of [last token, d_1 .. d_k]
            verdict, block = drafter.verify(states, drafts, q, step, source.plan_info)
            # 4. accept: commit, roll every cache back to the committed length
            seq = commit(ctx, seq, drafts, verdict, step, [by] * len(drafts))
            drafter.rollback(length, verdict, block)
            sources.update(source, len(drafts), verdict.accepted, seq, length)
            step += 1
        sources.finish(ctx.meta)

    def make_drafter(self, ctx: RunContext) -> SelfDrafter:
        """The exit layer (the adapter's, the one asked for, or the calibrated logit-lens exit), the split target,
        the adapter's state and the draft head; what the trace records of them."""
        target = ctx.pair.target
        _, layers, norm, head, _ = split_parts(target)  # a target that cannot be split by layer is refused here
        l, depth = ctx.params["exit_layer"], len(layers)
        if l is not None and l >= depth:
            raise ValueError(f"exit_layer must be below the target's {depth} layers; got {l}")
        adapter = find_adapter(ctx, l)
        if adapter is not None:
            l = adapter.config.exit_layer
            if l >= depth:
                raise ValueError(f"the adapter was trained on layer {l}, not below this target's {depth} layers")
        elif l is None:  # training-free: the logit lens at the calibrated exit
            calibration = calibrated_exit(ctx.pair, ctx.vocab)
            ctx.meta["exit_calibration"] = calibration
            l = calibration["exit_layer"]
        ctx.params["exit_layer"] = l  # the trace records the layer really used
        lean = ctx.params["drafter_forward"] == "lean" and ctx.once(
            ("lean_supports", id(target)), lambda: supports(target)
        )
        split = ctx.split_decoder(target, l, lean=lean)
        ctx.meta["drafter_forward"] = "lean" if split.lean else "transformers"
        ctx.meta["kangaroo_drafter"] = "adapter" if adapter is not None else "logit lens (no adapter)"
        ctx.meta["draft_params"] = self.draft_params(ctx, layers[:l], norm, head, adapter)
        state = SelfDraftState(adapter, lean=split.lean) if adapter is not None else LensDraftState()
        trim = ctx.params["vocab_trim"]
        source = (f"target[:{l}]+adapter" if adapter is not None else f"target[:{l}]+head (no adapter)") + (
            f"[vocab {trim}]" if trim else ""
        )
        return SelfDrafter(ctx, split, state, self.draft_head(ctx, norm, head, split.lean), source)

    @staticmethod
    def draft_params(ctx: RunContext, layers, norm, head, adapter: KangarooAdapter | None) -> int:
        """Weights one draft step reads: the first l layers, the adapter, the final norm and the (trimmed) head."""

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        head_rows = ctx.params["vocab_trim"] or head.weight.shape[0]
        return sum(count(layer) for layer in layers) + count(adapter) + count(norm) + head_rows * head.weight.shape[1]

    @staticmethod
    def draft_head(ctx: RunContext, norm: torch.nn.Module, head: torch.nn.Module, lean: bool) -> Callable:
        """Adapted state (1, d) -> draft logits (1, V): the target's norm and head, or VocabTrim's
        K-row head (composed with Kangaroo: only the drafter's copy of the head is cut). The draft only
        steers proposals, so `lean` may use the fused norm."""
        k = ctx.params["vocab_trim"]
        norm_of = partial(fast_norm, norm) if lean else norm
        if not k:
            if not lean:
                return partial(exit_logits, norm, head, ctx.vocab)
            return lambda hidden: project(draft_linear, head, norm_of(hidden))[..., : ctx.vocab]

        trimmed = ctx.once(
            ("kangaroo_trimmed_head", id(head), k),
            lambda: TrimmedHead(head, kept_ids(ctx.pair, k, ctx.vocab, ctx.prompt_ids.device), ctx.vocab),
        )
        return lambda hidden: trimmed(norm_of(hidden))

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

import torch

from specviz.engine import kvcache
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.layers import LayerStack, causal_mask
from specviz.engine.lean import LeanAdapter, LeanDecoder, draft_linear, fast_norm, project, supports
from specviz.engine.verify import decide
from specviz.methods.base import Method, Param, RunContext, confidence_exit, eta_param
from specviz.methods.calibrate import calibrated_exit
from specviz.methods.draft_model import LOOKUP_GAMMA_PARAM, LOOKUP_PARAM, draft_cost
from specviz.methods.hybrid import CHOOSE, WIDTH_COST, SourceChooser
from specviz.methods.prompt_lookup import SOURCE as LOOKUP
from specviz.methods.prompt_lookup import NgramIndex, one_hot, record_copies
from specviz.methods.rounds import commit
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


class LayerMemo:
    """Exactness sessions only (`specviz.analysis.exactness`, ctx.memo set): the stack's layer-range forwards and
    the adapter's steps memoized by the token ids they cover. A hit re-appends the KV entries the first
    computation appended (through the cache's KVCache), so every cache ends as if the forward had run."""

    MAX_BYTES = 256 * 2**20  # kept before the memo starts over

    def __init__(self) -> None:
        self.table: dict[tuple, tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def call(self, key: tuple, kv: kvcache.KVCache, layers: range, compute, after=None) -> torch.Tensor:
        """compute() (which appends to `layers` of `kv`), or its remembered output with its entries replayed."""
        hit = self.table.get(key)
        if hit is not None and len(hit[1]) == len(layers) and kv.ready(layers):
            out, entries = hit
            kv.replay(layers, entries)
            if after is not None:
                after()
            self.hits += 1
            return out
        self.misses += 1
        before = [kv.lengths[i] for i in layers]
        out = compute()
        entries = kv.since(layers, before)
        size = sum(t.numel() * t.element_size() for t in [out] + [x for kv_pair in entries for x in kv_pair])
        if self.bytes + size > self.MAX_BYTES:
            self.table.clear()
            self.bytes = 0
        self.table[key] = (out, entries)
        self.bytes += size
        return out


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
            help="l: the draft uses the target's first l layers (default: the adapter's trained layer, embedded: 2; "
            "without an adapter, the calibrated logit-lens exit)",
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
            help="the draft's forward (layers [0, l), adapter, head): specviz's lean Llama-family loop, bit-identical "
            "to transformers' layers in float32, or transformers' per-layer modules; other architectures (and "
            "exactness sessions, which memoize per-layer forwards) always use transformers",
        ),
        LOOKUP_PARAM,
        LOOKUP_GAMMA_PARAM,
        CHOOSE,
        WIDTH_COST,
    )

    def generate(self, ctx: RunContext) -> None:
        rec, out = ctx.rec, ctx.out
        gamma, eta, l = ctx.params["gamma"], ctx.params["eta"], ctx.params["exit_layer"]
        stack = LayerStack(ctx.pair.target, ctx.vocab)
        lean = (
            ctx.params["drafter_forward"] == "lean"
            and ctx.memo is None
            and ctx.once(("lean_supports", id(ctx.pair.target)), lambda: supports(ctx.pair.target))
        )
        ctx.meta["drafter_forward"] = "lean" if lean else "transformers"
        if l is not None and l >= stack.depth:
            raise ValueError(f"exit_layer must be below the target's {stack.depth} layers; got {l}")
        adapter = find_adapter(ctx, l)
        if adapter is not None:
            l = adapter.config.exit_layer
            if l >= stack.depth:
                raise ValueError(f"the adapter was trained on layer {l}, not below this target's {stack.depth} layers")
            draft = SelfDraftState(adapter, lean=lean)
        else:  # training-free: the logit lens at a calibrated (or the given) exit
            if l is None:
                calibration = calibrated_exit(ctx.pair, ctx.vocab)
                ctx.meta["exit_calibration"] = calibration
                l = calibration["exit_layer"]
            draft = LensDraftState()
        ctx.params["exit_layer"] = l  # the trace records the layer really used
        # the shallow pass: lean (its own preallocated KV for layers [0, l), exact arithmetic: verification
        # continues from its states) or the stack's per-layer transformers modules (their KV in the stack's cache)
        shallow_pass = LeanDecoder(ctx.pair.target, ctx.vocab, depth=l, exact=True) if lean else None
        ctx.meta["kangaroo_drafter"] = "adapter" if adapter is not None else "logit lens (no adapter)"
        head = self.draft_head(ctx, stack, lean)
        ctx.meta["draft_params"] = self.draft_params(ctx, stack, adapter, l)
        source = (f"target[:{l}]+adapter" if adapter is not None else f"target[:{l}]+head (no adapter)") + (
            f"[vocab {ctx.params['vocab_trim']}]" if ctx.params["vocab_trim"] else ""
        )

        seq = ctx.prompt_ids
        t0 = rec.now()
        # exactness sessions (ctx.shared set) prefill a prompt once: each sample crops every cache back to it
        key = ("kangaroo_prefill", id(ctx.pair.target), id(adapter) if adapter is not None else None, l)
        saved = ctx.shared.get(key) if ctx.shared is not None else None
        if saved is not None and saved[0] == seq[0, :-1].tolist():
            _, stack, draft, h_l = saved  # exactness sessions only, which never take the lean path
            stack.crop(seq.shape[1] - 1)
            draft.crop(0)
            draft.pending = [h_l] if h_l is not None else []
        else:
            h_l = None
            if seq.shape[1] > 1:
                h_l = (
                    shallow_pass.states(seq[:, :-1])
                    if shallow_pass is not None
                    else stack.run(stack.embed_ids(seq[:, :-1]), 0, l)
                )
                stack.run(h_l, l, stack.depth)
                draft.pending = [h_l]
            if ctx.shared is not None:
                ctx.shared[key] = (seq[0, :-1].tolist(), stack, draft, h_l)
        rec.add(
            "prefill",
            source="target",
            t0=t0,
            t1=rec.now(),
            info={"tokens": seq.shape[1] - 1, "adapter": adapter is not None},
        )
        memo = (
            ctx.once(("kangaroo_layer_memo", ctx.params["vocab_trim"]) + key[1:], LayerMemo)
            if ctx.memo is not None
            else None
        )
        full: list[int] = seq[0].tolist() if memo is not None else []  # memo keys: committed ids + this round's drafts

        def shallow(ids: torch.Tensor) -> torch.Tensor:
            """Layers [0, l) over ids (1, T): their layer-l states (one token a draft step; a lookup round's last token
            and its copies at once)."""
            if shallow_pass is not None:
                return shallow_pass.states(ids)
            compute = lambda: stack.run(stack.embed_ids(ids), 0, l)  # noqa: E731
            if memo is None:
                return compute()
            pos = stack.lengths[0]
            return memo.call(("shallow", pos, tuple(full[: pos + ids.shape[1]])), stack.kv, range(0, l), compute)

        def draft_logits(h: torch.Tensor) -> torch.Tensor:
            compute = lambda: head(draft.step(h))  # noqa: E731
            if memo is None or adapter is None:
                return compute()
            new = sum(x.shape[1] for x in draft.pending) + 1

            def seen() -> None:
                draft.pending = []

            return memo.call(
                ("adapter", draft.length, tuple(full[: draft.length + new])), draft.kv, range(1), compute, seen
            )

        def deep_logits(block: torch.Tensor) -> torch.Tensor:
            compute = lambda: stack.logits(stack.run(block, l, stack.depth))[0]  # noqa: E731
            if memo is None:
                return compute()
            pos, new = stack.lengths[l], block.shape[1]
            return memo.call(("deep", pos, tuple(full[: pos + new])), stack.kv, range(l, stack.depth), compute)

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
            length = seq.shape[1]
            budget = min(gamma, out.room - 1)
            plan, ngram, copies = None, 0, []
            copy_budget = min(ctx.params["lookup_gamma"], out.room - 1)
            if chooser is not None:
                plan, ngram = chooser.plan_round(index, copy_budget, budget)
                budget = plan.k if plan.source == "draft" else 0
                copy_budget = plan.k if plan.source == LOOKUP else 0
            if index is not None and copy_budget > 0:
                t0 = rec.now()
                copies, sources, ngram = index.draft(copy_budget, ctx.vocab)
                record_copies(ctx, step, copies, sources, ngram, ctx.prompt_ids.shape[1], t0)
            # 1-2. draft through layers [0, l) + adapter until the confidence exit or the depth limit (or copy)
            states = []  # layer-l states of [last token, d_1 .. d_k]
            tokens, qs = [], []
            token = seq[:, -1:]
            t0 = rec.now()
            if copies:
                lookup_rounds += 1
                copied = torch.tensor(copies, dtype=seq.dtype, device=seq.device)
                tokens = list(copied.split(1))
                if memo is not None:
                    full.extend(copies)
                states.append(shallow(torch.cat([token, copied.view(1, -1)], dim=1)))
                budget = 0
            else:
                h = shallow(token)
                states.append(h)
            for depth in range(budget):
                logits = draft_logits(h)
                token_t, q = ctx.sampling.choose(logits, ctx.generator)
                confidence = float(q.max().item())
                t1 = rec.now()
                token_id = int(token_t.item())
                rec.add(
                    "draft",
                    step=step,
                    token_id=token_id,
                    q=float(q[0, token_id].item()),
                    depth=depth,
                    source=source,
                    t0=t0,
                    t1=t1,
                    info={"confidence": confidence},
                )
                tokens.append(token_t)
                qs.append(q[0])
                if memo is not None:
                    full.append(token_id)
                if depth + 1 < budget and confidence_exit(rec, step, depth, source, t1, confidence, eta):
                    break
                if depth + 1 == budget:
                    break
                t0 = rec.now()
                h = shallow(token_t.view(1, 1))
                states.append(h)
            drafts = torch.cat(tokens) if tokens else seq.new_zeros(0)
            q = one_hot(copies, ctx.vocab, seq.device) if copies else (torch.stack(qs) if qs else None)
            # 3. verify: the last draft's shallow pass, then layers [l, N) over every stored state
            t0 = rec.now()
            if tokens and not copies:
                states.append(shallow(drafts[-1:].view(1, 1)))
            block = torch.cat(states, dim=1)  # (1, k+1, d)
            logits = deep_logits(block)  # (k+1, V)
            verdict = decide(ctx.sampling, drafts, q, logits, ctx.generator, top=ctx.dist_top, rule=ctx.verify_rule)
            rec.add(
                "verify",
                step=step,
                source=f"target[{l}:]",
                t0=t0,
                t1=rec.now(),
                info={
                    "tokens": block.shape[1],
                    "drafts": len(tokens),
                    "accepted": verdict.accepted,
                    **({"plan": plan.info()} if plan is not None else {}),
                },
            )
            seq = commit(ctx, seq, drafts, verdict, step, [LOOKUP if copies else source] * len(tokens))
            if chooser is not None:
                chooser.update(plan, len(tokens), verdict.accepted, ngram)
            if index is not None:
                index.extend(seq[0, length:].tolist())
            if memo is not None:
                full = seq[0].tolist()
            # 4. roll back to [.. last token, d_1..d_n]; keep their layer-l states for the adapter
            keep = length + verdict.accepted
            stack.crop(keep)
            if shallow_pass is not None:
                shallow_pass.rollback(keep)
            draft.crop(keep)
            # states of committed positions the adapter has not seen; block[:, 0] is position length-1,
            # and positions before it (rounds without a draft step) are already in draft.pending
            start = max(draft.length, length - 1)
            if keep > start:
                draft.pending = draft.pending + [block[:, start - (length - 1) : keep - (length - 1)]]
            step += 1
        if index is not None:
            ctx.meta["lookup"] = {"rounds": step, "lookup_rounds": lookup_rounds}
        if chooser is not None:
            ctx.meta["chooser"] = chooser.summary()

    @staticmethod
    def draft_params(ctx: RunContext, stack: LayerStack, adapter: KangarooAdapter | None, l: int) -> int:
        """Weights one draft step reads: the first l layers, the adapter, the final norm and the (trimmed) head."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        head_rows = ctx.params["vocab_trim"] or stack.head.weight.shape[0]
        return (
            sum(count(layer) for layer in stack.layers[:l])
            + count(adapter)
            + count(stack.norm)
            + head_rows * stack.head.weight.shape[1]
        )

    def draft_head(self, ctx: RunContext, stack: LayerStack, lean: bool = False):
        """Adapted state (1, d) -> draft logits (1, V): the target's norm and head, or VocabTrim's
        K-row head (composed with Kangaroo: only the drafter's copy of the head is cut). The draft only
        steers proposals, so `lean` may use the fused norm."""
        k = ctx.params["vocab_trim"]
        norm = (lambda hidden: fast_norm(stack.norm, hidden)) if lean else stack.norm
        if not k:
            if not lean:
                return stack.logits
            return lambda hidden: project(draft_linear, stack.head, norm(hidden))[..., : ctx.vocab]

        trimmed = ctx.once(
            ("kangaroo_trimmed_head", id(stack.head), k),
            lambda: TrimmedHead(stack.head, kept_ids(ctx.pair, k, ctx.vocab, ctx.prompt_ids.device), ctx.vocab),
        )
        return lambda hidden: trimmed(norm(hidden))

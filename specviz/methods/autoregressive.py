"""The baseline every speedup is measured against: one target forward per token, on a KV cache."""

from __future__ import annotations

from specviz.engine.verify import top_entries
from specviz.methods.base import Method, RunContext


class Autoregressive(Method):
    name = "autoregressive"
    title = "Autoregressive (baseline)"
    memo_safe = True

    def generate(self, ctx: RunContext) -> None:
        rec, out = ctx.rec, ctx.out
        target = ctx.decoder(ctx.pair.target)
        t0 = rec.now()
        logits = target.feed(ctx.prompt_ids)  # (1, V)
        t1 = rec.now()
        rec.add("prefill", source="target", t0=t0, t1=t1, info={"tokens": ctx.prompt_ids.shape[1]})
        step = 0
        top = ctx.dist_top
        while True:
            token, probs = ctx.sampling.choose(logits, ctx.generator)
            token_id = int(token.item())
            position = out.push(token_id)
            if rec.enabled:
                rec.add(
                    "emit",
                    step=step,
                    position=position,
                    token_id=token_id,
                    p=float(probs[0, token_id].item()),
                    source="target",
                    t0=t0,
                    t1=rec.now(),
                    info={"top_p": top_entries(probs, top)[0]} if top else {},
                )
            if out.done:
                break
            ctx.check_cancel()
            step += 1
            t0 = rec.now()
            logits = target.feed(token.view(1, 1))

"""transformers' own assisted generation, the peer we compare against (not our loop).

`target.generate(..., assistant_model=draft)` is opaque: the trace holds one prefill span for
the whole call and an `emit` per output token (no drafts, accepts or timings inside). Greedy
only, because its sampling draws from torch's global RNG, which concurrent runs would share.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from specviz.methods.base import GAMMA, Method, Param, RunContext
from specviz.methods.draft_model import GAMMA_SCHEDULE


class HFAssisted(Method):
    name = "hf_assisted"
    title = "transformers assisted generation (peer)"
    needs_draft = True
    peer = True
    PARAMS = (
        GAMMA,
        GAMMA_SCHEDULE,
        Param(
            "confidence_threshold",
            float,
            0.0,
            0.0,
            1.0,
            help="assistant_confidence_threshold (transformers' default 0.4; 0 = off, a fixed gamma)",
        ),
    )

    def generate(self, ctx: RunContext) -> None:
        opaque_generate(
            ctx,
            self.name,
            {"assistant_model": ctx.pair.draft},
            num_assistant_tokens=ctx.params["gamma"],
            num_assistant_tokens_schedule=ctx.params["gamma_schedule"],
            assistant_confidence_threshold=ctx.params["confidence_threshold"],
        )


def opaque_generate(
    ctx: RunContext, name: str, models: dict, limit: int | None = None, after: list[int] | None = None, **config
) -> None:
    """`target.generate` greedy with `config`, recorded as one prefill span and an `emit` per output token. It
    continues from the prompt plus `after` (what an earlier call of the same run emitted: a second call finishes
    what a first left), for at most `limit` new tokens (default: the room left)."""
    if not ctx.sampling.greedy:
        raise ValueError(f"{name} runs greedy only here (temperature 0): its sampling uses torch's global RNG")
    rec, out, pair = ctx.rec, ctx.out, ctx.pair
    eos = sorted(out.eos_ids)
    prefix = ctx.prompt_ids
    if after:
        prefix = torch.cat([prefix, torch.tensor([after], dtype=prefix.dtype, device=prefix.device)], dim=1)
    cfg = GenerationConfig(
        max_new_tokens=out.room if limit is None else limit,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else 0,
        **config,
    )
    t0 = rec.now()
    with torch.inference_mode():
        ids = pair.target.generate(prefix, attention_mask=torch.ones_like(prefix), generation_config=cfg, **models)
    t1 = rec.now()
    rec.add("prefill", source="transformers.generate", t0=t0, t1=t1, info={"opaque": True})
    for token_id in ids[0, prefix.shape[1] :].tolist():
        if out.done:
            break
        rec.add("emit", step=0, position=out.push(int(token_id)), token_id=int(token_id), source=name, t0=t1, t1=t1)

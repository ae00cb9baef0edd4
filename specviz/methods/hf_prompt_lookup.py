"""transformers' own prompt lookup, the peer of `prompt_lookup` (not our loop).

`target.generate(..., prompt_lookup_num_tokens=gamma, max_matching_ngram_size=max_ngram)`: what a user of
transformers turns on first. Opaque like `hf_assisted`: one prefill span and an `emit` per output token; greedy
only. transformers matches the n-gram's earliest occurrence (ours, the most recent), matches down to one token
(ours, by default, down to two: `min_ngram`) and never copies past the text's end.
"""

from __future__ import annotations

from specviz.engine.decoder import context_limit
from specviz.methods.base import Method, RunContext
from specviz.methods.hf_assisted import opaque_generate
from specviz.methods.prompt_lookup import LOOKUP_GAMMA, MAX_NGRAM


class HFPromptLookup(Method):
    """transformers' prompt lookup decoding (generate(prompt_lookup_num_tokens=...)), as a peer row."""

    name = "hf_prompt_lookup"
    peer = True
    title = "transformers prompt lookup (peer)"
    PARAMS = (LOOKUP_GAMMA, MAX_NGRAM)

    def generate(self, ctx: RunContext) -> None:
        config = dict(prompt_lookup_num_tokens=ctx.params["gamma"], max_matching_ngram_size=ctx.params["max_ngram"])
        # transformers 5.24 caps a copy by the text it copies from, not by the context left
        # (PromptLookupCandidateGenerator.get_candidates in generation/candidate_generator.py), so near the end its
        # verification feeds positions past a learned position table (GPT-2's wpe raises). The lookup stops
        # gamma + 1 tokens short of the context and plain greedy `generate` finishes the run.
        past = ctx.prompt_ids.shape[1] + ctx.out.limit + ctx.params["gamma"] + 1 - context_limit(ctx.pair.target)
        if past <= 0:
            opaque_generate(ctx, self.name, {}, **config)
            return
        start = len(ctx.out.ids)  # a healed prompt's first token is in the output and in prompt_ids already
        if ctx.out.limit > past:
            opaque_generate(ctx, self.name, {}, limit=ctx.out.limit - past, **config)
        if not ctx.out.done:
            opaque_generate(ctx, self.name, {}, after=ctx.out.ids[start:])

"""transformers' own prompt lookup, the peer of `prompt_lookup` (not our loop).

`target.generate(..., prompt_lookup_num_tokens=gamma, max_matching_ngram_size=max_ngram)`: what a user of
transformers turns on first. Opaque like `hf_assisted`: one prefill span and an `emit` per output token; greedy
only. transformers matches the n-gram's earliest occurrence (ours, the most recent), matches down to one token
(ours, by default, down to two: `min_ngram`) and never copies past the text's end.
"""

from __future__ import annotations

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
        opaque_generate(
            ctx,
            self.name,
            {},
            prompt_lookup_num_tokens=ctx.params["gamma"],
            max_matching_ngram_size=ctx.params["max_ngram"],
        )

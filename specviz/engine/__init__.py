"""The engine floor: run a decode step and record what happened.

The one event schema (`trace`), the lossless acceptance rules (`verify`), the one seam to transformers' caches
(`kvcache`), the protocols every decoder implements (`protocols`: `Decoder`, `SplitDecoder`), the decoders that feed
tokens, read logits and roll back (`decoder`, `layers`, `split`, `lean`, and `memo`: forwards memoized across runs
of one prompt), the batched cache (`batch_cache`), token healing (`healing`) and the Kangaroo adapter module
(`adapter`).

Rule: the ground floor. It imports nothing from specviz but the leaves (`specviz.paths`, `specviz.shown`).


The names the flat module of the same name offered are re-exported, imported on first use; `Decoder` is now the
protocol (the transformers-backed decoder it named is `TransformersDecoder`).
"""

from __future__ import annotations

from specviz.lazy import exports

_EXPORTS = {
    "Decoder": "specviz.engine.protocols",
    "SplitDecoder": "specviz.engine.protocols",
    "TransformersDecoder": "specviz.engine.decoder",
    "Output": "specviz.engine.decoder",
    "eos_ids": "specviz.engine.decoder",
    "context_limit": "specviz.engine.decoder",
}
__all__ = list(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)

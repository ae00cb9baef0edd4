"""The seams a method sees of a model: what every decoder offers, and what a target split at an exit layer offers.

Methods get both from `RunContext` (`ctx.decoder`, `ctx.split_decoder`), never by building one: a plain run gets
the transformers or lean implementation, an exactness session (`specviz.analysis.exactness`) the memoizing one
(`specviz.engine.memo`). A method written against these protocols therefore has no special case for either.

Implementations: `Decoder` by `engine.decoder.TransformersDecoder`, `engine.lean.LeanDecoder` and
`engine.memo.MemoDecoder`; `SplitDecoder` by `engine.split.SplitTarget` and `engine.memo.MemoSplit`.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Decoder(Protocol):
    """A causal LM over one sequence (batch 1) with its own KV cache: feed tokens, read logits, roll back.

    Invariant: the cache holds exactly the tokens fed that are still committed (`length` of them); rollback is an
    index, never a copy."""

    model: torch.nn.Module
    vocab: int  # logits are cut to this width (the pair's common vocabulary)

    @property
    def length(self) -> int:
        """Tokens the cache holds."""
        ...

    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ids (1, T); return the logits (keep, vocab) of the last `keep` positions."""
        ...

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ids (1, T); return the final-normed hidden states (1, T, d) (VocabTrim applies its own head)."""
        ...

    def feed_tree(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append a token tree's nodes (1, T) with their position ids (1, T) and additive attention mask
        (1, 1, T, length + T); return the logits (T, vocab) of every node."""
        ...

    def keep_path(self, positions: list[int]) -> None:
        """Keep only the cache entries at `positions` (ascending): a verified tree's accepted path."""
        ...

    def rollback(self, length: int) -> None:
        """Drop cached entries beyond `length` tokens."""
        ...

    def reset(self) -> None:
        """Drop every cached entry."""
        ...


class SplitDecoder(Protocol):
    """A Llama-family target split at exit layer l, over one sequence: layers [0, l) over token ids (the shallow
    pass a self-speculative drafter drafts from), and layers [l, N) + final norm + LM head over stored layer-l
    states (its verification, which never recomputes the shallow layers). Every layer's cache holds the committed
    tokens after `rollback`; between the two passes the shallow layers may hold more than the deep ones."""

    exit_layer: int  # l
    lean: bool  # the shallow pass runs on engine.lean (bit-identical in float32), not transformers' layer modules

    @property
    def length(self) -> int:
        """Tokens the deep layers hold."""
        ...

    def prefill(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Every layer over ids (1, T) (no LM head): the prompt. Returns their layer-l states (1, T, d), None for
        T = 0."""
        ...

    def shallow(self, ids: torch.Tensor) -> torch.Tensor:
        """Layers [0, l) over ids (1, T), appended to their caches: the layer-l states (1, T, d)."""
        ...

    def deep(self, states: torch.Tensor) -> torch.Tensor:
        """Layers [l, N) + norm + head over layer-l states (1, T, d) of the positions after `length`: the target's
        logits (T, vocab)."""
        ...

    def rollback(self, length: int) -> None:
        """Every layer keeps at most `length` entries."""
        ...

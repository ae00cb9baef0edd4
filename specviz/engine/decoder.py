"""The transformers-backed decoder (`TransformersDecoder`): feed tokens, read logits, roll back, on a model's own
forward; and the stop rules of one output (`Output`).

It implements `specviz.engine.protocols.Decoder`, the seam every method sees (as do the lean and the memoizing
decoders). Invariant kept by every method and asserted in tests: a model's cache holds exactly the tokens
it was fed that are still committed; rollback is an index (`KVCache.crop`), never a copy; the cache and its
length belong to one `specviz.engine.kvcache.KVCache`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from specviz.engine.kvcache import KVCache

# Tests switch this on: every feed and rollback then asserts the cache holds exactly `length` entries.
CHECKS = os.environ.get("SPECVIZ_CHECKS") == "1"


@dataclass
class TransformersDecoder:
    """A causal LM with its own KV cache over one sequence (batch 1), run by its own transformers forward."""

    model: torch.nn.Module
    vocab: int  # logits are cut to this width (the pair's common vocabulary)
    kv: KVCache = field(init=False)
    base: torch.nn.Module = field(init=False, repr=False)  # the decoder stack, final norm included (no LM head)

    def __post_init__(self) -> None:
        self.base = self.model.base_model
        self.reset()

    @property
    def length(self) -> int:
        """Tokens the cache holds."""
        return self.kv.length

    def reset(self) -> None:
        self.kv = KVCache(self.model.config, growing=True)

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ids (1, T) to the cache; return logits (keep, vocab) of the last `keep` positions."""
        out = self.kv.forward(self.model, ids.shape[1], input_ids=ids, use_cache=True, logits_to_keep=keep)
        if CHECKS:
            self.check()
        return out.logits[0, -keep:, : self.vocab]

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ids (1, T); return the final-normed hidden states (1, T, d), before the LM head."""
        out = self.kv.forward(self.base, ids.shape[1], input_ids=ids, use_cache=True)
        if CHECKS:
            self.check()
        return out.last_hidden_state

    @torch.inference_mode()
    def feed_tree(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append the nodes ids (1, T) of a token tree with their position ids (1, T) and additive attention mask
        (1, 1, T, length + T) (`specviz.engine.tree.tree_mask`); return the logits (T, vocab) of every node."""
        out = self.kv.forward(
            self.model,
            ids.shape[1],
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=ids.shape[1],
        )
        if CHECKS:
            self.check()
        return out.logits[0, :, : self.vocab]

    @torch.inference_mode()
    def keep_path(self, positions: list[int]) -> None:
        """Keep only the cache entries at `positions` (ascending): a verified tree's accepted path."""
        self.kv.gather(positions)
        if CHECKS:
            self.check()

    def rollback(self, length: int) -> None:
        """Drop cached entries beyond `length` tokens."""
        self.kv.crop(length)
        if CHECKS:
            self.check()

    def check(self) -> None:
        """The cache really holds `length` entries (tests call this after every step)."""
        assert len(set(self.kv.lengths)) == 1, f"layers were fed different lengths: {self.kv.lengths}"
        self.kv.check()


class Output:
    """The generated tokens of one sequence, with the stop rules (EOS, max_new_tokens)."""

    def __init__(self, max_new_tokens: int, eos_ids: set[int], context_room: int):
        self.ids: list[int] = []
        self.limit = min(max_new_tokens, context_room)
        self.eos_ids = eos_ids
        self.finish_reason = ""
        self._context_bound = context_room < max_new_tokens

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    @property
    def room(self) -> int:
        return 0 if self.done else self.limit - len(self.ids)

    def push(self, token: int) -> int:
        """Append one token; return its position. Sets finish_reason on EOS or at the limit."""
        assert not self.done, "push after the run finished"
        self.ids.append(token)
        if token in self.eos_ids:
            self.finish_reason = "eos"
        elif len(self.ids) >= self.limit:
            self.finish_reason = "context" if self._context_bound else "length"
        return len(self.ids) - 1


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def context_limit(model) -> int:
    """Longest sequence the model's positions allow (large if it does not say)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 20

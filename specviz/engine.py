"""The one place that owns single-sequence KV caches: feed tokens, read logits, roll back.

Invariant kept by every method and asserted in tests: a model's cache holds exactly the tokens
it was fed that are still committed; rollback is an index (`DynamicCache.crop`), never a copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import os

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Tests switch this on: every feed and rollback then asserts the cache holds exactly `length` entries.
CHECKS = os.environ.get("SPECVIZ_CHECKS") == "1"


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that writes new keys/values into a buffer grown by doubling instead of
    `torch.cat`-ing the whole history every step. The cat made each forward copy the full cache (on a
    small CPU model, 30-55 % of a verification's time); what attention sees is identical: views of
    exactly the held entries. `crop` (inherited) just narrows the views."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _owns_views(self) -> bool:
        return self.buffers is not None and self.keys.numel() > 0 and self.keys.data_ptr() == self.buffers[0].data_ptr()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        end = held + key_states.shape[-2]
        buffers = self.buffers if (held == 0 or self._owns_views()) else None  # keys replaced from outside
        if buffers is None or end > buffers[0].shape[-2] or buffers[0].shape[:-2] != key_states.shape[:-2]:
            capacity = max(end, 2 * held, 64)
            buffers = (key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1])),
                       value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1])))
            if held:
                buffers[0][..., :held, :] = self.keys
                buffers[1][..., :held, :] = self.values
            self.buffers = buffers
        buffers[0][..., held:end, :] = key_states
        buffers[1][..., held:end, :] = value_states
        self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
        return self.keys, self.values


def growing_cache(config) -> DynamicCache:
    """A DynamicCache whose full-attention layers are GrowingLayers (sliding-window layers stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@dataclass
class Decoder:
    """A causal LM with its own KV cache over one sequence (batch 1)."""

    model: torch.nn.Module
    vocab: int  # logits are cut to this width (the pair's common vocabulary)
    cache: DynamicCache = field(init=False)
    length: int = field(init=False, default=0)  # tokens the cache holds

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cache = growing_cache(self.model.config)
        self.length = 0

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ids (1, T) to the cache; return logits (keep, vocab) of the last `keep` positions."""
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=keep)
        self.length += ids.shape[1]
        if CHECKS:
            self.check()
        return out.logits[0, -keep:, : self.vocab]

    def rollback(self, length: int) -> None:
        """Drop cached entries beyond `length` tokens."""
        if length < self.length:
            self.cache.crop(length - self.length)  # transformers 5: a negative count of tokens to drop
            self.length = length
        if CHECKS:
            self.check()

    def check(self) -> None:
        """The cache really holds `length` entries (tests call this after every step)."""
        held = [layer.get_seq_length() for layer in self.cache.layers]
        assert all(h == self.length for h in held), f"cache layers hold {held} entries, expected {self.length}"


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

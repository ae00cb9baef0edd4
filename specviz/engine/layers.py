"""Run a slice of a decoder's layers over hidden states, on the model's own KV cache.

Self-speculative methods need what a plain forward cannot give: the state after layer l
(Kangaroo, Mirror-SD's early exit), the remaining layers over stored states (Kangaroo's
verification), or a token pushed through deeper layers later than shallower ones (S2D's lazy KV
fill). `LayerStack` gives exactly that for architectures whose decoder layers take rotary position
embeddings computed once at model level (Llama, Qwen2, Mistral and kin); each layer's cache entry
grows only when that layer runs, so layer caches may hold different lengths, and `crop` rolls
every layer back to a committed length.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from specviz.engine import kvcache


def split_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module, nn.Module]:
    """(embed_tokens, layers, final norm, lm_head, rotary_emb) of a Llama-family causal LM."""
    inner = getattr(model, "model", None)
    parts = [getattr(inner, name, None) for name in ("embed_tokens", "layers", "norm", "rotary_emb")]
    if inner is None or any(p is None for p in parts):
        raise ValueError(
            f"{type(model).__name__} cannot be split by layer here: self-speculative methods need a Llama-family "
            "target (rotary positions at model level: Llama, Qwen2, Mistral, ...)"
        )
    embed, layers, norm, rotary = parts
    return embed, layers, norm, model.get_output_embeddings(), rotary


def causal_mask(new: int, past: int, device: torch.device) -> torch.Tensor | None:
    """Boolean (1, 1, new, past + new) mask aligned bottom-right; None for one new token (sees all)."""
    if new == 1:
        return None
    return torch.ones(new, past + new, dtype=torch.bool, device=device).tril(past)[None, None]


class LayerStack:
    """A Llama-family model's layers with one DynamicCache whose layers may hold different lengths."""

    def __init__(self, model: nn.Module, vocab: int):
        self.model = model
        self.embed, self.layers, self.norm, self.head, self.rotary = split_parts(model)
        self.vocab = vocab
        self.kv = kvcache.KVCache(model.config, depth=len(self.layers))  # layers may hold different lengths

    @property
    def depth(self) -> int:
        return len(self.layers)

    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)  # (1, T, d)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Layers [start, end) over hidden (1, T, d) whose positions follow layer `start`'s cache."""
        if start >= end:
            return hidden
        first = self.kv.lengths[start]
        new = hidden.shape[1]
        pos = torch.arange(first, first + new, device=hidden.device).unsqueeze(0)
        pos_emb = self.rotary(hidden, pos)
        mask = causal_mask(new, first, hidden.device)
        for i in range(start, end):
            assert self.kv.lengths[i] == first, f"layer {i} holds {self.kv.lengths[i]} entries, layer {start} {first}"
            out = self.kv.forward(
                self.layers[i],
                new,
                range(i, i + 1),
                hidden_states=hidden,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                position_embeddings=pos_emb,
            )
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared final norm and LM head (an exit anywhere in the stack): (..., vocab)."""
        return self.head(self.norm(hidden))[..., : self.vocab]

    @property
    def lengths(self) -> list[int]:
        """Entries each layer's cache holds."""
        return self.kv.lengths

    def crop(self, length: int) -> None:
        """Every layer keeps at most `length` entries."""
        self.kv.crop(length)

    def check(self) -> None:
        self.kv.check()


def nested_model(model: nn.Module, depth: int) -> nn.Module:
    """The first `depth` layers + the shared final norm and head, as a model of its own (S2D's nested
    targets). Parameters are shared with `model`, not copied."""
    _, layers, _, _, _ = split_parts(model)
    if not 1 <= depth <= len(layers):
        raise ValueError(f"nested depth must be between 1 and {len(layers)}; got {depth}")
    if depth == len(layers):
        return model
    nested = copy.copy(model)  # shallow: same parameters; own module tables so the original is untouched
    nested._modules = dict(model._modules)
    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)
    inner.layers = nn.ModuleList(list(layers)[:depth])
    nested.model = inner
    nested.config = cut_config(model.config, depth)
    nested.model.config = nested.config
    return nested


def cut_config(config, layers: int):
    """A copy of a model's config cut to its first `layers` layers (per-layer attention types cut with it):
    the config of a nested target, a sorted drafter or a student of the same architecture."""
    cut = copy.deepcopy(config)
    cut.num_hidden_layers = layers
    if getattr(cut, "layer_types", None):
        cut.layer_types = list(cut.layer_types)[:layers]
    return cut

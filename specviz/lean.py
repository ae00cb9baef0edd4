"""A lean single-sequence forward for small Llama-family drafters.

On a CPU a 1-layer drafter spends about three quarters of a `model(...)` call in framework work
(mask building, cache bookkeeping, module dispatch) and a quarter in matrix products (DESIGN.md,
"Measured"), so the drafter costs c = 0.2 of the target where its arithmetic says 0.05. This
decoder runs the same weights with the minimum of calls: preallocated KV buffers indexed by
length (rollback is a number), a rotary table computed once, one SDPA call per layer.

Only the drafter runs here. Its logits steer what gets proposed, never what gets emitted — the
target verifies every draft on its transformers forward — so output equality with autoregressive
decoding does not depend on this code; tests still check its logits against transformers'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .engine import context_limit
from .kvcache import full_attention_only
from .layers import split_parts

LEAN_TYPES = ("llama", "qwen2", "mistral")  # RMSNorm, RoPE at model level, q/k/v/o + SwiGLU, no q/k norms,
# and only where no layer has a sliding window


def supports(model: nn.Module) -> bool:
    """True where `LeanDecoder` reproduces the model's own forward."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in LEAN_TYPES:
        return False
    try:
        _, layers, _, _, rotary = split_parts(model)
    except ValueError:
        return False
    if getattr(rotary, "rope_type", "default") != "default" or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        return False
    if not full_attention_only(cfg):
        return False  # a sliding window would change which keys are seen
    first = layers[0]
    attn, mlp = first.self_attn, first.mlp
    return (all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and not hasattr(attn, "q_norm") and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")))


class LeanDecoder:
    """Same interface as `engine.Decoder` (feed / rollback / length) over a Llama-family model."""

    def __init__(self, model: nn.Module, vocab: int, capacity: int = 256):
        cfg = model.config
        self.model = model
        self.vocab = vocab
        self.embed, self.layers, self.norm, self.head, rotary = split_parts(model)
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = [layer.input_layernorm.variance_epsilon for layer in self.layers]
        self.limit = context_limit(model)
        self.inv_freq = rotary.inv_freq
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.length = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._grow(min(capacity, self.limit))

    def _grow(self, capacity: int) -> None:
        """(Re)allocate KV buffers and the rotary table for `capacity` positions, keeping what is held."""
        shape = (1, self.kv_heads, capacity, self.head_dim)
        keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        for old, new in zip(self.keys + self.values, keys + values):
            new[:, :, : self.length] = old[:, :, : self.length]
        self.keys, self.values, self.capacity = keys, values, capacity
        positions = torch.arange(capacity, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.to(self.device, torch.float32)[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)  # (capacity, head_dim)

    def reset(self) -> None:
        self.length = 0

    def rollback(self, length: int) -> None:
        self.length = min(self.length, length)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ids (1, T); return the final-normed hidden states (1, T, d)."""
        new = ids.shape[1]
        past, end = self.length, self.length + new
        if end > self.capacity:
            if end > self.limit:
                raise ValueError(f"the drafter's context is {self.limit} positions")
            self._grow(min(self.limit, max(end, 2 * self.capacity)))
        x = self.embed(ids)
        cos, sin = self.cos[past:end], self.sin[past:end]
        mask = None if new == 1 else torch.ones(new, end, dtype=torch.bool, device=ids.device).tril(past)
        gqa = self.kv_heads != self.heads
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = F.rms_norm(x, (x.shape[-1],), layer.input_layernorm.weight, self.eps[i])
            q = attn.q_proj(h).view(1, new, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, new, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, new, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.keys[i][:, :, past:end] = k
            self.values[i][:, :, past:end] = v
            a = F.scaled_dot_product_attention(q, self.keys[i][:, :, :end], self.values[i][:, :, :end],
                                               attn_mask=mask, enable_gqa=gqa)
            x = x + attn.o_proj(a.transpose(1, 2).reshape(1, new, -1))
            h = F.rms_norm(x, (x.shape[-1],), layer.post_attention_layernorm.weight, self.eps[i])
            x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
        self.length = end
        return F.rms_norm(x, (x.shape[-1],), self.norm.weight, self.norm.variance_epsilon)

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ids (1, T); return logits (keep, vocab) of the last `keep` positions."""
        return self.head(self.hidden(ids)[0, -keep:])[:, : self.vocab]

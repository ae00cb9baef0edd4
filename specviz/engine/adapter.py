"""Kangaroo's adapter: one attention-only decoder block that lifts the target's shallow hidden
state (after layer l) close enough to its final state that the target's own final norm and LM
head turn it into a usable draft distribution.

Design as in Kangaroo (Liu et al. 2024): input RMSNorm -> multi-head self-attention with RoPE
-> residual; no MLP. The target's final norm and LM head are reused (frozen), so the adapter
adds about 4*d^2 + d parameters. It is built from transformers' own Llama attention, rotary and
norm modules, and is saved as safetensors plus a small JSON config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding

from specviz.engine import kvcache

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


@dataclass(frozen=True)
class AdapterConfig:
    hidden_size: int  # d of the target's hidden states
    num_attention_heads: int  # heads of the adapter's attention
    num_key_value_heads: int  # KV heads (GQA)
    head_dim: int  # per-head width
    exit_layer: int  # l: the adapter reads the target's state after this many layers
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048

    def to_llama(self) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            num_hidden_layers=1,
            intermediate_size=4 * self.hidden_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            vocab_size=1,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )


class KangarooAdapter(nn.Module):
    """h_l (B, T, d) -> h_adapted (B, T, d), to be fed to the target's final norm and LM head."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        llama = config.to_llama()
        llama._attn_implementation = "sdpa"
        self.input_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = LlamaAttention(llama, layer_idx=0)
        self.rotary = LlamaRotaryEmbedding(llama)

    def forward(
        self,
        hidden: torch.Tensor,  # (B, T, d) target state after layer l
        position_ids: torch.Tensor,  # (B, T) absolute positions
        cache: Cache | None = None,  # the adapter's own one-layer KV cache
        attention_mask: torch.Tensor | None = None,  # 4-D additive mask or None for causal
    ) -> torch.Tensor:
        pos_emb = self.rotary(hidden, position_ids)
        new = hidden.shape[1]
        if attention_mask is None and new > 1:
            # Causal, aligned to the bottom right: new token i sees every cached entry and new <= i.
            past = cache.get_seq_length(0) if cache is not None else 0
            attention_mask = torch.ones(new, past + new, dtype=torch.bool, device=hidden.device).tril(past)[None, None]
        attn_out, _ = kvcache.forward(
            self.attn,
            cache,
            hidden_states=self.input_norm(hidden),
            position_embeddings=pos_emb,
            attention_mask=attention_mask,
            is_causal=False,
        )
        return hidden + attn_out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        state = {
            k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items() if "rotary" not in k
        }
        save_file(state, str(directory / ADAPTER_WEIGHTS))

    @classmethod
    def load(
        cls, directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "KangarooAdapter":
        directory = Path(directory)
        config = AdapterConfig(**json.loads((directory / ADAPTER_CONFIG).read_text()))
        adapter = cls(config)
        state = load_file(str(directory / ADAPTER_WEIGHTS))
        missing, unexpected = adapter.load_state_dict(state, strict=False)
        if unexpected or any("rotary" not in k for k in missing):
            raise ValueError(
                f"adapter weights in {directory} do not match its config: missing={missing} unexpected={unexpected}"
            )
        return adapter.to(device=device, dtype=dtype).eval()

    @classmethod
    def for_target(cls, target_config, exit_layer: int, identity: bool = False) -> "KangarooAdapter":
        """A freshly initialised adapter shaped for a target's hidden size (random tiny models in tests).
        `identity`: its output projection starts at zero, so the untrained adapter IS the logit lens and
        distillation can only move it from there (how specviz.workshop.parts_training starts)."""
        text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        d = text.hidden_size
        heads = getattr(text, "num_attention_heads", max(1, d // 64))
        head_dim = getattr(text, "head_dim", None) or d // heads
        adapter = cls(
            AdapterConfig(
                hidden_size=d,
                num_attention_heads=heads,
                num_key_value_heads=heads,
                head_dim=head_dim,
                exit_layer=exit_layer,
                rms_norm_eps=float(getattr(text, "rms_norm_eps", 1e-6) or 1e-6),
                max_position_embeddings=int(getattr(text, "max_position_embeddings", 2048) or 2048),
            )
        )
        if identity:
            torch.nn.init.zeros_(adapter.attn.o_proj.weight)
        return adapter

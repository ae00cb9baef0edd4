"""EAGLE's draft head: one decoder layer over the target's own hidden states (Li et al. 2024, 2025).

The head drafts from features the target already computed in its verification forward, so a chain of k drafts
costs k forwards of this one layer and no drafter model.

Alignment (as in EAGLE's code): the head's entry t pairs the target's feature f_t (it has seen x_0..x_t) with the
embedding of the next token x_{t+1}; its output g_t predicts x_{t+2}. Entry t sits at rotary position t, which is
also its index in the head's own KV cache. After the last real entry the head runs on its own output g (a
"feature" it predicted) and the embedding of the token it just drafted.

Layer ids index transformers' `hidden_states` (`model(..., output_hidden_states=True).hidden_states`): id 0 is the
embeddings, id i the output of decoder layer i (1-based), and id L (L = num_hidden_layers) the last layer's output
AFTER the final norm, i.e. the LM head's input (transformers replaces the last entry with the normed state). This
is the convention of EAGLE-3's code (it captures the input of layers 2, L//2 and L-3), of vLLM's
`aux_hidden_state_layers` and of `speculators`' `eagle_aux_hidden_state_layer_ids`.

Two versions:
- EAGLE-1: feature = hidden_states[L] (EAGLE-1's code feeds the base model's output, which is after the final
  norm), x = fc(cat(embed(token), feature)) (2h -> h, with bias), one Llama layer without input norm, then the
  TARGET's LM head directly (no norm): logits over the full vocabulary.
- EAGLE-3: raw feature = cat(hidden_states[low], [mid], [high]) (3h) fused by fc (3h -> h, no bias). The layer's
  q/k/v take 2h inputs: cat(input_layernorm(embed(token)), hidden_norm(fused)); the residual is the fused
  feature (or its normed form if `norm_before_residual`). Then its own final `norm` and `lm_head` over a reduced
  draft vocabulary of `draft_vocab_size` ids, with `d2t` (offsets: target id = draft id + d2t[draft id]) and `t2d`
  (bool over the target vocabulary: which ids the draft vocabulary holds).

The module's parameter names are EAGLE-3's published ones (`fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d`),
so its state dict is that layout; `specviz.models.eagle_checkpoint` maps the others. The target's embedding (and
EAGLE-1's LM head) are shared, never stored here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from specviz.engine import kvcache
from specviz.engine.verify import Sampling


@dataclass(frozen=True)
class EagleConfig:
    version: int  # 1 (EAGLE-1: fc over cat(embedding, feature), target's LM head) or 3 (EAGLE-3)
    hidden_size: int  # h: the head's width; the target's embedding rows must have this width
    intermediate_size: int  # the layer's MLP width
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # per-head width
    vocab_size: int  # the target's vocabulary (rows of its embedding and LM head)
    draft_vocab_size: int  # EAGLE-3: rows of the head's own lm_head; EAGLE-1: equals vocab_size
    layer_ids: tuple[int, ...]  # indices into transformers' hidden_states (0 = embeddings), in fc's input order
    target_hidden_size: int | None = None  # width of each target feature when it differs from h (EAGLE-3)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    fc_bias: bool = False  # EAGLE-1's fc has a bias (its config's `bias`, default true); EAGLE-3's has none
    attention_bias: bool = False
    mlp_bias: bool = False
    norm_before_residual: bool = False  # EAGLE-3 variant: the residual is hidden_norm(fused), not fused

    def __post_init__(self) -> None:
        if self.version not in (1, 3):
            raise ValueError(f"EagleConfig.version must be 1 or 3, got {self.version}")
        if self.version == 1 and (len(self.layer_ids) != 1 or self.draft_vocab_size != self.vocab_size):
            raise ValueError(
                f"EAGLE-1 reads one feature over the full vocabulary: layer_ids={self.layer_ids}, "
                f"draft_vocab_size={self.draft_vocab_size}, vocab_size={self.vocab_size}"
            )
        if not 0 < self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"draft_vocab_size={self.draft_vocab_size} must be in 1..vocab_size={self.vocab_size}")

    @property
    def feature_width(self) -> int:
        """Width of one target feature."""
        return self.target_hidden_size or self.hidden_size

    def to_llama(self) -> LlamaConfig:
        """The Llama config of the head's one layer (also what its rotary embedding and cache are built from)."""
        config = LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            num_hidden_layers=1,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act=self.hidden_act,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            vocab_size=self.vocab_size,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        config._attn_implementation = "sdpa"
        return config


def default_layer_ids(num_hidden_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low, mid and high features of an L-layer target: (2, L//2, L-3), as its code and vLLM choose."""
    return (2, num_hidden_layers // 2, num_hidden_layers - 3)


def gather_features(hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor], layer_ids) -> torch.Tensor:
    """cat(hidden_states[i] for i in layer_ids) along the last axis: (B, T, k * H), the head's raw input."""
    return torch.cat([hidden_states[i] for i in layer_ids], dim=-1)


class EagleLayer(nn.Module):
    """The head's one decoder layer. EAGLE-3: q/k/v over cat(input_layernorm(embedding), hidden_norm(feature))
    (2h); EAGLE-1: a plain Llama layer without input norm, run on fc's output."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.version = config.version
        self.norm_before_residual = config.norm_before_residual
        llama = config.to_llama()
        self.self_attn = LlamaAttention(llama, layer_idx=0)
        if config.version == 3:
            d, bias = 2 * config.hidden_size, config.attention_bias
            heads, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
            self.self_attn.q_proj = nn.Linear(d, heads * hd, bias=bias)
            self.self_attn.k_proj = nn.Linear(d, kv * hd, bias=bias)
            self.self_attn.v_proj = nn.Linear(d, kv * hd, bias=bias)
            self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(llama)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, h): EAGLE-3 the fused feature, EAGLE-1 fc(cat(embedding, feature))
        embeds: torch.Tensor | None,  # (B, T, h) token embeddings (EAGLE-3 only)
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        if self.version == 3:
            normed = self.hidden_norm(x)
            residual = normed if self.norm_before_residual else x
            attn_in = torch.cat((self.input_layernorm(embeds), normed), dim=-1)  # (B, T, 2h)
        else:
            residual, attn_in = x, x
        attn_out, _ = kvcache.forward(
            self.self_attn,
            cache,
            hidden_states=attn_in,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            is_causal=False,
        )
        h = residual + attn_out
        return h + self.mlp(self.post_attention_layernorm(h))


class EagleHead(nn.Module):
    """The head's weights and one forward. Runtime state (its KV cache, the fed-back feature) is `EagleDrafter`."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        if config.version == 3:
            self.fc = nn.Linear(len(config.layer_ids) * config.feature_width, h, bias=config.fc_bias)
        else:
            self.fc = nn.Linear(h + config.feature_width, h, bias=config.fc_bias)
        self.midlayer = EagleLayer(config)
        self.rotary = LlamaRotaryEmbedding(config.to_llama())
        if config.version == 3:
            self.norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
            self.lm_head = nn.Linear(h, config.draft_vocab_size, bias=False)
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
            if config.draft_vocab_size < config.vocab_size:
                self.set_draft_vocab(torch.arange(config.draft_vocab_size))

    def set_draft_vocab(self, target_ids: torch.Tensor | list[int]) -> None:
        """Make the draft vocabulary these target ids (sorted here): d2t = ids - arange, t2d = membership."""
        ids = torch.as_tensor(target_ids, dtype=torch.long).sort().values.to(self.d2t.device)
        if ids.numel() != self.config.draft_vocab_size or ids.unique().numel() != ids.numel():
            raise ValueError(f"a draft vocabulary needs {self.config.draft_vocab_size} distinct ids, got {ids.numel()}")
        if ids[0] < 0 or ids[-1] >= self.config.vocab_size:
            raise ValueError(f"draft vocabulary ids must lie in 0..{self.config.vocab_size - 1}")
        self.d2t.copy_(ids - torch.arange(ids.numel(), device=ids.device))
        self.t2d.zero_()
        self.t2d[ids] = True

    def draft_ids(self) -> torch.Tensor | None:
        """Target id of each draft-vocabulary row (draft id + d2t[draft id]), or None when the head's logits
        already span the target vocabulary (EAGLE-1, or an EAGLE-3 head with the full vocabulary)."""
        if self.config.version == 1:
            return None
        return torch.arange(self.config.draft_vocab_size, device=self.d2t.device) + self.d2t

    def check_vocab_map(self) -> None:
        """d2t and t2d must describe the same set of distinct in-range target ids (published heads included)."""
        ids = self.draft_ids()
        if ids is None:
            return
        vocab = self.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"d2t maps a draft id outside the target vocabulary 0..{vocab - 1}")
        if ids.unique().numel() != ids.numel():
            raise ValueError("d2t maps two draft ids to the same target id")
        if int(self.t2d.sum()) != ids.numel() or not bool(self.t2d[ids].all()):
            raise ValueError(
                f"t2d marks {int(self.t2d.sum())} target ids but d2t maps {ids.numel()} draft ids onto other ids"
            )

    def forward(
        self,
        feature: torch.Tensor,  # (B, T, k*H) raw target features, or (B, T, h) the head's own outputs (`own`)
        embeds: torch.Tensor,  # (B, T, h) embeddings of the next tokens (the target's embedding)
        position_ids: torch.Tensor,  # (B, T) rotary positions = the entries' indices in the head's cache
        cache: DynamicCache | None = None,  # the head's own one-layer cache (entries are appended)
        attention_mask: torch.Tensor | None = None,  # (B, 1, T, past + T) bool, True = attend; None = causal
        own: bool = False,  # True when `feature` is the head's own output g (EAGLE-3 skips fc then)
    ) -> torch.Tensor:
        """(B, T, h): the head's output feature g, before any norm (fed back as the next step's feature)."""
        if self.config.version == 3:
            x = feature if own else self.fc(feature)
        else:
            x = self.fc(torch.cat((embeds, feature), dim=-1))
        new = x.shape[1]
        if attention_mask is None and new > 1:
            past = kvcache.held(cache.layers[0]) if cache is not None else 0
            # causal, aligned to the bottom right: new entry i sees every cached entry and new entries <= i
            attention_mask = torch.ones(new, past + new, dtype=torch.bool, device=x.device).tril(past)[None, None]
        return self.midlayer(x, embeds, self.rotary(x, position_ids), attention_mask, cache)

    def logits(self, g: torch.Tensor, target_head: nn.Module | None = None) -> torch.Tensor:
        """EAGLE-3: lm_head(norm(g)), (..., draft_vocab_size). EAGLE-1: the target's LM head on g, (..., V)."""
        if self.config.version == 3:
            return self.lm_head(self.norm(g))
        if target_head is None:
            raise ValueError("an EAGLE-1 head drafts through the target's LM head: pass target_head")
        return target_head(g)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state dict a checkpoint stores (rotary tables are rebuilt from the config)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def num_parameters(self) -> int:
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("rotary."))

    @classmethod
    def for_target(
        cls, target_config, version: int = 3, layer_ids=None, draft_vocab_size: int | None = None
    ) -> "EagleHead":
        """A freshly initialised head shaped for a target (tests, training). EAGLE-1 reads hidden_states[L];
        EAGLE-3 defaults to EAGLE-3's (2, L//2, L-3) when the target is deep enough, else (1, L//2, L)."""
        text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        layers, h = text.num_hidden_layers, text.hidden_size
        heads = text.num_attention_heads
        if layer_ids is None:
            layer_ids = (
                (layers,) if version == 1 else (default_layer_ids(layers) if layers >= 6 else (1, layers // 2, layers))
            )
        config = EagleConfig(
            version=version,
            hidden_size=h,
            intermediate_size=text.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or h // heads,
            vocab_size=text.vocab_size,
            draft_vocab_size=text.vocab_size if version == 1 else (draft_vocab_size or text.vocab_size),
            layer_ids=tuple(int(i) for i in layer_ids),
            rms_norm_eps=float(getattr(text, "rms_norm_eps", 1e-6) or 1e-6),
            rope_theta=float(_rope_theta(text)),
            max_position_embeddings=int(getattr(text, "max_position_embeddings", 2048) or 2048),
            hidden_act=getattr(text, "hidden_act", "silu"),
            fc_bias=version == 1,
        )
        return cls(config)


def _rope_theta(text_config) -> float:
    params = getattr(text_config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]
    return getattr(text_config, "rope_theta", 10000.0) or 10000.0


def to_target_logits(logits: torch.Tensor, draft_ids: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """(..., Vd) draft-vocabulary logits -> (..., V) target-vocabulary logits, -inf outside the draft vocabulary."""
    if draft_ids is None:
        return logits
    full = logits.new_full((*logits.shape[:-1], vocab), float("-inf"))
    return full.scatter(-1, draft_ids.expand(*logits.shape[:-1], -1), logits)


def target_probs(logits: torch.Tensor, draft_ids: torch.Tensor | None, vocab: int, sampling: Sampling) -> torch.Tensor:
    """q over the TARGET vocabulary: the same processing as the target's p (temperature, top-k, top-p), with
    q = 0 outside the draft vocabulary. A drafted token then always has q > 0, and the speculative-sampling rule
    stays exact: p/q is read only at drafted ids, and the residual max(0, p - q) keeps all of p's mass outside."""
    return sampling.probs(to_target_logits(logits, draft_ids, vocab))


class EagleDrafter:
    """One sequence's drafting state: the head's own KV cache (one layer), and its last output feature.

    `start` appends entries built from real target features (the prefill, then each round's newly verified
    positions); `step` appends one entry from the head's own last output and a drafted token; `rollback(n)`
    keeps the first n entries (after verification: the entries built from real features). Every call returns
    the head's logits at its last entry (draft vocabulary for EAGLE-3, see `draft_ids`)."""

    def __init__(self, head: EagleHead, embed: nn.Module, target_head: nn.Module | None = None):
        self.head = head
        self.embed = embed  # the target's input embedding (shared)
        self.target_head = target_head  # the target's LM head (EAGLE-1 only)
        self.cache = kvcache.new_cache(head.config.to_llama())
        self.last: torch.Tensor | None = None  # (1, 1, h): g at the last entry, fed with the next drafted token
        self.draft_ids = head.draft_ids()

    @property
    def length(self) -> int:
        """Entries the head's cache holds (= the rotary position of the next entry)."""
        return kvcache.held(self.cache.layers[0])

    @torch.inference_mode()
    def start(self, features: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """Append entries for real features (1, T, k*H) paired with the tokens that follow them (1, T): the
        feature of position t goes with token t+1. Returns the logits (1, Vd) that predict the token after the
        last of `next_ids`."""
        if features.shape[:2] != next_ids.shape[:2]:
            raise ValueError(f"features {tuple(features.shape)} and next_ids {tuple(next_ids.shape)} do not pair up")
        return self._append(features, next_ids, own=False)

    @torch.inference_mode()
    def step(self, token: int | torch.Tensor) -> torch.Tensor:
        """Append one entry: the head's own last output and the drafted `token`. Returns the next logits (1, Vd)."""
        if self.last is None:
            raise RuntimeError("step() needs a start() first (and a fresh start() after a rollback)")
        ids = torch.as_tensor(token, dtype=torch.long, device=self.last.device).reshape(1, 1)
        return self._append(self.last, ids, own=True)

    def rollback(self, length: int) -> None:
        """Keep the first `length` entries; the fed-back feature is gone, so the next call is a start()."""
        if length > self.length:
            raise ValueError(f"cannot roll back to {length} entries: the head holds {self.length}")
        kvcache.crop(self.cache, length)
        self.last = None

    def _append(self, feature: torch.Tensor, ids: torch.Tensor, own: bool) -> torch.Tensor:
        base = self.length
        positions = torch.arange(base, base + ids.shape[1], device=ids.device)[None]
        g = self.head(feature, self.embed(ids), positions, self.cache, own=own)  # (1, T, h)
        self.last = g[:, -1:]
        return self.head.logits(self.last[:, 0], self.target_head)

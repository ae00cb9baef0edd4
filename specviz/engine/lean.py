"""Lean single-sequence forwards for the Llama family: the separate drafter, Kangaroo's shallow layers
and its adapter.

On a CPU a 1-layer drafter spends about three quarters of a `model(...)` call in framework work
(mask building, cache bookkeeping, module dispatch) and a quarter in matrix products (DESIGN.md,
"Measured"), so the drafter costs c = 0.2 of the target where its arithmetic says 0.05. These
forwards run the same weights with the minimum of calls: preallocated KV buffers indexed by
length (rollback is a number), a rotary table computed once, one SDPA call per layer.

The separate drafter's logits steer what gets proposed, never what gets emitted — the target
verifies every draft on its transformers forward. Kangaroo's shallow layers are different: their
states ARE the target's states that verification continues from, so `LeanDecoder(exact=True)`
calls the layers' own norm modules and reproduces transformers' arithmetic op for op (tests and the
load-time self-check compare it bit for bit in float32 with the per-layer transformers path).
Only the draft-only products (the separate drafter, the adapter, the draft head) go through
`draft_linear`, which reads wide weights from a transposed copy where that is faster on a CPU.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from specviz.engine.decoder import context_limit
from specviz.engine.kvcache import full_attention_only, path_split
from specviz.engine.layers import split_parts

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
    return (
        all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and not hasattr(attn, "q_norm")
        and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    )


def fast_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An RMSNorm module's result in one fused call (not bit-identical to it outside float32)."""
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
    return F.rms_norm(x, (x.shape[-1],), module.weight, eps)


TRANSPOSED_MAX_BYTES = 64 << 20  # a bigger matrix (a 150k-token head) is not worth its copy
_transposed: dict[int, tuple[int, torch.Tensor]] = {}  # id(weight) -> (its _version, W^T); dropped with the weight


def transposed_pays(weight: torch.Tensor) -> bool:
    """Whether `draft_linear` reads `weight` through a transposed copy: float32 on a CPU, more outputs than
    inputs (up-projections, LM heads), and small enough to copy. There one row times W^T stored as (in, out)
    ran 1.6x (256 -> 768) to 2.5x (256 -> 8,192) faster than F.linear when W comes from memory rather than
    cache (2-core EPYC, PyTorch 2.13); with fewer outputs than inputs (768 -> 256) it ran 0.7x."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and weight.shape[0] > weight.shape[1]
        and weight.numel() * weight.element_size() <= TRANSPOSED_MAX_BYTES
    )


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """W^T (in, out), contiguous, cached per weight and rebuilt after any in-place update (training)."""
    key = id(weight)
    held = _transposed.get(key)
    if held is None:
        weakref.finalize(weight, _transposed.pop, key, None)
    if held is None or held[0] != weight._version:
        held = (weight._version, weight.detach().t().contiguous())
        _transposed[key] = held
    return held[1]


def draft_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for projections whose result only steers drafts (never a verified state): the same
    product, through a transposed copy where that is faster (`transposed_pays`). Rounding may differ
    from F.linear's in the last bits, which is why exact paths never call it."""
    if not transposed_pays(weight):
        return F.linear(x, weight, bias)
    out = x @ transposed(weight)
    return out + bias if bias is not None else out


def exact_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def project(linear, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An nn.Linear-like module's product through `linear` (draft_linear or exact_linear)."""
    return linear(x, module.weight, getattr(module, "bias", None))


# Slots a token tree's drafter feeds may take past the position limit before another growth: a round feeds up to
# (depth - 1) x branch, at most 15 x 16 = 240 in methods/tree.py's ranges (more would still grow, a level at a time).
TREE_SCRATCH = 256


class KVBuffers:
    """Preallocated keys and values for a few attention layers of one sequence, and their rotary table.
    Every layer holds the same `length`; rolling back is setting it."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        inv_freq: torch.Tensor,
        limit: int,
        device: torch.device,
        dtype: torch.dtype,
        capacity: int = 256,
    ):
        self.count, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.inv_freq, self.limit, self.device, self.dtype = inv_freq, limit, device, dtype
        self.length = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._grow(min(capacity, limit))

    def _grow(self, capacity: int) -> None:
        """(Re)allocate for `capacity` entries, keeping what is held."""
        shape = (1, self.kv_heads, capacity, self.head_dim)
        keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.count)]
        values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.count)]
        for old, new in zip(self.keys + self.values, keys + values):
            new[:, :, : self.length] = old[:, :, : self.length]
        self.keys, self.values, self.capacity = keys, values, capacity
        # as transformers' rotary module computes it: float32 angles, cos/sin cast to the model's dtype; no row past
        # the position limit (a tree's scratch slots past it have positions below it; a position past it is a bug)
        positions = torch.arange(min(capacity, self.limit), device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.to(self.device, torch.float32)[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)  # (positions, head_dim)

    def reserve(self, new: int, who: str, tree: bool = False) -> tuple[int, int]:
        """Room for `new` more entries: (past, end). A plain feed's entries sit at their positions, so it must end
        within the position limit. A token tree's entries (`tree`) carry their own positions, which its caller
        keeps below the limit (methods/tree.py caps the depth by the room left), and stay only until `keep_path`
        moves the accepted ones down: they are scratch, and may take slots past the limit (up to (depth - 1) x
        branch a round), so a tree keeps its shape up to the last token of the context."""
        past, end = self.length, self.length + new
        if end > self.limit and not tree:  # checked even where scratch slots past the limit are allocated
            raise ValueError(f"the {who}'s context is {self.limit} positions")
        if end > self.capacity:
            if end <= self.limit:
                self._grow(min(self.limit, max(end, 2 * self.capacity)))
            else:  # a tree's scratch: grown once for the rounds left, not once a level
                self._grow(max(end, self.limit + TREE_SCRATCH))
        return past, end

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def attend(
        self,
        i: int,
        attn: nn.Module,
        h: torch.Tensor,
        heads: int,
        past: int,
        end: int,
        mask: torch.Tensor | None,
        linear=exact_linear,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer i's self-attention (q/k/v/o projections of `attn`, through `linear`) over normed h (1, T, d);
        stores its KV. `positions` (T,): the rotary positions of a token tree's nodes (default past..end-1)."""
        new = h.shape[1]
        if positions is None:
            cos, sin = self.cos[past:end], self.sin[past:end]
        else:
            cos, sin = self.cos[positions], self.sin[positions]
        q = project(linear, attn.q_proj, h).view(1, new, heads, self.head_dim).transpose(1, 2)
        k = project(linear, attn.k_proj, h).view(1, new, self.kv_heads, self.head_dim).transpose(1, 2)
        v = project(linear, attn.v_proj, h).view(1, new, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        self.keys[i][:, :, past:end] = k
        self.values[i][:, :, past:end] = v
        a = F.scaled_dot_product_attention(
            q,
            self.keys[i][:, :, :end],
            self.values[i][:, :, :end],
            attn_mask=mask,
            enable_gqa=self.kv_heads != heads,
            scale=getattr(attn, "scaling", None),
        )
        return project(linear, attn.o_proj, a.transpose(1, 2).reshape(1, new, -1))

    @staticmethod
    def causal(new: int, past: int, end: int, device: torch.device) -> torch.Tensor | None:
        return None if new == 1 else torch.ones(new, end, dtype=torch.bool, device=device).tril(past)


class HoldsKV:
    """A sequence's position over its KVBuffers: how many entries it holds, and rollback (a number)."""

    kv: KVBuffers

    @property
    def length(self) -> int:
        return self.kv.length

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    def reset(self) -> None:
        self.kv.length = 0

    def rollback(self, length: int) -> None:
        self.kv.length = min(self.kv.length, length)

    @torch.inference_mode()
    def keep_path(self, positions: list[int]) -> None:
        """Keep only the entries at `positions` (ascending): a token tree's accepted path, the one exception to
        "rollback is a number". The entries up to the first gap stay; the rest are copied down in place."""
        kv = self.kv
        base, tail = path_split(positions)
        if tail:
            at = torch.tensor(tail, dtype=torch.long, device=kv.device)
            end = base + len(tail)
            for buffers in (kv.keys, kv.values):
                for layer in buffers:
                    layer[:, :, base:end] = layer.index_select(2, at)
        kv.length = len(positions)


class LeanDecoder(HoldsKV):
    """Same interface as `engine.Decoder` (feed / rollback / length) over a Llama-family model, or over
    its first `depth` layers only (`states`: Kangaroo's shallow pass)."""

    def __init__(
        self, model: nn.Module, vocab: int, capacity: int = 256, depth: int | None = None, exact: bool = False
    ):
        cfg = model.config
        self.model = model
        self.vocab = vocab
        self.embed, layers, self.norm, self.head, rotary = split_parts(model)
        self.layers = list(layers)[: depth if depth is not None else len(layers)]
        self.heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.limit = context_limit(model)
        param = next(model.parameters())
        self.norm_of = (lambda module, x: module(x)) if exact else fast_norm
        self.linear = exact_linear if exact else draft_linear
        self.kv = KVBuffers(
            len(self.layers), kv_heads, head_dim, rotary.inv_freq, self.limit, param.device, param.dtype, capacity
        )
        # An MLP whose down projection is all zeros adds exactly nothing: a drafter grafted from Kangaroo's
        # attention-only adapter (students.graft_adapter) has one; computing it would be wasted work.
        self.adds_mlp = [exact or bool(layer.mlp.down_proj.weight.any()) for layer in self.layers]

    @torch.inference_mode()
    def states(
        self, ids: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Append ids (1, T); return the residual stream after this decoder's layers (1, T, d), un-normed. A token
        tree's nodes come with their `positions` (1, T) and attention `mask` (1, 1, T, length + T)."""
        new = ids.shape[1]
        past, end = self.kv.reserve(new, "drafter", tree=positions is not None)
        if mask is None:
            mask = self.kv.causal(new, past, end, ids.device)
        rotary = None if positions is None else positions.reshape(-1)
        x = self.embed(ids)
        for i, layer in enumerate(self.layers):
            h = self.norm_of(layer.input_layernorm, x)
            x = x + self.kv.attend(i, layer.self_attn, h, self.heads, past, end, mask, self.linear, rotary)
            if not self.adds_mlp[i]:
                continue
            h = self.norm_of(layer.post_attention_layernorm, x)
            mlp, lin = layer.mlp, self.linear
            x = x + project(
                lin, mlp.down_proj, mlp.act_fn(project(lin, mlp.gate_proj, h)) * project(lin, mlp.up_proj, h)
            )
        self.kv.length = end
        return x

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ids (1, T); return the final-normed hidden states (1, T, d)."""
        return fast_norm(self.norm, self.states(ids))

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Append ids (1, T); return logits (keep, vocab) of the last `keep` positions."""
        return project(self.linear, self.head, self.hidden(ids)[0, -keep:])[:, : self.vocab]

    @torch.inference_mode()
    def feed_tree(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`engine.Decoder.feed_tree`'s twin: a token tree's nodes (1, T) with their positions and mask; the
        logits (T, vocab) of every node."""
        hidden = fast_norm(self.norm, self.states(ids, positions, mask))
        return project(self.linear, self.head, hidden[0])[:, : self.vocab]


class LeanAdapter(HoldsKV):
    """Kangaroo's adapter (adapter.KangarooAdapter: norm -> attention -> residual) on KVBuffers."""

    def __init__(self, adapter: nn.Module, capacity: int = 256):
        cfg = adapter.config
        self.adapter = adapter
        param = next(adapter.parameters())
        self.kv = KVBuffers(
            1,
            cfg.num_key_value_heads,
            cfg.head_dim,
            adapter.rotary.inv_freq,
            cfg.max_position_embeddings,
            param.device,
            param.dtype,
            capacity,
        )

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Layer-l states (1, T, d) of the next positions -> adapted states (1, T, d)."""
        new = hidden.shape[1]
        past, end = self.kv.reserve(new, "adapter")
        h = fast_norm(self.adapter.input_norm, hidden)
        out = self.kv.attend(
            0,
            self.adapter.attn,
            h,
            self.adapter.config.num_attention_heads,
            past,
            end,
            self.kv.causal(new, past, end, hidden.device),
            draft_linear,
        )
        self.kv.length = end
        return hidden + out

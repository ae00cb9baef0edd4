"""Where a transformers causal LM keeps its embeddings, layers, final norm and head, and how big it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


# ----------------------------------------------------------------------------- anatomy
@dataclass
class Anatomy:
    """Where an architecture keeps the parts every speculative method talks about."""

    embed: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    lm_head: nn.Module
    family: str


# attribute paths of (embeddings, decoder layers, final norm) per model family
_ANATOMY_PATHS: dict[str, tuple[str, str, str]] = {
    "llama-like": ("model.embed_tokens", "model.layers", "model.norm"),  # llama, qwen2, mistral, gemma, phi3 ...
    "gpt2": ("transformer.wte", "transformer.h", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.embed_in", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "opt": ("model.decoder.embed_tokens", "model.decoder.layers", "model.decoder.final_layer_norm"),
}


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def anatomy(model: nn.Module) -> Anatomy:
    """Embeddings, decoder layers, final norm and LM head of a causal LM, whatever its family."""
    for family, (embed_path, layers_path, norm_path) in _ANATOMY_PATHS.items():
        embed, layers = _get(model, embed_path), _get(model, layers_path)
        if isinstance(embed, nn.Module) and isinstance(layers, nn.ModuleList):
            return Anatomy(
                embed=embed,
                layers=layers,
                final_norm=_get(model, norm_path),
                lm_head=model.get_output_embeddings(),
                family=family,
            )
    raise ValueError(f"{type(model).__name__}: unknown layout (no embeddings + decoder layer list found)")


def param_bytes(model: nn.Module | None) -> int:
    if model is None:
        return 0
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def weights_read_per_token(model: nn.Module) -> int:
    """Parameters a forward reads for one token: all of them except the input embedding table (a
    lookup reads one row), unless it is tied to the LM head. The memory-bound cost model of MBSU."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    return total if tied else total - embed.numel()

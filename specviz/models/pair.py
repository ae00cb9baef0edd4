"""Load a target/draft pair: the embedded models, a local path or a Hugging Face id.

`load_pair` puts together what the other rooms of this floor decide: the device and dtype (`device`), what may
be loaded and how (`hub`: the allowlist, never `trust_remote_code`), the models kept for the next request
(`cache`), trained parts beside a target (`parts`), and the load-time proof that the engine computes what the
model computes (`selfcheck`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specviz.engine.adapter import KangarooAdapter
from specviz.engine.layers import nested_model
from specviz.models import hub, selfcheck
from specviz.models.anatomy import anatomy, param_bytes
from specviz.models.cache import CACHE, ModelCache
from specviz.models.device import resolve_device, resolve_dtype
from specviz.models.hub import (
    EMBEDDED,
    NESTED,
    PARTS_DIR,
    RANKING_FILE,
    check_source,
    check_tokenizers_match,
    load_causal_lm,
    load_tokenizer,
)
from specviz.models.parts import load_parts


@dataclass
class ModelPair:
    """A target, its tokenizer and (optionally) a drafter, ready to run; extras hold method assets."""

    target: nn.Module
    tokenizer: Any
    draft: nn.Module | None
    target_name: str
    draft_name: str | None
    device: torch.device
    dtype: torch.dtype
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def target_layers(self) -> int:
        return len(anatomy(self.target).layers)

    def describe(self) -> str:
        draft = f" + drafter {self.draft_name}" if self.draft is not None else ""
        return f"target {self.target_name}{draft} on {self.device} ({str(self.dtype).replace('torch.', '')})"


# ----------------------------------------------------------------------------- pairs
def _embedded_parts(device: torch.device, dtype: torch.dtype) -> tuple[dict, int]:
    root = hub.EMBEDDED_DIR
    if not (root / "target" / "config.json").exists():
        raise ValueError(
            f"the embedded models are missing from {root}: run `python -m specviz.workshop.train --out assets/models`"
        )
    target = load_causal_lm(str(root / "target"), device, dtype)
    parts = {
        "target": target,
        "tokenizer": load_tokenizer(str(root / "target")),
        "draft": load_causal_lm(str(root / "drafter"), device, dtype),
        "sorted_drafter": load_causal_lm(str(root / "sorted-drafter"), device, dtype),
        "kangaroo_adapter": KangarooAdapter.load(root / "kangaroo-adapter", device=device, dtype=dtype),
        "vocab_ranking": json.loads((root / "vocabtrim" / "target-token-ranking.json").read_text())["ranked_ids"],
        "target_meta": json.loads((root / "target" / "specviz.json").read_text()),
    }
    size = sum(param_bytes(parts[k]) for k in ("target", "draft", "sorted_drafter", "kangaroo_adapter"))
    return parts, size


def _hub_parts(source: str, device: torch.device, dtype: torch.dtype, device_map: str | None) -> tuple[dict, int]:
    model = load_causal_lm(source, device, dtype, device_map=device_map)
    return {"model": model, "tokenizer": load_tokenizer(source)}, param_bytes(model)


def compiled(model: nn.Module | None, backend: str) -> nn.Module | None:
    """A shallow twin whose forward is compiled (dynamic shapes: the KV cache grows every step); the
    cached original and its parameters stay as they are, and per-layer access still works."""
    if model is None:
        return None
    twin = copy.copy(model)
    twin.forward = torch.compile(model.forward, backend=backend, dynamic=True)
    return twin


def steady_attention(device: torch.device) -> None:
    """On CUDA, take cuDNN out of scaled_dot_product_attention's choices (process-wide; flash, memory-efficient
    and math kernels remain). Why: cuDNN attention builds an execution plan for every new shape, and decoding
    meets a new key length at every step. On an H100 (torch 2.11, bf16, where it is chosen first) a 48-token
    run of the embedded pair took up to 6.8 s on its first visit of a prompt with cuDNN and 0.5-0.7 s without
    (0.4-0.6 s again either way), and scripts/gpu_check.sh's bf16 benches ran out of time; fp32 never picks it."""
    if device.type == "cuda" and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)


def load_pair(
    target: str = EMBEDDED,
    draft: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    target_depth: int | None = None,
    device_map: str | None = None,
    compile: str | None = None,
    parts: str | None = None,
    cache: ModelCache | None = CACHE,
) -> ModelPair:
    """Load (or fetch from the cache) a target and its drafter.

    `target="embedded"` gives the shipped pair with its Kangaroo adapter, sorted drafter and
    VocabTrim ranking in `extras`; its drafter is the default. `target_depth` (or a name like
    "embedded[:8]") cuts the target to its first layers (S2D's nested targets; the embedded target was
    trained with an exit at 8).
    `device_map="auto"` lets accelerate shard a large target over several GPUs. `compile` names a
    `torch.compile` backend ("inductor" on GPUs) for the plain forwards of target and drafter.
    `parts` is a folder written by `python -m specviz.workshop.train kangaroo-adapter|sorted-drafter` (a Kangaroo
    adapter, a sorted drafter); for a local target, `<target>/specviz-parts` is read without being named.
    """
    if isinstance(target, str) and (nested := NESTED.match(target.strip())):
        if target_depth is not None:
            raise ValueError("give the nested depth once: either 'name[:depth]' or target_depth")
        target, target_depth = nested.group(1), int(nested.group(2))
    target = check_source(target, "target")
    if draft is not None and not (isinstance(draft, str) and draft.strip() == ""):
        draft = check_source(draft, "draft")
    else:
        draft = None
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    steady_attention(dev)
    store = cache if cache is not None else ModelCache(max_items=8)

    extras: dict[str, Any] = {}
    if target == EMBEDDED:
        parts = store.get((EMBEDDED, str(dev), str(dt)), lambda: _embedded_parts(dev, dt))
        target_model, tokenizer = parts["target"], parts["tokenizer"]
        extras = {k: parts[k] for k in ("sorted_drafter", "kangaroo_adapter", "vocab_ranking", "target_meta")}
        if draft is None or draft == EMBEDDED:
            draft_model, draft_name = parts["draft"], "embedded-drafter"
        else:
            draft_model, draft_name = None, draft
        target_name = EMBEDDED
    else:
        got = store.get((target, str(dev), str(dt), device_map), lambda: _hub_parts(target, dev, dt, device_map))
        target_model, tokenizer, target_name = got["model"], got["tokenizer"], target
        draft_model, draft_name = None, draft
        ranking = Path(target) / RANKING_FILE
        if ranking.is_file():  # VocabTrim calibration shipped beside a local target
            extras["vocab_ranking"] = json.loads(ranking.read_text())["ranked_ids"]
        parts_dir = Path(check_source(parts, "parts")) if parts else Path(target) / PARTS_DIR
        if parts and not parts_dir.is_dir():
            raise ValueError(f"parts folder {parts!r} not found")
        if parts_dir.is_dir():
            key = (str(parts_dir), str(dev), str(dt), "parts")
            extras.update(store.get(key, lambda: (load_parts(parts_dir, target_model, dev, dt), 0)))
        if draft == EMBEDDED:
            raise ValueError("the embedded drafter only fits the embedded target (its tokenizer is our own)")

    if draft_model is None and draft_name is not None:
        check_tokenizers_match(tokenizer, load_tokenizer(draft_name), target_name, draft_name)  # before any weights
        draft_model = store.get((draft_name, str(dev), str(dt), None), lambda: _hub_parts(draft_name, dev, dt, None))[
            "model"
        ]
    if target_depth is not None:
        depth = len(anatomy(target_model).layers)
        if not isinstance(target_depth, int) or not 1 <= target_depth <= depth:
            raise ValueError(f"target_depth must be between 1 and {depth}; got {target_depth!r}")
        if target_depth < depth:
            target_model = nested_model(target_model, target_depth)
            target_name = f"{target_name}[:{target_depth}]"
    if compile:
        target_model, draft_model = compiled(target_model, compile), compiled(draft_model, compile)
    pair = ModelPair(
        target=target_model,
        tokenizer=tokenizer,
        draft=draft_model,
        target_name=target_name,
        draft_name=draft_name,
        device=dev,
        dtype=dt,
        extras=extras,
    )
    # Never run on an engine that disagrees with the model: each (model, device, dtype) is proven once per process.
    selfcheck.ensure(
        pair,
        ("target", target_name, str(dev), str(dt), compile),
        ("drafter", draft_name, str(dev), str(dt), compile) if draft_model is not None else None,
    )
    return pair

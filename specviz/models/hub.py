"""What may be loaded and how: the embedded family, the curated pairs, the allowlist of a public server,
and loading a causal LM or tokenizer through `from_pretrained` (never with remote code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(os.environ.get("SPECVIZ_EMBEDDED_DIR") or Path(__file__).resolve().parents[2] / "assets" / "models")
RANKING_FILE = "vocab_ranking.json"  # {"ranked_ids": [...]} beside a local target: VocabTrim's calibration
PARTS_DIR = (
    "specviz-parts"  # trained Kangaroo adapter / sorted drafter beside a local target (specviz.workshop.parts_training)
)
ALLOWLIST_ENV = "SPECVIZ_ALLOWED_MODELS"  # comma-separated ids/paths a public deployment may load
NESTED = re.compile(r"^(.+)\[:(\d{1,3})\]$")  # "embedded[:8]": the first 8 layers as a target of their own
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Real public pairs (same tokenizer within each family) for GPU or CPU Spaces; need the network.
CURATED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "CPU Space or any GPU"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "GPU (ZeroGPU)"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "CPU Space or any GPU"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "CPU Space or any GPU"),
)


# ----------------------------------------------------------------------------- what may be loaded
PUBLIC_ENV = "SPECVIZ_PUBLIC"  # "1": serving beyond loopback (app.py sets it from --host); a Space sets SPACE_ID
MAX_SOURCE_CHARS = 256


def public_server() -> bool:
    """Strangers can reach this process: a Hugging Face Space, or an app bound beyond loopback."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get(PUBLIC_ENV, "0").lower() in ("1", "true", "yes")


def curated_ids() -> set[str]:
    return {model for pair in CURATED_PAIRS for model in pair[:2]}


def allowlist() -> set[str] | None:
    """Ids/paths this server may load besides the embedded models (None: anything local or on the hub).
    `SPECVIZ_ALLOWED_MODELS` decides ('*' lifts every limit); without it a public server allows the
    curated hub pairs only, and never a local path."""
    raw = os.environ.get(ALLOWLIST_ENV, "").strip()
    if raw == "*":
        return None
    if raw:
        return {item.strip() for item in raw.split(",") if item.strip()}
    return curated_ids() if public_server() else None


def check_source(source: Any, role: str) -> str:
    """A model reference that is safe to try: embedded, an existing local dir, or a well-formed hub id.
    Where an allowlist holds, everything outside it gets one message that says nothing of the server's
    files (no path is looked at before the allowlist has passed it)."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{role} model: give a Hugging Face id (org/name), a local path or '{EMBEDDED}'")
    source = source.strip()
    if source == EMBEDDED:
        return source
    allowed = allowlist()
    shown = source if len(source) <= 80 else source[:77] + "..."
    if allowed is not None and source not in allowed:
        raise ValueError(
            f"{role} model {shown!r} is not allowed on this server; allowed: {', '.join(sorted(allowed | {EMBEDDED}))}"
        )
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(
            f"{role} model {shown!r} is too long for a model id or path ({len(source)} characters; "
            f"at most {MAX_SOURCE_CHARS})"
        )
    try:
        local = Path(source).expanduser().is_dir()
    except (OSError, ValueError):
        local = False
    if local:
        return str(Path(source).expanduser())
    if not HF_ID.match(source):
        raise ValueError(f"{role} model {shown!r} is neither a local directory nor a Hugging Face id like org/name")
    return source


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_causal_lm(
    source: str, device: torch.device, dtype: torch.dtype, *, device_map: str | None = None
) -> nn.Module:
    """`from_pretrained` with `trust_remote_code=False`, checked to be a causal LM, eval mode, no grads."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        hint = (
            " (the hub is unreachable here: HF_HUB_OFFLINE is set; use a local path or the embedded models)"
            if is_offline() and not Path(source).is_dir()
            else ""
        )
        raise ValueError(f"could not load model {source!r}{hint}: {first_line(exc)}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not is_decoder_only(config):
        raise ValueError(
            f"{source!r} is not a causal language model (model_type {model_type!r}); "
            "speculative decoding needs a decoder-only LM"
        )
    kwargs: dict[str, Any] = {"trust_remote_code": False, "dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate shards a large target over the visible GPUs
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise ValueError(f"out of memory loading {source!r} on {device}: choose a smaller model or dtype") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not load model {source!r}: {first_line(exc)}") from None
    if device_map is None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    return model


def is_decoder_only(config) -> bool:
    """Encoder families (BERT, RoBERTa ...) also map to AutoModelForCausalLM; their saved architectures
    (or `is_decoder`) tell them apart."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    generative = any("CausalLM" in a or "LMHead" in a or "ConditionalGeneration" in a for a in archs)
    return generative or bool(getattr(config, "is_decoder", False)) or not archs


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def load_tokenizer(source: str):
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"could not load the tokenizer of {source!r}: {first_line(exc)}") from None


def check_tokenizers_match(target_tok, draft_tok, target_name: str = "target", draft_name: str = "drafter") -> None:
    """Drafts are token ids: both models must mean the same thing by every id the target can emit."""
    t_vocab, d_vocab = target_tok.get_vocab(), draft_tok.get_vocab()
    if t_vocab == d_vocab:
        return
    t_by_id = {i: s for s, i in t_vocab.items()}
    d_by_id = {i: s for s, i in d_vocab.items()}
    shared = set(t_by_id) & set(d_by_id)
    differ = sum(1 for i in shared if t_by_id[i] != d_by_id[i])
    missing = len(set(t_by_id) - set(d_by_id))
    raise ValueError(
        f"the drafter's tokenizer does not match the target's ({draft_name} vs {target_name}): "
        f"{differ} shared ids map to different tokens, {missing} target ids are unknown to the drafter. "
        "Speculative decoding needs one vocabulary: pick a drafter from the same model family."
    )


def pair_names(target: str | None, draft: str | None) -> tuple[str, str | None]:
    """A pair as a visitor or caller names it, normalised: an empty target is the embedded one, an empty draft is
    None (the target's own drafter). The engine loads by these names and the app keys its cache by them."""
    return (str(target or "").strip() or EMBEDDED), (str(draft or "").strip() or None)

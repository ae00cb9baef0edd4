"""Load a target/draft pair: the embedded models, a local path or a Hugging Face id.

One place decides device, dtype, what may be loaded (allowlist, never `trust_remote_code`) and
caches loaded models (LRU by count and bytes, one load per key even under concurrent requests).
It also knows each architecture's anatomy (embeddings, decoder layers, final norm, LM head).
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(os.environ.get("SPECVIZ_EMBEDDED_DIR") or Path(__file__).resolve().parent.parent / "assets" / "models")
RANKING_FILE = "vocab_ranking.json"  # {"ranked_ids": [...]} beside a local target: VocabTrim's calibration
PARTS_DIR = "specviz-parts"  # trained Kangaroo adapter / sorted drafter beside a local target (specviz.parts)
ALLOWLIST_ENV = "SPECVIZ_ALLOWED_MODELS"  # comma-separated ids/paths a public deployment may load
CACHE_MODELS_ENV = "SPECVIZ_CACHE_MODELS"  # most models held at once (default 4)
CACHE_BYTES_ENV = "SPECVIZ_CACHE_GB"  # most parameter memory held, GiB (default 8)
NESTED = re.compile(r"^(.+)\[:(\d{1,3})\]$")  # "embedded[:8]": the first 8 layers as a target of their own
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Real public pairs (same tokenizer within each family) for GPU or CPU Spaces; need the network.
CURATED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "CPU Space or any GPU"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "GPU (ZeroGPU)"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "CPU Space or any GPU"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "CPU Space or any GPU"),
)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


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


# ----------------------------------------------------------------------------- device and dtype
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None/"auto": cuda, then mps, then cpu. An explicit device must exist here."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but no CUDA GPU is available here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps asked for, but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use cpu, cuda, mps or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto": bf16 on CUDA GPUs that support it (fp16 otherwise), fp16 on MPS, fp32 on CPU
    (half precision is slower than fp32 on most CPUs and changes greedy ties)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


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
            return Anatomy(embed=embed, layers=layers, final_norm=_get(model, norm_path),
                           lm_head=model.get_output_embeddings(), family=family)
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
        raise ValueError(f"{role} model {shown!r} is not allowed on this server; allowed: "
                         f"{', '.join(sorted(allowed | {EMBEDDED}))}")
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"{role} model {shown!r} is too long for a model id or path ({len(source)} characters; "
                         f"at most {MAX_SOURCE_CHARS})")
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


def load_causal_lm(source: str, device: torch.device, dtype: torch.dtype, *, device_map: str | None = None) -> nn.Module:
    """`from_pretrained` with `trust_remote_code=False`, checked to be a causal LM, eval mode, no grads."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        hint = " (the hub is unreachable here: HF_HUB_OFFLINE is set; use a local path or the embedded models)" \
            if is_offline() and not Path(source).is_dir() else ""
        raise ValueError(f"could not load model {source!r}{hint}: {first_line(exc)}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not is_decoder_only(config):
        raise ValueError(f"{source!r} is not a causal language model (model_type {model_type!r}); "
                         "speculative decoding needs a decoder-only LM")
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
    from transformers import AutoTokenizer

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


# ----------------------------------------------------------------------------- cache
class ModelCache:
    """LRU of loaded objects, bounded by count and bytes, with one load per key.

    Concurrent requests for the same key wait for the single load in progress. Eviction only drops
    the cache's reference: a run that already holds a model keeps it alive until it finishes, so a
    model is never torn down under a running request.
    """

    def __init__(self, max_items: int = 4, max_bytes: int = 8 << 30):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.loads = 0  # how many loads really ran (tests check there are no duplicates)

    def get(self, key: tuple, load: Callable[[], tuple[Any, int]]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
                key_lock = self._loading.setdefault(key, threading.Lock())
            with key_lock:
                with self._lock:
                    if key in self._items:  # another thread loaded it while we waited
                        continue
                value, size = load()  # errors propagate; nothing is cached
                with self._lock:
                    self.loads += 1
                    self._items[key] = (value, size)
                    self._evict(keep=key)
                    self._loading.pop(key, None)
                return value

    def _evict(self, keep: tuple) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_items or self.nbytes > self.max_bytes):
            oldest = next(iter(self._items))
            if oldest == keep:
                break
            del self._items[oldest]

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = ModelCache(max_items=int(os.environ.get(CACHE_MODELS_ENV, "4")),
                   max_bytes=int(float(os.environ.get(CACHE_BYTES_ENV, "8")) * (1 << 30)))


# ----------------------------------------------------------------------------- pairs
def _embedded_parts(device: torch.device, dtype: torch.dtype) -> tuple[dict, int]:
    from .adapter import KangarooAdapter

    root = EMBEDDED_DIR
    if not (root / "target" / "config.json").exists():
        raise ValueError(f"the embedded models are missing from {root}: run `python -m specviz.train --out assets/models`")
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
    import copy

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


def load_pair(target: str = EMBEDDED, draft: str | None = None, device: str | torch.device | None = None,
              dtype: str | torch.dtype | None = None, *, target_depth: int | None = None,
              device_map: str | None = None, compile: str | None = None, parts: str | None = None,
              cache: ModelCache | None = CACHE) -> ModelPair:
    """Load (or fetch from the cache) a target and its drafter.

    `target="embedded"` gives the shipped pair with its Kangaroo adapter, sorted drafter and
    VocabTrim ranking in `extras`; its drafter is the default. `target_depth` (or a name like
    "embedded[:8]") cuts the target to its first layers (S2D's nested targets; the embedded target was
    trained with an exit at 8).
    `device_map="auto"` lets accelerate shard a large target over several GPUs. `compile` names a
    `torch.compile` backend ("inductor" on GPUs) for the plain forwards of target and drafter.
    `parts` is a folder written by `python -m specviz.train kangaroo-adapter|sorted-drafter` (a Kangaroo
    adapter, a sorted drafter); for a local target, `<target>/specviz-parts` is read without being named.
    """
    from . import selfcheck
    from .layers import nested_model

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
            from .parts import load_parts

            key = (str(parts_dir), str(dev), str(dt), "parts")
            extras.update(store.get(key, lambda: (load_parts(parts_dir, target_model, dev, dt), 0)))
        if draft == EMBEDDED:
            raise ValueError("the embedded drafter only fits the embedded target (its tokenizer is our own)")

    if draft_model is None and draft_name is not None:
        check_tokenizers_match(tokenizer, load_tokenizer(draft_name), target_name, draft_name)  # before any weights
        draft_model = store.get((draft_name, str(dev), str(dt), None), lambda: _hub_parts(draft_name, dev, dt, None))["model"]
    if target_depth is not None:
        depth = len(anatomy(target_model).layers)
        if not isinstance(target_depth, int) or not 1 <= target_depth <= depth:
            raise ValueError(f"target_depth must be between 1 and {depth}; got {target_depth!r}")
        if target_depth < depth:
            target_model = nested_model(target_model, target_depth)
            target_name = f"{target_name}[:{target_depth}]"
    if compile:
        target_model, draft_model = compiled(target_model, compile), compiled(draft_model, compile)
    pair = ModelPair(target=target_model, tokenizer=tokenizer, draft=draft_model, target_name=target_name,
                     draft_name=draft_name, device=dev, dtype=dt, extras=extras)
    # Never run on an engine that disagrees with the model: each (model, device, dtype) is proven once per process.
    selfcheck.ensure(pair, ("target", target_name, str(dev), str(dt), compile),
                     ("drafter", draft_name, str(dev), str(dt), compile) if draft_model is not None else None)
    return pair

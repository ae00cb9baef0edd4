"""The models floor: load a target/draft pair and prove the engine computes what the model computes.

`pair` (load_pair, ModelPair), `hub` (what may be loaded, and loading it), `device`, `anatomy`, `cache`, `parts`
(trained parts beside a target, loaded), `selfcheck` (the load-time proof), `fingerprint` (digests of the weights).

Rule: imports the engine floor only; never a method, never the workshop.


The names the flat module of the same name offered are re-exported, imported on first use.
"""

from __future__ import annotations

from specviz.lazy import exports

_EXPORTS = {
    "EMBEDDED": "specviz.models.hub",
    "EMBEDDED_DIR": "specviz.models.hub",
    "RANKING_FILE": "specviz.models.hub",
    "PARTS_DIR": "specviz.models.hub",
    "ALLOWLIST_ENV": "specviz.models.hub",
    "CACHE_MODELS_ENV": "specviz.models.cache",
    "CACHE_BYTES_ENV": "specviz.models.cache",
    "NESTED": "specviz.models.hub",
    "HF_ID": "specviz.models.hub",
    "CURATED_PAIRS": "specviz.models.hub",
    "DTYPES": "specviz.models.device",
    "ModelPair": "specviz.models.pair",
    "resolve_device": "specviz.models.device",
    "resolve_dtype": "specviz.models.device",
    "Anatomy": "specviz.models.anatomy",
    "param_bytes": "specviz.models.anatomy",
    "weights_read_per_token": "specviz.models.anatomy",
    "PUBLIC_ENV": "specviz.models.hub",
    "MAX_SOURCE_CHARS": "specviz.models.hub",
    "public_server": "specviz.models.hub",
    "curated_ids": "specviz.models.hub",
    "allowlist": "specviz.models.hub",
    "check_source": "specviz.models.hub",
    "is_offline": "specviz.models.hub",
    "load_causal_lm": "specviz.models.hub",
    "is_decoder_only": "specviz.models.hub",
    "first_line": "specviz.models.hub",
    "load_tokenizer": "specviz.models.hub",
    "check_tokenizers_match": "specviz.models.hub",
    "ModelCache": "specviz.models.cache",
    "CACHE": "specviz.models.cache",
    "compiled": "specviz.models.pair",
    "steady_attention": "specviz.models.pair",
    "load_pair": "specviz.models.pair",
}
__all__ = list(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)

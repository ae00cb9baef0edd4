"""specviz: see speculative decoding. `load_pair`, `run`, `exactness`, `METHODS`, `Trace` are the public API.

Names are imported on first use (PEP 562), so `import specviz` stays cheap and side-effect free.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "load_pair": "specviz.models.pair",
    "ModelPair": "specviz.models.pair",
    "run": "specviz.api",
    "run_batch": "specviz.api",
    "exactness": "specviz.analysis.exactness",
    "METHODS": "specviz.methods",
    "Trace": "specviz.engine.trace",
    "Event": "specviz.engine.trace",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specviz' has no attribute {name!r}")

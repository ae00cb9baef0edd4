"""specviz: see speculative decoding. `load_pair`, `run`, `exactness`, `METHODS`, `Trace` are the public API.

Names are imported on first use (PEP 562), so `import specviz` stays cheap and side-effect free.
"""

from __future__ import annotations

from specviz.lazy import exports

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

__getattr__ = exports(__name__, _EXPORTS)
